"""The content store: one sparse file per node id under ``<cache>/content/``.

Owns content bytes on local disk; knows nothing of LMDB (``ranges`` in the index says which
bytes of a file are real). Calls here are fast local syscalls and run inline on the trio
thread, except ``fsync``, which the caller sends to a thread.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from cscd.errors import CacheFull


class ContentStore:
    """Sparse files named by node id, fanned out over 256 subdirectories."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for i in range(256):
            (root / f"{i:02x}").mkdir(exist_ok=True, mode=0o700)

    def path(self, node_id: int) -> Path:
        return self.root / f"{node_id & 0xFF:02x}" / f"{node_id:016x}"

    def open(self, node_id: int, size: int | None = None) -> int:
        """Open (creating if needed) the content file read-write; set its length if given."""
        fd = os.open(self.path(node_id), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if size is not None and os.fstat(fd).st_size != size:
            os.ftruncate(fd, size)
        return fd

    def exists(self, node_id: int) -> bool:
        return self.path(node_id).exists()

    def truncate(self, node_id: int, size: int) -> None:
        try:
            os.truncate(self.path(node_id), size)
        except FileNotFoundError:
            fd = self.open(node_id, size)
            os.close(fd)

    def remove(self, node_id: int) -> None:
        try:
            os.unlink(self.path(node_id))
        except FileNotFoundError:
            pass

    def disk_bytes(self, node_id: int) -> int:
        try:
            return os.stat(self.path(node_id)).st_blocks * 512
        except FileNotFoundError:
            return 0

    @staticmethod
    def pwrite(fd: int, data: bytes, offset: int) -> int:
        try:
            return os.pwrite(fd, data, offset)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CacheFull("the cache's filesystem is full; free space or raise its size") from None
            raise

    def statvfs(self) -> os.statvfs_result:
        return os.statvfs(self.root)

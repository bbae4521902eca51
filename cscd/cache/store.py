"""The content store: one sparse file per node id under ``<cache>/content/``.

Owns content bytes on local disk; knows nothing of LMDB (``ranges`` in the index says which
bytes of a file are real). Calls here are fast local syscalls and run inline on the trio
thread, except ``fsync`` and the copy of a large ``snapshot``, which the caller sends to a
thread.

Snapshots are what uploads read: an unnamed copy (``O_TMPFILE``) of a content file, made with
``copy_file_range`` (a reflink where the filesystem has them). Writes, truncations and deletes
of the node after the snapshot cannot tear an upload, and the copy vanishes with its last
descriptor, so a crash leaves nothing behind. Another process reads it through
``/proc/<daemon pid>/fd/<n>``, which opens the same file even though it has no name.

A snapshot of a small file (``MEMORY_SNAPSHOT_BYTES``) is a copy in memory (``memfd``)
instead: an ``O_TMPFILE`` costs a journalled inode, 0.87 ms each on this VM's ext4 against
0.012 ms for a 4 KiB memory copy, and small files are copied on the trio thread.

A sealed cache (``cscd.cache.sealing``: encrypted by cscd, where the file system has no
fscrypt) keeps every content file sealed; ``read``, ``pwrite`` and ``set_length`` are then the
sealer's. A small file's snapshot is a plaintext copy in memory, as in a plain cache; a large
file's is a sealed copy on the disk (``copy_file_range`` keeps the file's id, so the content
key opens it), which the upload and hashing workers read through
``cscd.sealed_files.SealedReader``. Plaintext never reaches the disk, and a large file's
upload does not hold its size in memory.
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from cscd.cache.sealing import Sealer
from cscd.errors import CacheFull
from cscd.sealed_files import BLOCK, HEADER, SLOT, SealedKey, key_id_of_path

_SNAPSHOT_SEQ = itertools.count()


_SCRUB_CHUNK = 1 << 20
#: snapshots up to this size are copies in memory, not on the cache's disk
MEMORY_SNAPSHOT_BYTES = 4 << 20
#: a sealed cache's folder keys, beside ``content/`` (``cscd.cache.sealing``)
KEYS_DIR = "keys"


def data_segments(fd: int, size: int):
    """(offset, length) of each stretch of data in a file; holes (a placeholder's unfetched
    parts) are skipped."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return  # only a hole is left
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end - start
        offset = end


def copy_data(src: int, write: Callable[[bytes, int], object]) -> int:
    """Hand each stretch of data of the file ``src`` (not its holes) to ``write(data,
    offset)``, a megabyte at a time; returns the file's length (the caller makes the copy as
    long: its holes)."""
    size = os.fstat(src).st_size
    for start, length in list(data_segments(src, size)):
        done = 0
        while done < length:
            data = os.pread(src, min(_SCRUB_CHUNK, length - done), start + done)
            if not data:
                break
            write(data, start + done)
            done += len(data)
    return size


def scrub_file(path: Path | str) -> int:
    """Overwrite every data block of the file with zeros, sync, then delete it: freed blocks
    must not keep what a wipe removes. Returns the bytes overwritten (0 if it is not there)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    done = 0
    try:
        size = os.fstat(fd).st_size
        for start, length in list(data_segments(fd, size)):
            for at in range(start, start + length, _SCRUB_CHUNK):
                done += os.pwrite(fd, bytes(min(_SCRUB_CHUNK, start + length - at)), at)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.unlink(path)
    return done


def scrub_tree(root: Path) -> None:
    """Overwrite every data block of every file under ``root`` with zeros, then delete it all."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            scrub_file(os.path.join(dirpath, name))
    shutil.rmtree(root)


class ContentStore:
    """Sparse files named by node id, fanned out over 256 subdirectories."""

    def __init__(self, root: Path, *, create: bool = True, sealer: Sealer | None = None) -> None:
        """``create=False``: only look (``cscd.cache.check`` on a cache it must not change).
        ``sealer``: the cache is sealed (every content file is ``sealing``'s format)."""
        self.root = root
        self._root = os.fspath(root)  # ``path_of`` is on every open: no pathlib there
        self.sealer = sealer
        #: ``os.pread`` of a content file's bytes (bound once: it is on every read)
        self.read = os.pread if sealer is None else sealer.pread
        #: ``read`` for a FUSE reply: any buffer (``SealedContent.read_reply``)
        self.read_reply: Callable[[int, int, int], bytes | bytearray] = (
            os.pread if sealer is None else sealer.read_reply)
        if sealer is not None and (create or (root.parent / KEYS_DIR).is_dir()):
            sealer.use_folder_keys(root.parent / KEYS_DIR, owner=create)
        if not create:
            return
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for i in range(256):
            (root / f"{i:02x}").mkdir(exist_ok=True, mode=0o700)
        (root / "newer").mkdir(exist_ok=True, mode=0o700)  # see ``cscd.cache.newer``

    def path(self, node_id: int) -> Path:
        return Path(self.path_of(node_id))

    def path_of(self, node_id: int) -> str:
        return f"{self._root}/{node_id & 0xFF:02x}/{node_id:016x}"

    def open(self, node_id: int, size: int | None = None) -> int:
        """Open (creating if needed) the content file read-write; set its length if given."""
        fd = os.open(self.path_of(node_id), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if size is not None and self.length(fd) != size:
            try:
                self.set_length(fd, size, node_id)
            except BaseException:
                os.close(fd)
                raise
        return fd

    def set_length(self, fd: int, size: int, owner: int) -> None:
        """``os.ftruncate`` of a content file; ``owner`` as for ``pwrite``."""
        if self.sealer is None:
            os.ftruncate(fd, size)
        else:
            self.sealer.truncate(fd, size, owner)

    def length(self, fd: int) -> int:
        """The content's length (a sealed file is longer on the disk)."""
        return os.fstat(fd).st_size if self.sealer is None else self.sealer.size(fd)

    def open_or_make(self, node_id: int, size: int) -> int:
        """Open the content file read-write; one that is not there yet is made ``size`` long
        (a placeholder's holes). One system call when the file is there, as on every open
        of a cached file."""
        try:
            return os.open(self.path_of(node_id), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return self.open(node_id, size)

    def snapshot(self, node_id: int, size: int) -> int:
        """A private read-write copy of the first ``size`` bytes of the node's content; returns
        its fd (the caller closes it). Copies in the kernel, or into memory (a small file); in
        a sealed cache a large file's copy is sealed (``snapshot_is_sealed``). The caller
        decides the thread.

        Raises ``FileNotFoundError`` if the node has no content file, ``CacheFull`` if the
        cache's disk cannot hold the copy (the caller may then read the live file instead,
        unless the cache is sealed).
        """
        src = os.open(self.path_of(node_id), os.O_RDONLY | os.O_CLOEXEC)
        if size <= MEMORY_SNAPSHOT_BYTES:
            try:
                return self._copy_in_memory(src, size)
            finally:
                os.close(src)
        try:
            dst = self._unnamed_file()
            try:
                # A sealed file's slots are copied whole (the last one may be longer in the live
                # file), then the copy is cut to the size, which seals its last block again.
                want = size if self.sealer is None else HEADER + -(-size // BLOCK) * SLOT
                done = 0
                while done < want:
                    n = os.copy_file_range(src, dst, want - done, done, done)
                    if n == 0:
                        break  # the file is shorter than the index says: the rest is zeros
                    done += n
                if self.sealer is not None:
                    self.sealer.truncate(dst, size)
                elif done < size:
                    os.ftruncate(dst, size)
            except OSError as exc:
                os.close(dst)
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise CacheFull("the cache's filesystem is full") from None
                raise
            return dst
        finally:
            os.close(src)

    def snapshot_is_sealed(self, size: int) -> bool:
        """Whether ``snapshot`` of a file of ``size`` bytes is a sealed copy (read it with
        ``SealedReader`` and ``snapshot_key``) rather than plain bytes."""
        return self.sealer is not None and size > MEMORY_SNAPSHOT_BYTES

    def snapshot_key(self, fd: int, size: int) -> SealedKey | None:
        """The key a worker opens the snapshot ``fd`` of a ``size``-byte file with; None
        where the snapshot is plain bytes."""
        return self.sealer.key_of(fd) if self.sealer is not None and self.snapshot_is_sealed(size) else None

    def _copy_in_memory(self, src: int, size: int) -> int:
        """The first ``size`` bytes of the content file ``src`` (plain bytes, also of a sealed
        one) in an unnamed memory file, opened."""
        dst = os.memfd_create("cscd-snapshot", os.MFD_CLOEXEC)
        try:
            done = 0
            while done < size:
                data = self.read(src, min(_SCRUB_CHUNK, size - done), done)
                if not data:
                    break  # shorter than the index says: the rest is zeros
                done += os.pwrite(dst, data, done)
            if done < size:
                os.ftruncate(dst, size)
        except BaseException:
            os.close(dst)
            raise
        return dst

    def _unnamed_file(self) -> int:
        try:
            return os.open(self.root, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
        # A filesystem without O_TMPFILE: a named file, unlinked at once.
        path = self.root / f".snapshot-{os.getpid()}-{next(_SNAPSHOT_SEQ)}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.unlink(path)
        return fd

    def snapshot_empty(self) -> int:
        """An empty unnamed file: the snapshot of a node whose content file was never made."""
        return os.memfd_create("cscd-snapshot", os.MFD_CLOEXEC)

    def open_readonly(self, node_id: int) -> int:
        """The live content file, read-only (``FileNotFoundError`` if it has none); read it
        with ``read``: sealed, its bytes on the disk are not the content."""
        return os.open(self.path_of(node_id), os.O_RDONLY | os.O_CLOEXEC)

    def exists(self, node_id: int) -> bool:
        return os.path.exists(self.path_of(node_id))

    def truncate(self, node_id: int, size: int) -> None:
        if self.sealer is None:
            try:
                os.truncate(self.path_of(node_id), size)
                return
            except FileNotFoundError:
                pass
        fd = self.open(node_id, size)
        os.close(fd)

    def destroy(self, node_id: int) -> int:
        """Delete the node's content file for a wipe so that none of it can be read again;
        returns the bytes overwritten. A file sealed with its folder's key is deleted as it
        is: the wipe erases the key (``Sealer.erase_folder_keys``). Any other is overwritten
        with zeros first. A newer server version fetched for it (``cscd.cache.newer``) goes too."""
        return sum(self._destroy_file(path) for path in (self.path_of(node_id),
                                                          f"{self._root}/newer/{node_id:016x}"))

    def _destroy_file(self, path: str) -> int:
        if self.sealer is not None:
            try:
                key_id = key_id_of_path(path)
            except FileNotFoundError:
                return 0
            if self.sealer.is_erasable(key_id):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                return 0
        return scrub_file(path)

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

    def pwrite(self, fd: int, data: bytes, offset: int, owner: int) -> int:
        """``os.pwrite`` into a content file (sealed in a sealed cache: a new one with the key
        of its folder, found from ``owner``, the node's id or its directory's); ``CacheFull``."""
        try:
            if self.sealer is None:
                return os.pwrite(fd, data, offset)
            return self.sealer.pwrite(fd, data, offset, owner)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CacheFull("the cache's filesystem is full; free space or raise its size") from None
            raise

    def statvfs(self) -> os.statvfs_result:
        return os.statvfs(self.root)

"""Plain file I/O for the measured operations: dd-like loops, test data, hashes, polling.

Owns the loops that are timed (1 MiB buffers, ``time.perf_counter``), the pseudo-random test
data (AES-CTR keystream: deterministic, incompressible, ~6 GB/s, where ``os.urandom`` gives
~170 MB/s here), xxh3-128 digests for "is it on the server yet" checks, and
``drop_caches``. No cscd imports, no mounts, no servers.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import xxhash
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
BUF_BYTES = MiB

T = TypeVar("T")


# ------------------------------------------------------------------ test data


def keystream(seed: str, size: int, *, block: int = BUF_BYTES) -> Iterator[bytes]:
    """``size`` pseudo-random bytes for ``seed``, in blocks of ``block`` bytes."""
    key = hashlib.sha256(seed.encode()).digest()[:16]
    enc = Cipher(algorithms.AES(key), modes.CTR(b"\0" * 16)).encryptor()
    zeros = bytes(block)
    left = size
    while left > 0:
        n = min(block, left)
        yield enc.update(zeros[:n])
        left -= n


def make_bytes(seed: str, size: int) -> bytes:
    """``size`` pseudo-random bytes in memory (1 GiB takes ~0.2 s)."""
    return b"".join(keystream(seed, size, block=16 * MiB))


def make_file(path: Path, seed: str, size: int) -> str:
    """Write ``size`` pseudo-random bytes to ``path`` (not timed); return the xxh3-128 hex digest."""
    h = xxhash.xxh3_128()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for block in keystream(seed, size, block=16 * MiB):
            f.write(block)
            h.update(block)
    return h.hexdigest()


def digest_bytes(data: bytes | memoryview) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def file_digest(path: Path | str) -> str:
    """xxh3-128 of a whole file, via mmap (an empty file hashes as b"")."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return xxhash.xxh3_128_hexdigest(b"")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            h = xxhash.xxh3_128()
            view = memoryview(m)
            try:
                for off in range(0, size, 64 * MiB):
                    h.update(view[off : off + 64 * MiB])
            finally:
                view.release()
            return h.hexdigest()


# ------------------------------------------------------------------ the timed loops


def write_file(path: Path | str, data: bytes | memoryview, *, fsync: bool = True) -> float:
    """Create/truncate ``path``, write ``data`` in 1 MiB ``write`` calls, fsync, close; seconds."""
    view = memoryview(data)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        off = 0
        while off < len(view):
            off += os.write(fd, view[off : off + BUF_BYTES])
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def read_file(path: Path | str, *, hasher: xxhash.xxh3_128 | None = None) -> tuple[float, int]:
    """Read ``path`` start to end with 1 MiB ``read`` calls; (seconds, bytes read)."""
    buf = bytearray(BUF_BYTES)
    view = memoryview(buf)
    total = 0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            total += n
            if hasher is not None:
                hasher.update(view[:n])
    return time.perf_counter() - t0, total


def walk_lstat(root: Path | str) -> int:
    """``ls -lR``: list every directory and lstat every entry; returns the number of entries."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lstat(os.path.join(dirpath, name))
            count += 1
    return count


def gnu_ls(root: Path | str) -> int:
    """GNU ``ls -lR`` itself, output to a pipe; returns the number of entries it printed.

    Not the same as ``walk_lstat``: ``ls -l`` also asks every entry for its SELinux label and
    its POSIX ACL (``getxattr``), unless the file system answered once that it has neither.
    """
    proc = subprocess.run(["ls", "-lR", str(root)], capture_output=True, check=True, timeout=600)
    return sum(1 for line in proc.stdout.splitlines() if line[:1] in (b"-", b"d", b"l"))


def walk_names(root: Path | str) -> int:
    """``find``: list every directory (no stat beyond what readdir gives); number of entries."""
    count = 0
    for _dirpath, dirnames, filenames in os.walk(root):
        count += len(dirnames) + len(filenames)
    return count


# ------------------------------------------------------------------ page cache and polling


def can_drop_caches() -> bool:
    return os.geteuid() == 0 and os.access("/proc/sys/vm/drop_caches", os.W_OK)


def drop_caches() -> None:
    """Write back dirty pages, then drop the page cache, dentries and inodes (root only)."""
    if not can_drop_caches():
        raise PermissionError("dropping the page cache needs root (/proc/sys/vm/drop_caches)")
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def wait_for(predicate: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.01) -> T:
    """Poll ``predicate`` until truthy; return its value. ``TimeoutError`` names ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout_s:.0f} s")
        time.sleep(interval_s)


class ServerFile:
    """Predicate "``path`` holds exactly this content": size first, hash only when size fits.

    A file written in place (rclone) reaches its size only at the end of the upload; the hash
    guards against a file that has the size but not yet the bytes.
    """

    def __init__(self, path: Path, size: int, digest: str) -> None:
        self.path = path
        self.size = size
        self.digest = digest
        self._hashed: tuple[int, int] | None = None

    def __call__(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        if st.st_size != self.size:
            return False
        stamp = (st.st_mtime_ns, st.st_ctime_ns)
        if stamp == self._hashed:
            return False
        try:
            ok = file_digest(self.path) == self.digest
        except (FileNotFoundError, ValueError):
            return False
        if not ok:
            self._hashed = stamp
        return ok

"""``LocalUpstream``: the ``Upstream`` protocol over a plain local directory.

Owns nothing but the directory it is given. For quick tests and for trying cscd without a
server; it keeps the semantics of ``SmbUpstream`` so that code tested against one works with
the other: names checked with ``cscd.names.check_name``, upload temporaries hidden from
listings, temporary + rename uploads, conditional ``Conflict``, ``file_id`` = inode number,
the same ``statistics()`` counters. Never touches LMDB or the cache.

Blocking ``os`` calls run in worker threads (one ``CapacityLimiter`` per upstream) under
``trio.fail_after``; a call that misses the deadline raises ``UpstreamTimeout`` and its thread
is abandoned (a local filesystem call cannot be interrupted).

Not supported: symlinks are followed, not reported as links; a symlink may lead outside the
root. Times keep full ns precision (an SMB server keeps 100 ns).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import functools
import hashlib
import logging
import math
import os
import secrets
import stat as stat_mod
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import trio

from cscd.durable import fsync_dir
from cscd.errors import (
    AccessDenied,
    BadName,
    CscdError,
    Exists,
    IsDir,
    NameTooLong,
    NotDir,
    NotEmpty,
    NotFound,
    Unsupported,
    UpstreamError,
    UpstreamTimeout,
)
from cscd.names import UPLOAD_TEMP_PREFIX, check_name, is_internal_name
from cscd.sealed_files import Source, read_source
from cscd.upstream.base import (
    Change,
    Conflict,
    Extent,
    LinkActivity,
    RemoteEntry,
    UpstreamStatistics,
    check_plan,
)
from cscd.xattrs import ServerEas, canonical

log = logging.getLogger(__name__)

T = TypeVar("T")
_IO_CHUNK = 1 << 20
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100

_ERRNO_MAP: dict[int, type[CscdError]] = {
    errno.ENOENT: NotFound,
    errno.EEXIST: Exists,
    errno.EACCES: AccessDenied,
    errno.EPERM: AccessDenied,
    errno.ENOTEMPTY: NotEmpty,
    errno.ENOTDIR: NotDir,
    errno.EISDIR: IsDir,
    errno.ENAMETOOLONG: NameTooLong,
}


def _libc_renameat2() -> Callable[..., int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _libc_renameat2()


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Atomic rename that fails with EEXIST if ``dst`` exists."""
    if _renameat2 is not None:
        if (
            _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
            == 0
        ):
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):  # filesystem without RENAME_NOREPLACE
            raise OSError(err, os.strerror(err), str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "File exists", str(dst))
    os.rename(src, dst)


class LocalUpstream:
    """A local directory served through the ``Upstream`` protocol."""

    def __init__(self, root: Path, *, timeout_s: float = 10.0, max_threads: int = 4) -> None:
        self.root = Path(root)
        self.description = str(self.root)
        self._timeout_s = timeout_s
        self._limiter = trio.CapacityLimiter(max_threads)
        self._lock = threading.Lock()
        self._bytes_read = 0
        self._bytes_written = 0
        self._bytes_copied = 0
        self._requests = 0
        self._connected = False

    def __repr__(self) -> str:
        return f"LocalUpstream({self.description!r})"

    def statistics(self) -> UpstreamStatistics:
        return UpstreamStatistics(
            self._bytes_read, self._bytes_written, self._requests, self._connected,
            self._bytes_copied,
        )

    def _count(
        self, *, read: int = 0, written: int = 0, copied: int = 0, requests: int = 1
    ) -> None:
        with self._lock:
            self._bytes_read += read
            self._bytes_written += written
            self._bytes_copied += copied
            self._requests += requests

    async def _run(
        self,
        where: Path | str,
        fn: Callable[..., T],
        *args: object,
        abandoned: threading.Event | None = None,
    ) -> T:
        """Run ``fn(*args)`` in a worker thread; ``abandoned`` is set if the caller goes away."""
        done = False
        try:
            with trio.fail_after(self._timeout_s):
                result = await trio.to_thread.run_sync(
                    functools.partial(self._translated, where, fn, *args),
                    limiter=self._limiter,
                    abandon_on_cancel=True,
                )
                done = True
                return result
        except trio.TooSlowError:
            raise UpstreamTimeout(f"{where} did not answer within {self._timeout_s:g} s") from None
        finally:
            if not done and abandoned is not None:
                abandoned.set()

    def _translated(self, where: Path | str, fn: Callable[..., T], *args: object) -> T:
        self._count()
        try:
            return fn(*args)
        except OSError as exc:
            cls = _ERRNO_MAP.get(exc.errno or 0)
            if cls is None:
                raise UpstreamError(f"{where}: {exc.strerror or exc}") from exc
            raise cls(f"{where}: {exc.strerror}") from exc

    def _abs(self, path: bytes) -> Path:
        p = self.root
        if path:
            for comp in path.split(b"/"):
                p = p / check_name(comp)
        return p

    @staticmethod
    def _entry(name: bytes, st: os.stat_result) -> RemoteEntry:
        is_dir = stat_mod.S_ISDIR(st.st_mode)
        return RemoteEntry(
            name, is_dir, 0 if is_dir else st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino
        )

    # -- the protocol ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Check that the root exists and is a directory."""

        def check() -> None:
            st = os.stat(self.root)
            if not stat_mod.S_ISDIR(st.st_mode):
                raise NotDir(f"{self.root} is a file, not a folder")

        try:
            await self._run(self.root, check)
        except NotFound:
            raise NotFound(f"the folder {self.root} does not exist") from None
        self._connected = True

    async def close(self) -> None:
        self._connected = False

    def link_activity(self) -> LinkActivity:
        """A local folder has no link: traffic never tells, so the monitor probes when idle."""
        return LinkActivity(None, math.inf)

    async def probe(self, *, light: bool = False) -> float:
        def timed() -> float:
            t0 = time.perf_counter()
            os.stat(self.root)
            return time.perf_counter() - t0

        return await self._run(self.root, timed)

    async def space(self) -> tuple[int, int]:
        p = self._abs(b"")
        st = await self._run(p, os.statvfs, p)
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize

    async def stat(self, path: bytes) -> RemoteEntry:
        p = self._abs(path)
        st = await self._run(p, os.stat, p)
        return self._entry(path.rsplit(b"/", 1)[-1], st)

    async def list_dir_in_pages(self, path: bytes,
                                on_page: Callable[[list[RemoteEntry]], Awaitable[None]]) -> None:
        """One batch: a local directory lists fast enough whole."""
        await on_page(await self.list_dir(path))

    async def list_dir(self, path: bytes) -> list[RemoteEntry]:
        p = self._abs(path)

        def scan() -> list[RemoteEntry]:
            out = []
            with os.scandir(p) as it:
                for de in it:
                    if is_internal_name(de.name):
                        continue
                    name = os.fsencode(de.name)
                    try:
                        check_name(name)
                    except BadName as exc:
                        log.warning(
                            "skipping %s/%r: not a name the server could hold (%s)", p, name, exc
                        )
                        continue
                    try:
                        entry = self._entry(name, de.stat())
                        eas = _eas_of(de.path)
                        out.append(dataclasses.replace(entry, eas=eas) if eas else entry)
                    except FileNotFoundError:
                        continue  # deleted while we listed
            return out

        return await self._run(p, scan)

    async def get_eas(self, path: bytes) -> ServerEas:
        p = self._abs(path)
        return await self._run(p, lambda: _eas_of(str(p)))

    async def set_eas(self, path: bytes, eas: Mapping[bytes, bytes], *, fresh: bool = False) -> None:
        """The folder's own files carry the EAs as ``user.`` xattrs, as Samba stores them."""
        p = self._abs(path)

        def work() -> None:
            for name, _ in _eas_of(str(p)):
                if name not in eas:
                    os.removexattr(p, b"user." + name)
            for name, value in eas.items():
                if value:
                    os.setxattr(p, b"user." + name, value)

        await self._run(p, work)

    async def read(
        self, path: bytes, offset: int, length: int, *, timeout_s: float | None = None
    ) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        p = self._abs(path)

        def read() -> bytes:
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if stat_mod.S_ISDIR(os.fstat(fd).st_mode):
                    raise IsADirectoryError(errno.EISDIR, "Is a directory")
                parts = []
                pos, end = offset, offset + length
                while pos < end:
                    data = os.pread(fd, min(_IO_CHUNK * 8, end - pos), pos)
                    if not data:
                        break
                    parts.append(data)
                    pos += len(data)
                out = b"".join(parts)
                self._count(read=len(out), requests=0)
                return out
            finally:
                os.close(fd)

        return await self._run(p, read)

    async def upload(
        self,
        path: bytes,
        fd: Source,
        size: int,
        mtime_ns: int,
        *,
        expected: RemoteEntry | None = None,
        replace: bool = True,
    ) -> RemoteEntry:
        """Copy ``fd[:size]`` to a temporary, fsync, set mtime, check ``expected``, rename."""
        return await self.upload_delta(
            path, fd, size, mtime_ns, plan=[Extent(0, size)] if size else [],
            expected=expected, replace=replace,
        )

    async def upload_delta(
        self,
        path: bytes,
        fd: Source,
        size: int,
        mtime_ns: int,
        *,
        plan: Sequence[Extent],
        expected: RemoteEntry | None,
        replace: bool = True,
        resume_token: str | None = None,
    ) -> RemoteEntry:
        """Build the temporary from ``plan`` (``copy_file_range`` from the target for copied
        extents, writes from ``fd`` for the rest), then as ``upload``. A temporary named by
        ``resume_token`` that a cancelled call left is continued, less its last MiB."""
        if not path:
            raise BadName("cannot upload over the target folder itself")
        check_plan(plan, size)
        target = self._abs(path)
        name = path.rsplit(b"/", 1)[-1]
        if resume_token is None:
            temp_name = UPLOAD_TEMP_PREFIX + secrets.token_hex(8)
        else:
            digest = hashlib.blake2b(resume_token.encode(), digest_size=8).hexdigest()
            temp_name = f"{UPLOAD_TEMP_PREFIX}r{digest}"
        temp = target.parent / temp_name
        abandoned = threading.Event()
        resumable = resume_token is not None

        def check(current: RemoteEntry | None) -> None:
            if expected is not None and not expected.same_version(current):
                state = "was deleted" if current is None else "changed"
                raise Conflict(f"{target} {state} since the version this change is based on")

        def current() -> RemoteEntry | None:
            try:
                return self._entry(name, os.stat(target))
            except FileNotFoundError:
                return None

        def fill(out: int) -> None:
            start = max(0, os.fstat(out).st_size - _IO_CHUNK) if resumable else 0
            src = None
            if any(e.source is not None for e in plan):
                check(current())  # nothing is copied from a base that is not the expected one
                src = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
            try:
                for e in plan:
                    lo, hi = max(start, e.offset), e.offset + e.length
                    pos = lo
                    while pos < hi:
                        if abandoned.is_set():
                            raise UpstreamTimeout("the upload was cancelled")
                        n = min(_IO_CHUNK, hi - pos)
                        if e.source is not None and src is not None:
                            n = os.copy_file_range(src, out, n, e.source + pos - e.offset, pos)
                            if n <= 0:
                                check(current())  # shorter because someone changed it?
                                raise UpstreamError(f"{target} ended before {e.source + hi}")
                            self._count(copied=n, requests=0)
                        else:
                            data = read_source(fd, n, pos)
                            if not data:
                                raise UpstreamError(
                                    f"local file ended at {pos} bytes, short of {size}"
                                )
                            n = os.pwrite(out, data, pos)
                            self._count(written=n, requests=0)
                        pos += n
                os.ftruncate(out, size)
            finally:
                if src is not None:
                    os.close(src)

        def work() -> RemoteEntry:
            flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (0 if resumable else os.O_EXCL)
            out = os.open(temp, flags, 0o644)
            try:
                try:
                    fill(out)
                    os.fsync(out)
                    os.utime(out, ns=(time.time_ns(), mtime_ns))
                finally:
                    os.close(out)
                now = current()
                if abandoned.is_set():  # never rename after the caller went away
                    raise UpstreamTimeout("the upload was cancelled")
                check(now)
                if expected is not None or replace:
                    os.rename(temp, target)
                else:
                    try:
                        _rename_noreplace(temp, target)
                    except FileExistsError:
                        raise Conflict(f"{target} was created in the meantime") from None
                fsync_dir(target.parent)
                return self._entry(name, os.stat(target))
            except BaseException:
                if not (resumable and abandoned.is_set()):
                    try:
                        os.unlink(temp)
                    except OSError:
                        pass
                raise

        return await self._run(target, work, abandoned=abandoned)

    @contextlib.asynccontextmanager
    async def watch(self, path: bytes, *, tree: bool = True) -> AsyncIterator[AsyncIterator[list[Change]]]:
        """Not supported for a local directory: raises ``Unsupported`` (periodic scans do it)."""
        raise Unsupported(f"{self.root}: change notification is not implemented for local folders")
        yield  # pragma: no cover - makes this an async generator

    async def mkdir(self, path: bytes) -> RemoteEntry:
        if not path:
            raise BadName("the target folder itself cannot be created again")
        p = self._abs(path)

        def work() -> os.stat_result:
            os.mkdir(p, 0o755)
            return os.stat(p)

        return self._entry(path.rsplit(b"/", 1)[-1], await self._run(p, work))

    async def delete(self, path: bytes, *, is_dir: bool) -> None:
        if not path:
            raise BadName("cscd never deletes the target folder itself")
        p = self._abs(path)
        await self._run(p, os.rmdir if is_dir else os.unlink, p)

    async def rename(self, old: bytes, new: bytes, *, replace: bool = False) -> RemoteEntry:
        if not old or not new:
            raise BadName("the target folder itself cannot be renamed")
        src, dst = self._abs(old), self._abs(new)

        def work() -> os.stat_result:
            os.lstat(src)  # NotFound names the source, not the destination
            if replace:
                os.rename(src, dst)
            else:
                _rename_noreplace(src, dst)
            return os.stat(dst)

        return self._entry(new.rsplit(b"/", 1)[-1], await self._run(f"{src} → {dst}", work))

    async def set_mtime(self, path: bytes, mtime_ns: int) -> RemoteEntry:
        p = self._abs(path)

        def work() -> os.stat_result:
            st = os.stat(p)
            os.utime(p, ns=(st.st_atime_ns, mtime_ns))
            return os.stat(p)

        return self._entry(path.rsplit(b"/", 1)[-1], await self._run(p, work))

    # -- moving the target folder (issue 6) ---------------------------------------------------

    async def make_target(self) -> None:
        await self._run(self.root, functools.partial(os.makedirs, self.root, 0o755, exist_ok=True))

    def _local(self, to: object) -> LocalUpstream:
        if not isinstance(to, LocalUpstream):
            raise Unsupported(f"{self.root}: cannot move to {getattr(to, 'description', to)}")
        return to

    async def rename_target(self, to: object) -> RemoteEntry:
        """One ``rename(2)`` of the root to ``to``'s root (``Unsupported`` across filesystems)."""
        dst = self._local(to).root

        def work() -> os.stat_result:
            dst.parent.mkdir(parents=True, exist_ok=True)
            if os.stat(self.root).st_dev != os.stat(dst.parent).st_dev:
                raise Unsupported(f"{self.root} and {dst} are on different filesystems")
            if dst.is_dir() and not any(dst.iterdir()):
                dst.rmdir()
            _rename_noreplace(self.root, dst)
            return os.stat(dst)

        return self._entry(b"", await self._run(f"{self.root} → {dst}", work))

    async def copy_to(self, path: bytes, to: object) -> RemoteEntry:
        """Copy with ``copy_file_range`` (the kernel copies; a reflink where the filesystem
        can), into a temporary renamed into place, keeping the write time."""
        src, dst = self._abs(path), self._local(to)._abs(path)

        def work() -> os.stat_result:
            temp = dst.with_name(UPLOAD_TEMP_PREFIX + secrets.token_hex(8))
            with open(src, "rb") as fin, open(temp, "xb") as fout:
                st = os.fstat(fin.fileno())
                left = st.st_size
                while left > 0:
                    n = os.copy_file_range(fin.fileno(), fout.fileno(), left)
                    if n == 0:
                        break
                    left -= n
            try:
                os.utime(temp, ns=(st.st_atime_ns, st.st_mtime_ns))
                _rename_noreplace(temp, dst)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
            self._count(copied=st.st_size, requests=0)
            return os.stat(dst)

        return self._entry(path.rsplit(b"/", 1)[-1], await self._run(f"{src} → {dst}", work))

    async def remove_target(self) -> None:
        await self._run(self.root, os.rmdir, self.root)


def _eas_of(path: str) -> ServerEas:
    """A local file's ``user.`` xattrs as the EAs Samba would serve for it."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    out = []
    for n in names:
        if n.startswith("user."):
            try:
                out.append((os.fsencode(n[5:]), os.getxattr(path, n, follow_symlinks=False)))
            except OSError:
                continue
    return canonical(dict(out))

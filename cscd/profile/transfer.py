"""Moving one roaming-profile item between the home directory and the server.

Owns the per-item operations and their safety checks: a download lands in a temporary beside
its target and replaces it only if the local file is still the version the decision was made
on (``LocalChanged`` otherwise); an upload goes through ``Upstream.upload`` (temporary +
rename on the server, conditional on the expected server version: ``Conflict`` otherwise).
Local file I/O runs in worker threads (``trio.to_thread.run_sync``); network calls are the
async ``Upstream`` methods. No decisions here (``merge.py``), no state file (``state.py``).

Files and folders a download creates are private to the user (0600/0700) — POSIX modes do
not roam; a replaced file keeps its mode. Downloads are not fsynced one by one: the caller
syncs the home filesystem once (``sync_home``) before it records the new state.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import stat as stat_mod
from pathlib import Path

import trio

from cscd.errors import CscdError, Exists, NotFound, UpstreamError
from cscd.profile.merge import LocalEntry
from cscd.profile.scope import LOCAL_TEMP_PREFIX
from cscd.types import RemoteEntry
from cscd.upstream.base import Upstream

#: Files up to this size are read whole and written in one thread call.
SMALL_FILE_BYTES = 4 << 20
_CHUNK = 1 << 20


class LocalChanged(CscdError):
    """The local file changed after the walk saw it; it is left as it is now."""


def _abs(home: Path, path: bytes) -> bytes:
    return os.fsencode(Path(home)) + b"/" + path


def _entry(st: os.stat_result) -> LocalEntry:
    is_dir = stat_mod.S_ISDIR(st.st_mode)
    return LocalEntry(is_dir, 0 if is_dir else st.st_size, st.st_mtime_ns)


def _check_local(target: bytes, expect: LocalEntry | None) -> os.stat_result | None:
    """Raise ``LocalChanged`` unless ``target`` is still ``expect`` (None: absent)."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        st = None
    if expect is None:
        if st is not None:
            raise LocalChanged(f"{os.fsdecode(target)} was created meanwhile; it is kept")
        return None
    if st is None or not stat_mod.S_ISREG(st.st_mode) or _entry(st) != expect:
        raise LocalChanged(f"{os.fsdecode(target)} changed meanwhile; it is kept")
    return st


def _open_temp(target: bytes) -> tuple[int, bytes]:
    parent = os.path.dirname(target)
    os.makedirs(parent, mode=0o700, exist_ok=True)
    temp = parent + b"/" + LOCAL_TEMP_PREFIX + secrets.token_hex(6).encode()
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    return fd, temp


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _install(fd: int, temp: bytes, target: bytes, mtime_ns: int,
             expect: LocalEntry | None) -> LocalEntry:
    """Give the temporary its write time and put it in place if the target is as expected."""
    os.utime(fd, ns=(mtime_ns, mtime_ns))
    current = _check_local(target, expect)
    if current is not None:
        os.fchmod(fd, stat_mod.S_IMODE(current.st_mode))
        os.rename(temp, target)
    else:
        _link_new(temp, target)
        os.unlink(temp)
    return _entry(os.lstat(target))


def _link_new(src: bytes, dst: bytes) -> None:
    """Give ``src`` the new name ``dst``; ``LocalChanged`` if ``dst`` exists (never replaces)."""
    try:
        os.link(src, dst)
    except FileExistsError:
        raise LocalChanged(f"{os.fsdecode(dst)} was created meanwhile; it is kept") from None


def _write_small(target: bytes, data: bytes, mtime_ns: int, expect: LocalEntry | None) -> LocalEntry:
    fd, temp = _open_temp(target)
    try:
        _write_all(fd, data, 0)
        return _install(fd, temp, target, mtime_ns, expect)
    except BaseException:
        _unlink_quietly(temp)
        raise
    finally:
        os.close(fd)


def _unlink_quietly(path: bytes) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


async def download(upstream: Upstream, home: Path, path: bytes, remote: RemoteEntry,
                   expect: LocalEntry | None) -> LocalEntry:
    """Make the local ``path`` a copy of the server file ``remote``; waits on the network.

    Replaces the local file only while it is still ``expect`` (None: must not exist), else
    raises ``LocalChanged`` and leaves it alone. Raises ``UpstreamError`` if the server file
    changed length while read. Cancellation leaves at most a temporary that no walk lists.
    """
    target = _abs(home, path)
    if remote.size <= SMALL_FILE_BYTES:
        parts, offset = [], 0
        while offset < remote.size:
            data = await upstream.read(path, offset, remote.size - offset)
            if not data:
                break
            parts.append(data)
            offset += len(data)
        if offset != remote.size:
            raise UpstreamError(f"{path.decode()} changed on the server while it was read")
        return await trio.to_thread.run_sync(_write_small, target, b"".join(parts),
                                             remote.mtime_ns, expect)
    fd, temp = await trio.to_thread.run_sync(_open_temp, target)
    try:
        offset = 0
        while offset < remote.size:
            data = await upstream.read(path, offset, min(_CHUNK, remote.size - offset))
            if not data:
                raise UpstreamError(f"{path.decode()} changed on the server while it was read")
            await trio.to_thread.run_sync(_write_all, fd, data, offset)
            offset += len(data)
        return await trio.to_thread.run_sync(_install, fd, temp, target, remote.mtime_ns, expect)
    except BaseException:
        _unlink_quietly(temp)
        raise
    finally:
        os.close(fd)


async def upload(upstream: Upstream, home: Path, path: bytes, expected: RemoteEntry | None,
                 *, remote_path: bytes | None = None) -> tuple[LocalEntry, RemoteEntry]:
    """Send the local ``path`` to the server (as ``remote_path``, default the same path);
    waits on the network.

    The server file is replaced only while it is still ``expected`` (None: must not exist);
    ``Conflict`` otherwise; ``NotFound`` when the server folder above it is missing.
    Returns the local version that was sent and the new server entry. Raises
    ``LocalChanged`` when the local file vanished or is no longer a regular file.
    """
    target = _abs(home, path)

    def open_file() -> tuple[int, os.stat_result]:
        try:
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise LocalChanged(f"{os.fsdecode(target)} vanished before its upload") from None
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            os.close(fd)
            raise LocalChanged(f"{os.fsdecode(target)} is no longer a regular file")
        return fd, st

    fd, st = await trio.to_thread.run_sync(open_file)
    try:
        entry = await upstream.upload(remote_path or path, fd, st.st_size, st.st_mtime_ns,
                                      expected=expected, replace=False)
    finally:
        os.close(fd)
    return _entry(st), entry


async def delete_local(home: Path, path: bytes, expect: LocalEntry) -> None:
    """Delete the local file if it is still ``expect`` (``LocalChanged`` otherwise)."""
    target = _abs(home, path)

    def work() -> None:
        _check_local(target, expect)
        os.unlink(target)

    await trio.to_thread.run_sync(work)


async def move_local(home: Path, path: bytes, expect: LocalEntry, new_path: bytes) -> LocalEntry:
    """Rename the local file to ``new_path`` (never over an existing name) if it is still
    ``expect``; returns the entry under its new name."""
    src, dst = _abs(home, path), _abs(home, new_path)

    def work() -> LocalEntry:
        _check_local(src, expect)
        _link_new(src, dst)
        os.unlink(src)
        return _entry(os.lstat(dst))

    return await trio.to_thread.run_sync(work)


async def make_local_dir(home: Path, path: bytes) -> None:
    await trio.to_thread.run_sync(
        lambda: os.makedirs(_abs(home, path), mode=0o700, exist_ok=True))


async def remove_local_dir(home: Path, path: bytes) -> bool:
    """Remove an empty local folder; False (and nothing done) if it is not empty."""

    def work() -> bool:
        try:
            os.rmdir(_abs(home, path))
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return False
            raise
        return True

    return await trio.to_thread.run_sync(work)


async def make_remote_dir(upstream: Upstream, path: bytes) -> None:
    """Create the server folder ``path`` and any missing parents; fine if it exists."""
    try:
        await upstream.mkdir(path)
    except Exists:
        return
    except NotFound:
        if b"/" not in path:
            raise
        await make_remote_dir(upstream, path.rsplit(b"/", 1)[0])
        try:
            await upstream.mkdir(path)
        except Exists:
            return


def sync_home(home: Path) -> None:
    """Flush the home filesystem (``syncfs``; ``sync`` where that is missing). Blocking."""
    fd = os.open(os.fsencode(Path(home)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _syncfs is None or _syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _libc_syncfs():  # type: ignore[no-untyped-def]
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_syncfs = _libc_syncfs()

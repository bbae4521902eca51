"""The syscall behaviour suite, run once per folder mode (rclone's ``vfs/vfstest`` runs its
suite over every cache mode the same way).

Modes: ``cached`` (a default folder, available offline), ``uncached`` (``offline: false``: a
plain SMB mount) and ``offline`` (a cached folder whose server cannot be reached: the TCP
proxy between daemon and smbd refuses and resets every connection). Each test does one thing
through plain syscalls on the mount and checks what the mount shows, then what the server
holds, by the mode's documented rule (README, "Modes" and "offline: false"):

- cached: the change reaches the server soon after the call or the last close;
- uncached: it is on the server when the call (or ``close``) returns;
- offline: the server still holds the old state while the link is down, and the change
  arrives once the server answers again.

Real parts only: the session smbd and one daemon per mode (a module-scoped fixture, since
``mount_env`` makes one per test; the module takes about 35 s on a 2-core VM). Each test works
in a directory of its own that the fixture first fills on the server's disk and reads through
the mount, so its files are listed and (where the mode caches) cached: ``before.txt``,
``olddir/inner.txt``, and ``unread.bin`` (listed, never read). The daemon's log is judged per
test (``unexpected_warnings``, as ``mount_env`` does); the daemon's clean exit and the cache
check run when a mode's tests are done, so a failure there shows at the teardown of the mode's
last test.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cscd.cache.store import ContentStore
from tests.helpers.mount_env import MountEnv, unexpected_warnings
from tests.helpers.wait import eventually

MODE_LOG_ALLOWS = {"offline": (r"folder Documents is now offline: ",
                               r"\[2002\] sync of Documents did not finish .*; \d+ changes kept for later$")}
"""What a mode makes the daemon say at WARNING by itself: going offline, and keeping a change
it could not send for later, are the offline mode."""

BEFORE = b"written before the test, on the server\n" * 100
INNER = b"inside olddir\n"
UNREAD = bytes(range(256)) * 200
UPLOAD_TIMEOUT_S = 20.0
FAST_ENOUGH_S = 1.0


def read(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write(path: Path, data: bytes, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> None:
    """open(flags), write all of ``data``, close."""
    fd = os.open(path, flags, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def holds(check: Callable[[], object]) -> bool:
    """``check()``, with a missing path counting as false."""
    try:
        return bool(check())
    except OSError:
        return False


def _mode_lines(env: MountEnv, mode: str) -> int:
    return sum(1 for line in env.daemon.log_text().splitlines() if f"folder Documents is now {mode}" in line)


@dataclass
class Case:
    """One test's directory: ``dir`` on the mount, ``server`` the same on the server's disk."""

    mode: str
    env: MountEnv
    dir: Path
    server: Path
    is_cut_off: bool = False

    def cut_off(self) -> None:
        """Take the server away (new connections refused, live ones reset) until the link
        monitor says the folder is offline."""
        before = _mode_lines(self.env, "offline")
        self.env.proxy.stop_listening()
        self.env.proxy.reset()
        self.is_cut_off = True
        eventually(lambda: _mode_lines(self.env, "offline") > before, 15, "the folder did not go offline")

    def reconnect(self) -> None:
        """Give the server back and wait until the folder is online again."""
        before = _mode_lines(self.env, "online")
        self.env.proxy.resume_listening()
        self.is_cut_off = False
        eventually(lambda: _mode_lines(self.env, "online") > before, 15, "the folder did not come back online")

    def on_server(self, check: Callable[[], object], what: str) -> None:
        """Assert the server's side of the change the test just made, by the mode's rule."""
        if self.mode == "uncached":
            assert holds(check), f"{what}: not on the server when the call returned"
        elif self.mode == "cached":
            eventually(check, UPLOAD_TIMEOUT_S, f"{what}: never reached the server")
        else:
            assert not holds(check), f"{what}: on the server although the folder is offline"
            self.reconnect()
            eventually(check, UPLOAD_TIMEOUT_S, f"{what}: not uploaded after the server came back")


@pytest.fixture
def case(mode_env: tuple[str, MountEnv], request: pytest.FixtureRequest) -> Iterator[Case]:
    mode, env = mode_env
    seen = len(env.daemon.warnings())
    name = request.node.originalname
    server = env.server / name
    (server / "olddir").mkdir(parents=True)
    (server / "before.txt").write_bytes(BEFORE)
    (server / "olddir" / "inner.txt").write_bytes(INNER)
    (server / "unread.bin").write_bytes(UNREAD)
    c = Case(mode, env, env.docs / name, server)
    try:
        eventually(lambda: sorted(os.listdir(c.dir)) == ["before.txt", "olddir", "unread.bin"], 10,
                   "the test's directory, made on the server, never showed in the mount")
        assert read(c.dir / "before.txt") == BEFORE
        assert os.listdir(c.dir / "olddir") == ["inner.txt"]
        assert read(c.dir / "olddir" / "inner.txt") == INNER
        if mode == "offline":
            c.cut_off()
        yield c
    finally:
        if c.is_cut_off:
            c.reconnect()
    report = getattr(request.node, "report_call", None)
    if report is not None and report.passed:
        problems = unexpected_warnings(env.daemon.warnings()[seen:], request.node, *MODE_LOG_ALLOWS.get(mode, ()))
        if problems:
            pytest.fail("the daemon logged what this test does not expect (add a log_allows mark if it "
                        f"should):\n{env.daemon.log_path}: " + f"\n{env.daemon.log_path}: ".join(problems[:20]),
                        pytrace=False)


# ---------------------------------------------------------------- files


def test_a_new_file_reads_back_what_was_written(case: Case) -> None:
    data = os.urandom(300_000)
    write(case.dir / "new.bin", data)
    assert read(case.dir / "new.bin") == data
    assert os.stat(case.dir / "new.bin").st_size == len(data)
    case.on_server(lambda: read(case.server / "new.bin") == data, "new.bin")


def test_a_file_written_before_reads_back(case: Case) -> None:
    assert read(case.dir / "before.txt") == BEFORE
    fd = os.open(case.dir / "before.txt", os.O_RDONLY)
    try:
        assert os.pread(fd, 100, 1000) == BEFORE[1000:1100]
    finally:
        os.close(fd)
    assert read(case.dir / "olddir" / "inner.txt") == INNER


def test_a_file_listed_but_never_read(case: Case) -> None:
    """Online it is fetched on demand; offline it fails at once with EHOSTDOWN (its size is
    known from the listing)."""
    path = case.dir / "unread.bin"
    assert os.stat(path).st_size == len(UNREAD)
    if case.mode != "offline":
        assert read(path) == UNREAD
        return
    t0 = time.monotonic()
    with pytest.raises(OSError) as info:
        read(path)
    assert info.value.errno == errno.EHOSTDOWN
    assert time.monotonic() - t0 < FAST_ENOUGH_S


def test_a_closed_file_stays_in_the_cache_only_where_the_mode_caches(case: Case) -> None:
    """Cached and offline: what was read or written is kept in the content store after the last
    close; uncached: nothing is kept."""
    write(case.dir / "written.txt", b"written here")
    store = ContentStore(case.env.daemon.cache / "content")
    kept = {name: store.exists(os.stat(case.dir / name).st_ino) for name in ("before.txt", "written.txt")}
    want = case.mode != "uncached"
    assert kept == {"before.txt": want, "written.txt": want}
    case.on_server(lambda: read(case.server / "written.txt") == b"written here", "written.txt")


def test_overwrite_with_o_trunc_leaves_only_the_new_bytes(case: Case) -> None:
    write(case.dir / "before.txt", b"short")
    assert read(case.dir / "before.txt") == b"short"
    assert os.stat(case.dir / "before.txt").st_size == 5
    case.on_server(lambda: read(case.server / "before.txt") == b"short", "before.txt overwritten")


def test_append_adds_at_the_end(case: Case) -> None:
    for part in (b"one,", b"two"):
        write(case.dir / "before.txt", part, os.O_WRONLY | os.O_APPEND)
    assert read(case.dir / "before.txt") == BEFORE + b"one,two"
    case.on_server(lambda: read(case.server / "before.txt") == BEFORE + b"one,two", "before.txt appended")


def test_truncate_up_adds_zeros_and_down_cuts(case: Case) -> None:
    path = case.dir / "before.txt"
    os.truncate(path, len(BEFORE) + 5000)
    assert os.stat(path).st_size == len(BEFORE) + 5000
    assert read(path) == BEFORE + bytes(5000)
    os.truncate(path, 10)
    assert os.stat(path).st_size == 10
    assert read(path) == BEFORE[:10]
    case.on_server(lambda: read(case.server / "before.txt") == BEFORE[:10], "before.txt truncated")


def test_ftruncate_of_an_open_file_then_close(case: Case) -> None:
    path = case.dir / "before.txt"
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, 10)
        assert os.fstat(fd).st_size == 10
        assert os.pread(fd, 100, 0) == BEFORE[:10]
    finally:
        os.close(fd)
    assert read(path) == BEFORE[:10]
    case.on_server(lambda: read(case.server / "before.txt") == BEFORE[:10], "before.txt cut by ftruncate")


def test_stat_gives_the_size_and_mtime_after_a_write(case: Case) -> None:
    path = case.dir / "stat.bin"
    t0 = time.time_ns()
    write(path, b"x" * 12345)
    t1 = time.time_ns()
    st = os.stat(path)
    assert st.st_size == 12345
    assert t0 - 1_000_000_000 <= st.st_mtime_ns <= t1 + 1_000_000_000, (t0, st.st_mtime_ns, t1)
    mtime_ns = 1_600_000_000_500_000_000
    os.utime(path, ns=(mtime_ns, mtime_ns))
    st = os.stat(path)
    assert (st.st_size, st.st_mtime_ns) == (12345, mtime_ns)

    def server_has_it() -> bool:
        st = os.stat(case.server / "stat.bin")
        return (st.st_size, st.st_mtime_ns) == (12345, mtime_ns)

    case.on_server(server_has_it, "stat.bin with its size and mtime")


def test_atomic_save_replaces_the_whole_file(case: Case) -> None:
    """An editor's save: write a temporary, fsync, close, rename it over the document."""
    temp, target = case.dir / ".before.txt.part", case.dir / "before.txt"
    new = b"the new version, saved whole\n" * 50
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, new)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, target)
    assert read(target) == new
    assert ".before.txt.part" not in os.listdir(case.dir)
    case.on_server(lambda: read(case.server / "before.txt") == new
                   and not (case.server / ".before.txt.part").exists(), "the saved before.txt")


# ---------------------------------------------------------------- names


def test_rename_moves_a_file_and_a_directory_with_its_content(case: Case) -> None:
    os.rename(case.dir / "before.txt", case.dir / "renamed.txt")
    os.rename(case.dir / "olddir", case.dir / "newdir")
    assert sorted(os.listdir(case.dir)) == ["newdir", "renamed.txt", "unread.bin"]
    assert read(case.dir / "renamed.txt") == BEFORE
    assert read(case.dir / "newdir" / "inner.txt") == INNER
    for gone in ("before.txt", "olddir"):
        with pytest.raises(FileNotFoundError):
            os.stat(case.dir / gone)
    case.on_server(lambda: read(case.server / "renamed.txt") == BEFORE
                   and read(case.server / "newdir" / "inner.txt") == INNER
                   and not (case.server / "before.txt").exists() and not (case.server / "olddir").exists(),
                   "the renames")


def test_unlink_removes_the_name(case: Case) -> None:
    os.unlink(case.dir / "before.txt")
    with pytest.raises(FileNotFoundError):
        os.stat(case.dir / "before.txt")
    with pytest.raises(FileNotFoundError):
        os.open(case.dir / "before.txt", os.O_RDONLY)
    assert sorted(os.listdir(case.dir)) == ["olddir", "unread.bin"]
    case.on_server(lambda: not (case.server / "before.txt").exists() and (case.server / "unread.bin").exists(),
                   "the unlink of before.txt")


def test_rmdir_of_a_non_empty_directory_is_enotempty(case: Case) -> None:
    os.mkdir(case.dir / "made")
    write(case.dir / "made" / "kept.txt", b"kept")
    for full in ("made", "olddir"):
        with pytest.raises(OSError) as info:
            os.rmdir(case.dir / full)
        assert info.value.errno == errno.ENOTEMPTY, full
    os.mkdir(case.dir / "gone")
    os.rmdir(case.dir / "gone")
    assert sorted(os.listdir(case.dir)) == ["before.txt", "made", "olddir", "unread.bin"]
    assert read(case.dir / "made" / "kept.txt") == b"kept"
    assert os.listdir(case.dir / "olddir") == ["inner.txt"]
    case.on_server(lambda: read(case.server / "made" / "kept.txt") == b"kept"
                   and not (case.server / "gone").exists()
                   and read(case.server / "olddir" / "inner.txt") == INNER, "made/kept.txt and no gone/")


def test_readdir_lists_what_was_made(case: Case) -> None:
    write(case.dir / "a.txt", b"a")
    write(case.dir / "b.txt", b"b")
    os.mkdir(case.dir / "c")
    write(case.dir / "c" / "d.txt", b"d")
    want = ["a.txt", "b.txt", "before.txt", "c", "olddir", "unread.bin"]
    assert sorted(os.listdir(case.dir)) == want
    assert os.listdir(case.dir / "c") == ["d.txt"]
    with os.scandir(case.dir) as it:
        kinds = {e.name: e.is_dir(follow_symlinks=False) for e in it}
    assert kinds == {"a.txt": False, "b.txt": False, "before.txt": False, "c": True, "olddir": True,
                     "unread.bin": False}
    case.on_server(lambda: sorted(os.listdir(case.server)) == want
                   and read(case.server / "c" / "d.txt") == b"d", "the new names")

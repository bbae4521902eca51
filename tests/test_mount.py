"""The core slice end to end: a real smbd, the daemon in a subprocess, plain syscalls.

Server-side effects are checked on the share's directory on disk (what smbd stores), wire
traffic is counted by the TCP proxy between the daemon and smbd.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import threading
import time

import pytest

from tests.helpers.wait import eventually, settled

MiB = 1 << 20


@pytest.fixture
def cscd_env(mount_env):
    return mount_env()


def sha(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def write_random(path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 4 * MiB))
            f.write(block)
            h.update(block)
            left -= len(block)
    return h.hexdigest()


# ------------------------------------------------------------------ listing and reading


def test_listing_shows_server_entries_without_downloading(cscd_env):
    (cscd_env.server / "big.bin").write_bytes(b"x" * (8 * MiB))
    (cscd_env.server / "sub").mkdir()
    (cscd_env.server / "sub" / "inner.txt").write_text("inner")
    os.utime(cscd_env.server / "big.bin", ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    cscd_env.proxy.reset_counters()
    entries = {e.name: e.stat() for e in os.scandir(cscd_env.docs)}
    assert set(entries) == {"big.bin", "sub"}
    assert entries["big.bin"].st_size == 8 * MiB
    assert entries["big.bin"].st_mtime_ns == 1_600_000_000_000_000_000
    assert os.path.isdir(cscd_env.docs / "sub")
    assert cscd_env.proxy.bytes_to_client < MiB, "listing downloaded content"


def test_first_bytes_of_large_file_fetch_only_a_small_part(cscd_env):
    size = 256 * MiB
    with open(cscd_env.server / "huge.bin", "wb") as f:
        f.truncate(size)
        f.seek(0)
        f.write(b"HEAD" * 1024)
    cscd_env.proxy.reset_counters()
    with open(cscd_env.docs / "huge.bin", "rb") as f:
        assert f.read(4096) == b"HEAD" * 1024
    first = cscd_env.proxy.bytes_to_client
    assert first < 3 * MiB, f"reading 4 KiB transferred {first} bytes"
    with open(cscd_env.docs / "huge.bin", "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        assert f.read(4096) == b"HEAD" * 1024
    assert cscd_env.proxy.bytes_to_client - first < 64 * 1024, "second read went to the server"


def test_a_sequential_reader_is_read_ahead_by_several_windows_and_no_further(cscd_env):
    # Windows of 8 MiB, four at a time in the background (cscd.cache.hydration): a reader
    # that stops at 24 MiB leaves more than one window fetched beyond it (one fetch at a time
    # stops at 32 MiB) but never the whole file. The rest then comes over a link with a
    # round trip, several windows at once, and every byte must be the server's.
    expect = write_random(cscd_env.server / "seq.bin", 128 * MiB)
    cscd_env.proxy.reset_counters()
    with open(cscd_env.docs / "seq.bin", "rb", buffering=0) as f:
        for _ in range(24):
            assert len(f.read(MiB)) == MiB
        fetched = settled(lambda: cscd_env.proxy.bytes_to_client, 20, "transfers never settled", 0.6)
        assert 40 * MiB <= fetched <= 72 * MiB, f"{fetched / MiB:.1f} MiB fetched for 24 MiB read"
        cscd_env.proxy.delay_s = 0.005
        h = hashlib.sha256((cscd_env.server / "seq.bin").read_bytes()[: 24 * MiB])
        while chunk := f.read(MiB):
            h.update(chunk)
    assert h.hexdigest() == expect
    assert cscd_env.proxy.bytes_to_client < 130 * MiB, "bytes were fetched twice"


def test_read_in_the_middle_then_whole_file_is_correct(cscd_env):
    expect = write_random(cscd_env.server / "r.bin", 5 * MiB + 123)
    with open(cscd_env.docs / "r.bin", "rb") as f:
        f.seek(3 * MiB + 7)
        want = (cscd_env.server / "r.bin").read_bytes()[3 * MiB + 7 : 3 * MiB + 7 + 1000]
        assert f.read(1000) == want
    assert sha(cscd_env.docs / "r.bin") == expect


def test_a_change_reaches_the_server_while_the_mount_never_pauses(cscd_env):
    # Push rounds wait for a pause in the mount's requests (2 s at most) and worker uploads
    # make way for them (50 ms per MiB at most): neither may starve. getxattr of the state
    # attribute reaches the daemon every time (the kernel keeps no xattrs).
    data = os.urandom(3 * MiB)  # above the small-file batches: the worker's pipelined write
    stop = threading.Event()
    requests = [0]

    def busy() -> None:
        while not stop.is_set():
            os.getxattr(cscd_env.docs, "user.cscd.state")
            requests[0] += 1

    worker = threading.Thread(target=busy, daemon=True)
    worker.start()
    try:
        (cscd_env.docs / "busy.bin").write_bytes(data)
        eventually(lambda: (cscd_env.server / "busy.bin").exists()
                   and (cscd_env.server / "busy.bin").read_bytes() == data, 20,
                   "busy.bin never reached the server while the mount was busy")
    finally:
        stop.set()
        worker.join(5)
    assert requests[0] > 100, "the mount was not kept busy"


# ------------------------------------------------------------------ writing


def test_closed_file_reaches_server(cscd_env):
    t0 = time.monotonic()
    (cscd_env.docs / "new.txt").write_bytes(b"hello server")
    eventually(lambda: (cscd_env.server / "new.txt").exists()
             and (cscd_env.server / "new.txt").read_bytes() == b"hello server",
             5, "new.txt did not reach the server")
    print(f"upload after close: {time.monotonic() - t0:.2f} s")
    assert not [n for n in os.listdir(cscd_env.server) if n.startswith(".cscd-upload-")]


def test_overwrite_append_truncate_reach_server(cscd_env):
    p = cscd_env.docs / "f.txt"
    p.write_bytes(b"0123456789")
    eventually(lambda: (cscd_env.server / "f.txt").exists(), 5, "f.txt not uploaded")
    with open(p, "r+b") as f:
        f.seek(2)
        f.write(b"ab")
    with open(p, "ab") as f:
        f.write(b"XYZ")
    eventually(lambda: (cscd_env.server / "f.txt").read_bytes() == b"01ab456789XYZ", 5,
               "overwrite/append not on server")
    os.truncate(p, 4)
    eventually(lambda: (cscd_env.server / "f.txt").read_bytes() == b"01ab", 5, "truncate not on server")
    assert p.read_bytes() == b"01ab"


def test_mkdir_rename_delete_reach_server(cscd_env):
    d = cscd_env.docs / "dir"
    d.mkdir()
    (d / "a.txt").write_text("A")
    eventually(lambda: (cscd_env.server / "dir" / "a.txt").exists(), 5, "dir/a.txt not uploaded")
    os.rename(d / "a.txt", d / "b.txt")
    eventually(lambda: (cscd_env.server / "dir" / "b.txt").exists()
             and not (cscd_env.server / "dir" / "a.txt").exists(), 5, "rename not on server")
    os.rename(d, cscd_env.docs / "dir2")
    eventually(lambda: (cscd_env.server / "dir2" / "b.txt").read_text() == "A", 5, "dir rename not on server")
    os.unlink(cscd_env.docs / "dir2" / "b.txt")
    os.rmdir(cscd_env.docs / "dir2")
    eventually(lambda: not (cscd_env.server / "dir2").exists(), 5, "delete not on server")


def test_rename_replaces_target_and_noreplace_refuses(cscd_env):
    a, b = cscd_env.docs / "a", cscd_env.docs / "b"
    a.write_text("new")
    b.write_text("old")
    eventually(lambda: (cscd_env.server / "b").exists() and (cscd_env.server / "a").exists(), 5, "not uploaded")
    c = cscd_env.docs / "c"
    c.write_text("c")
    assert renameat2(c, b, RENAME_NOREPLACE) == errno.EEXIST
    assert renameat2(c, b, RENAME_EXCHANGE) == errno.EINVAL
    os.rename(a, b)
    assert b.read_text() == "new"
    eventually(lambda: (cscd_env.server / "b").read_text() == "new" and not (cscd_env.server / "a").exists(),
             5, "replacing rename not on server")


def test_chmod_and_utimens_kept(cscd_env):
    p = cscd_env.docs / "m.txt"
    p.write_text("m")
    os.chmod(p, 0o600)
    os.utime(p, ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    st = os.stat(p)
    assert st.st_mode & 0o777 == 0o600
    assert st.st_mtime_ns == 1_500_000_000_000_000_000
    eventually(lambda: (cscd_env.server / "m.txt").exists()
             and os.stat(cscd_env.server / "m.txt").st_mtime_ns == 1_500_000_000_000_000_000,
             5, "mtime not on the server")


def test_hard_links_and_bad_names_are_refused(cscd_env):
    p = cscd_env.docs / "t.txt"
    p.write_text("t")
    with pytest.raises(PermissionError):
        os.link(p, cscd_env.docs / "hard")
    with pytest.raises(OSError) as info:
        (cscd_env.docs / "tab\there.txt").write_text("x")
    assert info.value.errno == errno.EINVAL
    with pytest.raises(PermissionError):
        (cscd_env.mount / "toplevel.txt").write_text("x")


def test_fsync_makes_data_durable_across_daemon_crash(cscd_env):
    assert os.listdir(cscd_env.docs) == []  # the folder is cached (listed) from here on
    cscd_env.proxy.hang()  # nothing can reach the server: durability must be local
    p = cscd_env.docs / "durable.txt"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"survives")
    os.fsync(fd)
    os.close(fd)
    cscd_env.daemon.kill()
    cscd_env.proxy.unhang()
    cscd_env.start_daemon()
    assert (cscd_env.docs / "durable.txt").read_bytes() == b"survives"
    eventually(lambda: (cscd_env.server / "durable.txt").exists()
             and (cscd_env.server / "durable.txt").read_bytes() == b"survives", 10, "not uploaded after restart")


# ------------------------------------------------------------------ server-side changes


def test_server_side_changes_show_up(cscd_env):
    assert os.listdir(cscd_env.docs) == []
    (cscd_env.server / "theirs.txt").write_text("v1")
    eventually(lambda: "theirs.txt" in os.listdir(cscd_env.docs), 5, "new server file not seen")
    assert (cscd_env.docs / "theirs.txt").read_text() == "v1"
    time.sleep(0.01)
    (cscd_env.server / "theirs.txt").write_text("version 2")

    def fresh():
        try:
            return (cscd_env.docs / "theirs.txt").read_text() == "version 2"
        except OSError:
            return False

    eventually(fresh, 6, "changed server file not seen")
    (cscd_env.server / "theirs.txt").unlink()
    eventually(lambda: "theirs.txt" not in os.listdir(cscd_env.docs), 6, "deleted server file still listed")


# ------------------------------------------------------------------ integrity, restart, concurrency


def test_256mib_file_is_byte_identical_on_server_and_after_cold_read(cscd_env):
    expect = write_random(cscd_env.docs / "big.bin", 256 * MiB)
    eventually(lambda: (cscd_env.server / "big.bin").exists()
             and os.path.getsize(cscd_env.server / "big.bin") == 256 * MiB, 60, "big.bin not uploaded")
    assert sha(cscd_env.server / "big.bin") == expect
    cscd_env.daemon.stop()
    cscd_env.wipe_cache()
    cscd_env.start_daemon()
    assert sha(cscd_env.docs / "big.bin") == expect


def test_restart_reuses_cache_without_server_traffic(cscd_env):
    expect = write_random(cscd_env.server / "cached.bin", 16 * MiB)
    assert sha(cscd_env.docs / "cached.bin") == expect
    cscd_env.daemon.stop()
    cscd_env.start_daemon()
    cscd_env.proxy.reset_counters()
    assert sha(cscd_env.docs / "cached.bin") == expect
    assert cscd_env.proxy.bytes_to_client < 256 * 1024, "cached file was downloaded again"


def test_eight_threads_write_and_read_different_files(cscd_env):
    errors = []

    def worker(i):
        try:
            data = os.urandom(2 * MiB + i)
            p = cscd_env.docs / f"t{i}.bin"
            for _ in range(3):
                p.write_bytes(data)
                if p.read_bytes() != data:
                    errors.append(f"t{i} read back differs")
            results[i] = hashlib.sha256(data).hexdigest()
        except Exception as exc:  # collected and asserted below
            errors.append(f"t{i}: {exc!r}")

    results = {}
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, digest in results.items():
        on_server = cscd_env.server / f"t{i}.bin"
        eventually(lambda p=on_server, d=digest: p.exists() and sha(p) == d, 20, f"t{i}.bin wrong on the server")


def test_large_directory_lists_completely(cscd_env):
    n = 100_000
    big = cscd_env.server / "many"
    big.mkdir()
    for i in range(n):
        (big / f"f{i:06d}").touch()
    names = os.listdir(cscd_env.docs / "many")
    assert len(names) == n
    assert set(names) == {f"f{i:06d}" for i in range(n)}


class _DirReader:
    """``os.scandir`` of one directory in a thread: what it saw, and when the first came."""

    def __init__(self, path) -> None:
        self.names: list[str] = []
        self.first = threading.Event()
        self.done = threading.Event()
        self.error: OSError | None = None
        self._thread = threading.Thread(target=self._read, args=(path,), daemon=True)
        self._thread.start()

    def _read(self, path) -> None:
        try:
            with os.scandir(path) as it:
                for entry in it:
                    self.names.append(entry.name)
                    self.first.set()
        except OSError as exc:
            self.error = exc
        finally:
            self.done.set()


def _first_listing_hung_midway(cscd_env, n: int) -> tuple[set[str], _DirReader]:
    """A directory of ``n`` files listed for the first time, the link hung once about half
    of the listing crossed it (the daemon asks for each 1 MiB batch after the last came)."""
    expected = {f"f{i:06d}" for i in range(n)}
    big = cscd_env.server / "many"
    big.mkdir()
    for name in expected:
        (big / name).touch()
    cscd_env.proxy.delay_to_client_s = 0.1  # each batch a round trip: half-way is seen in time
    cscd_env.proxy.reset_counters()
    reader = _DirReader(cscd_env.docs / "many")
    # ~96 bytes an entry, sent twice: a first try in one compound of 2 MiB, then in batches.
    eventually(lambda: cscd_env.proxy.bytes_to_client >= 2 * MiB + n * 96 // 2 or reader.done.is_set(),
               30, "the listing never got half-way")
    cscd_env.proxy.hang()
    return expected, reader


def test_a_large_directory_shows_its_first_entries_while_the_rest_is_on_its_way(cscd_env):
    # A first listing of an empty directory is added batch by batch (cscd.cache.listings):
    # with the link hung half-way, what came is shown at once. Listed whole, the reader
    # would see nothing until the last batch (here: an error once the request timed out).
    expected, reader = _first_listing_hung_midway(cscd_env, 60_000)
    try:
        assert not reader.done.is_set(), "the listing ended before the link hung"
        assert reader.first.wait(20), f"no entry shown while the rest was on its way: {reader.error!r}"
        assert cscd_env.proxy.is_hung
        assert not reader.done.is_set()
    finally:
        cscd_env.proxy.unhang()
        cscd_env.proxy.delay_to_client_s = 0
    assert reader.done.wait(60) and reader.error is None, reader.error
    assert len(reader.names) == len(expected) and set(reader.names) == expected
    assert sorted(os.listdir(cscd_env.docs / "many")) == sorted(expected)


@pytest.mark.log_allows(r"is now offline: the connection .* was closed")
def test_a_first_listing_cut_off_midway_loses_and_doubles_nothing(cscd_env):
    # The connection reset while the first batches are already in the index: the listing
    # is not retried where it broke (it would hand the same batches on again); the next
    # one lists the directory whole and merges it into what came.
    expected, reader = _first_listing_hung_midway(cscd_env, 60_000)
    try:
        assert reader.first.wait(20), f"no entry shown while the rest was on its way: {reader.error!r}"
        cscd_env.proxy.reset()
    finally:
        cscd_env.proxy.unhang()
        cscd_env.proxy.delay_to_client_s = 0
    assert reader.done.wait(60)
    if reader.error is None:  # it went on with a whole listing at once
        assert len(reader.names) == len(expected) and set(reader.names) == expected

    def listed_once() -> bool:
        try:
            names = os.listdir(cscd_env.docs / "many")
        except OSError:
            return False  # the link monitor may call the server gone for a moment
        return len(names) == len(expected) and set(names) == expected

    eventually(listed_once, 60, "the directory never listed every name exactly once")
    assert cscd_env.daemon.is_running()


# ------------------------------------------------------------------ renameat2

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)


def renameat2(old, new, flags) -> int:
    """Call renameat2(2); return 0 or the errno."""
    AT_FDCWD = -100
    rc = _libc.renameat2(AT_FDCWD, os.fsencode(str(old)), AT_FDCWD, os.fsencode(str(new)), flags)
    return 0 if rc == 0 else ctypes.get_errno()

"""Offline Files: server loss, hung and slow links, coming back by itself, conflicts.

Faults are real: a private smbd is killed and restarted, or the TCP proxy between the
daemon and smbd delays, hangs or refuses. Cached operations are timed with a plain clock.
"""

from __future__ import annotations

import errno
import os
import time

import pytest

from tests.helpers.churn import wait_settled
from tests.helpers.wait import eventually

FAST_ENOUGH_S = 1.0

# The server goes away in most tests here: the daemon says so, at WARNING.

pytestmark = pytest.mark.log_allows(r"is now offline")


def timed(fn, *args):
    t0 = time.monotonic()
    result = fn(*args)
    return time.monotonic() - t0, result


def mode_lines(env):
    return [line for line in env.daemon.log_text().splitlines() if "is now" in line]


@pytest.fixture
def env_own(mount_env, own_smbd):
    return mount_env(server=own_smbd)


@pytest.fixture
def env(mount_env):
    return mount_env()


def prepare_cache(env):
    """A listed folder with one cached file, one uncached file and a subdirectory."""
    (env.server / "cached.txt").write_text("cached content")
    (env.server / "uncached.bin").write_bytes(b"u" * 100_000)
    (env.server / "sub").mkdir()
    (env.server / "sub" / "inner.txt").write_text("inner")
    assert sorted(os.listdir(env.docs)) == ["cached.txt", "sub", "uncached.bin"]
    assert (env.docs / "cached.txt").read_text() == "cached content"
    assert os.listdir(env.docs / "sub") == ["inner.txt"]
    assert (env.docs / "sub" / "inner.txt").read_text() == "inner"


def test_killed_server_cached_work_goes_on_and_reaches_server_after_return(env_own, own_smbd):
    env = env_own
    prepare_cache(env)
    own_smbd.kill()
    ops = {
        "ls": lambda: sorted(os.listdir(env.docs)),
        "read cached": lambda: (env.docs / "cached.txt").read_text(),
        "write new": lambda: (env.docs / "new.txt").write_text("written while the server was dead"),
        "mkdir": lambda: os.mkdir(env.docs / "newdir"),
        "write in new dir": lambda: (env.docs / "newdir" / "f.txt").write_text("deep"),
        "rename": lambda: os.rename(env.docs / "sub", env.docs / "sub-renamed"),
        "delete": lambda: os.unlink(env.docs / "cached.txt"),
        "truncate": lambda: os.truncate(env.docs / "new.txt", 7),
    }
    for name, op in ops.items():
        took, _ = timed(op)
        assert took < FAST_ENOUGH_S, f"{name} took {took:.2f} s with the server dead"
    took, _ = timed(lambda: pytest.raises(OSError, (env.docs / "uncached.bin").read_bytes))
    with pytest.raises(OSError) as info:
        (env.docs / "uncached.bin").read_bytes()
    assert info.value.errno == errno.EHOSTDOWN
    assert took < FAST_ENOUGH_S, f"uncached read took {took:.2f} s to fail"

    own_smbd.start()
    t0 = time.monotonic()
    eventually(lambda: (env.server / "new.txt").read_text() == "written"
               and (env.server / "newdir" / "f.txt").read_text() == "deep"
               and (env.server / "sub-renamed" / "inner.txt").read_text() == "inner"
               and not (env.server / "sub").exists()
               and not (env.server / "cached.txt").exists(), 15, "offline changes not on the server")
    print(f"server back → all changes uploaded in {time.monotonic() - t0:.2f} s")
    assert (env.docs / "uncached.bin").read_bytes() == b"u" * 100_000
    assert any("offline" in line for line in mode_lines(env))


def test_hung_link_cached_operations_do_not_wait(env):
    prepare_cache(env)
    env.proxy.hang()
    for name, op in {
        "ls": lambda: os.listdir(env.docs),
        "read cached": lambda: (env.docs / "cached.txt").read_text(),
        "write": lambda: (env.docs / "during-hang.txt").write_text("x"),
        "rename": lambda: os.rename(env.docs / "during-hang.txt", env.docs / "renamed.txt"),
        "stat": lambda: os.stat(env.docs / "sub" / "inner.txt"),
    }.items():
        took, _ = timed(op)
        assert took < FAST_ENOUGH_S, f"{name} took {took:.2f} s on a hung link"
    # The monitor notices (request timeout) and the folder goes offline; then uncached
    # reads fail at once instead of hanging.
    eventually(lambda: any("is now offline" in line for line in mode_lines(env)), 15, "hung link not noticed")
    took, _ = timed(lambda: pytest.raises(OSError, (env.docs / "uncached.bin").read_bytes))
    assert took < FAST_ENOUGH_S
    env.proxy.unhang()
    env.proxy.reset()
    eventually(lambda: (env.server / "renamed.txt").read_text() == "x", 15, "change not uploaded after the hang")


def test_slow_link_is_entered_and_left(mount_env):
    env = mount_env(offline={"background_sync_interval_s": 2, "background_sync_max_offset_s": 0})
    prepare_cache(env)
    env.proxy.delay_s = 0.08  # 80 ms each way
    eventually(lambda: any("is now slow_link" in line for line in mode_lines(env)), 15, "slow link not detected")
    (env.docs / "slow.txt").write_text("uploaded in the background session")
    eventually(lambda: (env.server / "slow.txt").exists(), 15, "no background upload on the slow link")
    env.proxy.delay_s = 0.0
    eventually(lambda: mode_lines(env)[-1].endswith("online: server answered"), 15, "did not return online")


@pytest.mark.log_allows(r"conflict: ")
def test_conflict_keeps_both_versions(env):
    (env.server / "doc.txt").write_text("base")
    assert (env.docs / "doc.txt").read_text() == "base"
    env.proxy.stop_listening()
    env.proxy.reset()
    eventually(lambda: any("is now offline" in line for line in mode_lines(env)), 10, "offline not noticed")
    (env.docs / "doc.txt").write_text("mine, written offline")
    (env.server / "doc.txt").write_text("theirs, written on the server")
    env.proxy.resume_listening()

    def both_on_server():
        names = os.listdir(env.server)
        copies = [n for n in names if n.startswith("doc (conflict ") and n.endswith(").txt")]
        return copies and (env.server / "doc.txt").read_text() == "theirs, written on the server" \
            and (env.server / copies[0]).read_text() == "mine, written offline"

    eventually(both_on_server, 15, "both versions not on the server")
    eventually(lambda: (env.docs / "doc.txt").read_text() == "theirs, written on the server", 10,
               "server version not shown under the name")
    copies = [n for n in os.listdir(env.docs) if n.startswith("doc (conflict ")]
    assert len(copies) == 1
    assert (env.docs / copies[0]).read_text() == "mine, written offline"


def go_offline(env):
    env.proxy.stop_listening()
    env.proxy.reset()
    eventually(lambda: any("is now offline" in line for line in mode_lines(env)), 10, "offline not noticed")


def test_dir_deleted_on_server_while_file_inside_changed_here_loses_nothing(env):
    (env.server / "D").mkdir()
    (env.server / "D" / "f.txt").write_text("base")
    (env.server / "D" / "g.txt").write_text("untouched")
    assert (env.docs / "D" / "f.txt").read_text() == "base"
    assert os.listdir(env.docs / "D")
    go_offline(env)
    (env.docs / "D" / "f.txt").write_text("changed here")
    import shutil

    shutil.rmtree(env.server / "D")
    env.proxy.resume_listening()
    eventually(lambda: (env.server / "D" / "f.txt").read_text() == "changed here", 15,
               "the local change was lost with the server-side delete")
    eventually(lambda: not (env.docs / "D" / "g.txt").exists(), 10, "the unchanged file should follow the server")


def test_dir_deleted_here_while_file_inside_changed_on_server_loses_nothing(env):
    (env.server / "E").mkdir()
    (env.server / "E" / "f.txt").write_text("base")
    assert (env.docs / "E" / "f.txt").read_text() == "base"
    go_offline(env)
    os.unlink(env.docs / "E" / "f.txt")
    os.rmdir(env.docs / "E")
    time.sleep(0.05)
    (env.server / "E" / "f.txt").write_text("changed on the server")
    env.proxy.resume_listening()
    eventually(lambda: (env.docs / "E" / "f.txt").read_text() == "changed on the server", 15,
               "the server's change did not come back")
    assert (env.server / "E" / "f.txt").read_text() == "changed on the server"


def test_offline_changes_survive_a_daemon_crash(env):
    prepare_cache(env)
    go_offline(env)
    (env.docs / "sub" / "a.txt").write_text("made offline")
    os.rename(env.docs / "sub", env.docs / "moved")
    os.mkdir(env.docs / "fresh")
    (env.docs / "fresh" / "b.txt").write_text("b")
    env.daemon.kill()
    env.proxy.resume_listening()
    env.start_daemon()
    eventually(lambda: (env.server / "moved" / "a.txt").read_text() == "made offline"
               and (env.server / "moved" / "inner.txt").read_text() == "inner"
               and (env.server / "fresh" / "b.txt").read_text() == "b"
               and not (env.server / "sub").exists(), 15, "offline changes lost with the crash")


def test_an_earlier_unrecorded_upload_is_not_a_conflict_with_itself(env):
    """The server already holds exactly our file (uploaded before a crash could record it):
    recorded as synced, no conflict copy."""
    assert os.listdir(env.docs) == []
    go_offline(env)
    (env.docs / "mine.txt").write_text("same bytes")
    mtime = os.stat(env.docs / "mine.txt").st_mtime_ns
    (env.server / "mine.txt").write_text("same bytes")
    os.utime(env.server / "mine.txt", ns=(mtime, mtime))
    env.proxy.resume_listening()
    eventually(lambda: any("already on the server" in line for line in env.daemon.log_text().splitlines()), 15,
               "the earlier upload was not recognised")
    assert sorted(os.listdir(env.server)) == ["mine.txt"]
    assert sorted(os.listdir(env.docs)) == ["mine.txt"]


def test_a_folder_creation_the_server_runs_late_leaves_no_stray_folder(env):
    """A hung server that recovers runs what it had queued, also requests cscd gave up on.
    Here: ``mkdir late`` reaches the hung link, times out, and the folder is renamed to
    ``moved`` here meanwhile; when the link comes back the server makes ``late`` after all.
    That folder is cscd's own (noted before the mkdir went out), not a new one of somebody
    else's: it ends as ``moved``, and no ``late`` is left on the server or in the mount."""
    assert os.listdir(env.docs) == []
    env.proxy.hang()
    try:
        (env.docs / "late").mkdir()
        time.sleep(2.0)  # the push sent its mkdir into the hung link
        os.rename(env.docs / "late", env.docs / "moved")
        (env.docs / "moved" / "a.txt").write_text("a")
        time.sleep(6.0)  # past the 5 s request timeout: cscd gave up on that mkdir
    finally:
        env.proxy.unhang()
    eventually(lambda: (env.server / "moved" / "a.txt").read_text() == "a", 20, "moved/a.txt never reached the server")
    wait_settled(env, 30)
    # Absence needs a window: rescans (every 0.5 s here) and change notification would bring
    # a stray folder into the mount within it.
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        assert sorted(os.listdir(env.server)) == ["moved"]
        assert sorted(os.listdir(env.docs)) == ["moved"]
        time.sleep(0.1)
    assert os.listdir(env.docs / "moved") == ["a.txt"]

"""Failures only the user or the admin can fix speak once, stay listed and lose nothing
(issue 22, item 2): events 2010 (server out of space or quota) and 2011 (access denied).

Real faults: a share on a 1 MiB tmpfs that fills up, and a share whose folder the Samba user
may read but not write. The file stays in the cache and readable, the daemon retries with
backoff, ``cscd status`` lists the file with its kind from the first failure, and the event
is emitted once however often the upload is retried.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cscd.samba import EmbeddedSamba
from tests.helpers.ops import cli_json
from tests.helpers.wait import eventually, wait_for


def _events(env, event_id: int) -> list[dict]:
    return [e for e in cli_json(env.daemon, "events")["events"] if e["id"] == event_id]


def _problem(env, name: str) -> dict | None:
    problems = cli_json(env.daemon, "status")["sync"]["problems"]
    return next((p for p in problems if p["path"].endswith(name)), None)


@pytest.fixture
def full_smbd(tmp_path: Path) -> Iterator[EmbeddedSamba]:
    """A private smbd whose share is a 1 MiB tmpfs."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    server = EmbeddedSamba(tmp_path / "full-smbd")
    server.share_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(server.share_dir)], check=True)
    try:
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        subprocess.run(["umount", "-l", str(server.share_dir)], check=True)


@pytest.fixture
def nobody_smbd(tmp_path: Path) -> Iterator[EmbeddedSamba]:
    """A private smbd that works as ``nobody``, who owns nothing in its share yet."""
    server = EmbeddedSamba(tmp_path / "nobody-smbd", username="nobody")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.log_allows(r"\[2010\] ")
def test_a_full_server_is_told_once_listed_and_loses_nothing(full_smbd, mount_env):
    env = mount_env(server=full_smbd)
    big = os.urandom(3 << 20)
    (env.docs / "small.txt").write_bytes(b"fits")
    eventually(lambda: (env.server / "small.txt").read_bytes() == b"fits", 20, "the small file not uploaded")
    # Only then the big one: written together, both go to the worker processes at once and
    # the big one's temporary may take the room first; the small one is then retried after
    # its backoff, which is right but not what this test is about.
    (env.docs / "big.bin").write_bytes(big)
    problem = wait_for(lambda: _problem(env, "big.bin"), 30, "the full server never shows in cscd status")
    assert problem["kind"] == "quota" and "room" in problem["reason"], problem
    wait_for(lambda: _problem(env, "big.bin")["failures"] >= 3, 30, "the upload is not retried")
    assert len(_events(env, 2010)) == 1
    assert (env.docs / "big.bin").read_bytes() == big
    assert not (env.server / "big.bin").exists() or (env.server / "big.bin").stat().st_size != len(big)


@pytest.mark.log_allows(r"\[2011\] ")
def test_access_denied_is_told_once_listed_and_loses_nothing(nobody_smbd, mount_env):
    nobody = pwd.getpwnam("nobody")
    env = mount_env(server=nobody_smbd, start=False)
    for parent in [env.server, *env.server.parents]:
        if parent == Path("/"):
            break
        os.chmod(parent, os.stat(parent).st_mode & 0o7777 | 0o001)  # smbd as nobody passes through
    for path in (env.server.parent, env.server):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    locked = env.server / "locked"
    locked.mkdir()
    os.chmod(locked, 0o755)  # root's: nobody may list it, not write in it
    env.start_daemon()
    (env.docs / "locked" / "mine.txt").write_bytes(b"written where the server says no")
    (env.docs / "open.txt").write_bytes(b"written where it may go")
    eventually(lambda: (env.server / "open.txt").exists(), 20, "the writable file not uploaded")
    problem = wait_for(lambda: _problem(env, "mine.txt"), 30, "access denied never shows in cscd status")
    assert problem["kind"] == "access denied", problem
    wait_for(lambda: _problem(env, "mine.txt")["failures"] >= 3, 30, "the upload is not retried")
    assert len(_events(env, 2011)) == 1
    assert (env.docs / "locked" / "mine.txt").read_bytes() == b"written where the server says no"
    assert not (locked / "mine.txt").exists()


@pytest.mark.log_allows(r"is now offline")
def test_a_file_not_available_offline_is_told_once(mount_env):
    env = mount_env()
    (env.server / "uncached.bin").write_bytes(b"u" * 1000)
    assert "uncached.bin" in os.listdir(env.docs)
    env.proxy.stop_listening()
    env.proxy.reset()
    eventually(lambda: "is now offline" in env.daemon.log_text(), 15, "offline not noticed")
    for _ in range(3):
        with pytest.raises(OSError):
            (env.docs / "uncached.bin").read_bytes()
    told = _events(env, 2020)
    assert len(told) == 1, told
    assert "uncached.bin" in told[0]["message"] and "(offline)" in told[0]["message"], told

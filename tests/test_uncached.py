"""A folder with ``offline: false``: redirected and mounted, but not cached.

Real smbd, real mount. Reads see the server's current version, content does not stay in the
cache after the last close, writes reach the server before ``close`` returns and a failed one
is reported to the writer and not queued, and with the server gone every operation fails
with EHOSTDOWN. Pinning there is refused; ``cscd status`` says the folder is not cached.
"""

from __future__ import annotations

import errno
import os

import pytest

from cscd.cache.store import ContentStore
from tests.helpers.mount_env import MountEnv
from tests.helpers.ops import cli_json
from tests.helpers.wait import eventually, settled

# The server goes away in most tests here: the daemon says so, at WARNING.

pytestmark = pytest.mark.log_allows(r"is now offline", r"\[2012\] .* could not be written to the server")


def cli(env, *args, code=0):
    return cli_json(env.daemon, *args, code=code)


def uncached_env(mount_env, server=None) -> MountEnv:
    env = mount_env(server=server, start=False)
    env.daemon.folders["Documents"] = {"target": env.daemon.folders["Documents"], "offline": False}
    env.start_daemon()
    return env


def stored(env, path) -> bool:
    """Whether the cache's content store holds a file for the node at ``path``."""
    return ContentStore(env.daemon.cache / "content").exists(os.stat(path).st_ino)


@pytest.fixture
def env(mount_env):
    return uncached_env(mount_env)


@pytest.fixture
def env_own(mount_env, own_smbd):
    return uncached_env(mount_env, own_smbd)


def test_a_read_sees_a_server_change_at_once(env):
    (env.server / "a.txt").write_text("first version")
    assert (env.docs / "a.txt").read_text() == "first version"
    (env.server / "a.txt").write_text("second, longer version")
    assert (env.docs / "a.txt").read_text() == "second, longer version"
    (env.server / "b.txt").write_text("new on the server")
    assert "b.txt" in os.listdir(env.docs)
    (env.server / "b.txt").unlink()
    assert "b.txt" not in os.listdir(env.docs)


def test_content_is_not_kept_after_the_last_close(env):
    (env.server / "big.bin").write_bytes(os.urandom(300_000))
    path = env.docs / "big.bin"
    with open(path, "rb") as f:
        assert f.read() == (env.server / "big.bin").read_bytes()
    assert not stored(env, path), "content still in the cache after close"
    (env.docs / "new.txt").write_text("written here")
    assert (env.server / "new.txt").read_text() == "written here", "not on the server when close returned"
    assert not stored(env, env.docs / "new.txt")
    status = cli(env, "status")
    assert status["folders"]["Documents"]["cached"] is False
    assert status["folders"]["Documents"]["pending_changes"] == 0


def test_a_sequential_reader_leaves_no_read_ahead_behind_after_close(env):
    # A cached folder reads a sequential reader ahead in the background; here nothing may
    # land in the cache after the last close, read-ahead included.
    (env.server / "long.bin").write_bytes(os.urandom(64 << 20))
    path = env.docs / "long.bin"
    with open(path, "rb", buffering=0) as f:
        for _ in range(24):
            assert len(f.read(1 << 20)) == 1 << 20
    settled(lambda: env.proxy.bytes_to_client, 20, "transfers never settled")  # no read-ahead in flight
    assert not stored(env, path), "read-ahead landed in the cache after the last close"


def test_fsync_puts_the_write_on_the_server(env):
    fd = os.open(env.docs / "f.txt", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"synced by fsync")
        os.fsync(fd)
        assert (env.server / "f.txt").read_bytes() == b"synced by fsync"
    finally:
        os.close(fd)


def test_namespace_changes_reach_the_server_before_the_call_returns(env):
    os.mkdir(env.docs / "d")
    assert (env.server / "d").is_dir()
    (env.docs / "d" / "x.txt").write_text("x")
    os.rename(env.docs / "d" / "x.txt", env.docs / "d" / "y.txt")
    assert (env.server / "d" / "y.txt").read_text() == "x"
    assert not (env.server / "d" / "x.txt").exists()
    os.unlink(env.docs / "d" / "y.txt")
    assert not (env.server / "d" / "y.txt").exists()
    os.rmdir(env.docs / "d")
    assert not (env.server / "d").exists()


def test_pinning_is_refused(env):
    (env.server / "p.txt").write_text("p")
    assert os.listdir(env.docs) == ["p.txt"]
    answer = cli(env, "pin", str(env.docs / "p.txt"), code=5)
    assert "cannot be pinned" in answer["error"]["message"]


def test_a_write_with_the_server_gone_fails_and_is_not_queued(env_own, own_smbd):
    env = env_own
    (env.server / "doc.txt").write_text("server version")
    assert (env.docs / "doc.txt").read_text() == "server version"
    fd = os.open(env.docs / "doc.txt", os.O_WRONLY | os.O_TRUNC)
    own_smbd.kill()
    with pytest.raises(OSError) as info:
        try:
            os.write(fd, b"lost: the writer is told")
        finally:
            os.close(fd)
    assert info.value.errno in (errno.EHOSTDOWN, errno.EIO, errno.ETIMEDOUT), info.value
    eventually(lambda: cli(env, "status")["folders"]["Documents"]["mode"] == "offline", 15, "not offline")
    for op in (lambda: os.listdir(env.docs), lambda: (env.docs / "doc.txt").read_bytes(),
               lambda: (env.docs / "new.txt").write_text("x"), lambda: os.mkdir(env.docs / "nd")):
        with pytest.raises(OSError) as info:
            op()
        assert info.value.errno == errno.EHOSTDOWN
    assert cli(env, "status")["folders"]["Documents"]["pending_changes"] == 0, "a change was queued"
    own_smbd.start()
    eventually(lambda: cli(env, "status")["folders"]["Documents"]["mode"] == "online", 20, "not online")
    assert (env.docs / "doc.txt").read_text() == "server version"
    assert (env.server / "doc.txt").read_text() == "server version"
    assert not (env.server / "new.txt").exists()

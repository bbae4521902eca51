"""Change notification: server-side changes reach the mount without waiting for a scan.

The daemon runs with a 60 s scan interval (and a longer full scan), so within the 2 s
window only CHANGE_NOTIFY can explain what the mount shows. Changes come from an
independent ``SmbUpstream`` client and straight from the server's disk. With
``change notify = no`` on the server, the daemon falls back to its periodic scan quietly.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import smbclient

from cscd.samba import EmbeddedSamba
from cscd.types import Credentials, UncTarget
from cscd.upstream.smb import SmbUpstream
from tests.helpers.mount_env import MountEnv
from tests.helpers.wait import wait_for

WINDOW_S = 2.0
SLOW_SCANS = {"scan_interval_s": 60, "revalidate_interval_s": 600}


def seen_within(predicate, message: str, timeout_s: float = WINDOW_S) -> float:
    """Seconds until ``predicate`` held; fails after ``timeout_s``."""
    t0 = time.monotonic()
    wait_for(predicate, timeout_s, message, interval_s=0.01, ignore=(OSError,))
    return time.monotonic() - t0


def no_warnings(env: MountEnv) -> None:
    warnings = env.daemon.warnings()
    assert not warnings, "daemon logged warnings:\n" + "\n".join(warnings)


@pytest.fixture
def env(mount_env) -> MountEnv:
    env = mount_env(start=False, timings=SLOW_SCANS)
    (env.server / "sub").mkdir()
    env.start_daemon()
    return env


@pytest.fixture
async def other(env: MountEnv, smbd: EmbeddedSamba) -> AsyncIterator[SmbUpstream]:
    """Another SMB client working in the same folder (straight to smbd)."""
    up = SmbUpstream(
        UncTarget(smbd.host, smbd.share, (env.user_dir, "Documents")),
        Credentials(smbd.username, smbd.password),
        port=smbd.port,
    )
    await up.connect()
    try:
        yield up
    finally:
        await up.close()


def local_fd(path: Path, data: bytes) -> int:
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


def wait_watching(env: MountEnv) -> None:
    """The watch is armed, then the folder and ``sub`` are listed (cached from here on)."""
    wait_for(lambda: "watching " in env.daemon.log_text(), 10, "the folder is not watched")
    assert sorted(os.listdir(env.docs)) == ["sub"]
    assert os.listdir(env.docs / "sub") == []


async def test_another_clients_changes_appear_within_two_seconds(
    env: MountEnv, other: SmbUpstream, tmp_path: Path
) -> None:
    wait_watching(env)
    fd = local_fd(tmp_path / "v1", b"version one")
    await other.upload(b"new.txt", fd, 11, time.time_ns(), expected=None, replace=False)
    t_new = seen_within(lambda: "new.txt" in os.listdir(env.docs), "new file not seen")
    assert (env.docs / "new.txt").read_bytes() == b"version one"

    await other.upload(b"sub/deep.txt", fd, 11, time.time_ns(), expected=None, replace=False)
    t_deep = seen_within(lambda: "deep.txt" in os.listdir(env.docs / "sub"),
                         "new file in a subfolder not seen")

    entry = await other.stat(b"new.txt")
    fd2 = local_fd(tmp_path / "v2", b"version two, longer")
    await other.upload(b"new.txt", fd2, 19, time.time_ns(), expected=entry)
    t_changed = seen_within(lambda: (env.docs / "new.txt").read_bytes() == b"version two, longer",
                            "changed file not seen")

    await other.rename(b"sub/deep.txt", b"moved.txt")
    t_moved = seen_within(lambda: "moved.txt" in os.listdir(env.docs)
                          and "deep.txt" not in os.listdir(env.docs / "sub"),
                          "rename out of a subfolder not seen")

    await other.delete(b"moved.txt", is_dir=False)
    t_gone = seen_within(lambda: "moved.txt" not in os.listdir(env.docs), "delete not seen")
    print(f"notify latency: create {t_new:.3f} s, create in sub {t_deep:.3f} s, "
          f"replace {t_changed:.3f} s, rename {t_moved:.3f} s, delete {t_gone:.3f} s")
    for fd_ in (fd, fd2):
        os.close(fd_)


def test_change_on_the_servers_disk_in_the_watched_folder(env: MountEnv) -> None:
    wait_watching(env)
    (env.server / "disk.txt").write_text("written behind smbd's back")
    t_new = seen_within(lambda: (env.docs / "disk.txt").read_text() == "written behind smbd's back",
                        "file created on the server's disk not seen")
    (env.server / "disk.txt").write_text("and changed there")
    t_changed = seen_within(lambda: (env.docs / "disk.txt").read_text() == "and changed there",
                            "file changed on the server's disk not seen")
    print(f"notify latency (server disk): create {t_new:.3f} s, change {t_changed:.3f} s")


def change_tracking(env: MountEnv) -> dict:
    status = json.loads(env.daemon.run_cli("status", "--json").stdout)
    return status["folders"]["Documents"]["changes"]


def test_writes_in_a_used_subfolder_appear_within_two_seconds(env: MountEnv, smbd: EmbeddedSamba) -> None:
    """A tree watch does not see writes to files below the top (Samba): the watch on the
    recently used ``sub`` does. Scans are slowed to a minute and more, so only it can."""
    wait_watching(env)
    (env.server / "sub" / "a.txt").write_text("one")
    seen_within(lambda: os.listdir(env.docs / "sub") == ["a.txt"], "a new file in sub was not seen")
    assert (env.docs / "sub" / "a.txt").read_text() == "one"
    wait_for(lambda: change_tracking(env)["directory_watches"] >= 1, 10, "sub gets no watch of its own")
    assert change_tracking(env)["mode"] == "notify"

    smbclient.register_session(smbd.host, username=smbd.username, password=smbd.password, port=smbd.port)
    try:
        unc = rf"\\{smbd.host}\{smbd.share}\{env.user_dir}\Documents\sub\a.txt"
        with smbclient.open_file(unc, mode="r+b", port=smbd.port) as f:  # another client, in place
            f.write(b"two")
    finally:
        smbclient.reset_connection_cache()
    t_smb = seen_within(lambda: (env.docs / "sub" / "a.txt").read_text() == "two",
                        "a write in place by another client in a subfolder was not seen")
    (env.server / "sub" / "a.txt").write_text("three, on the server's disk")
    t_disk = seen_within(lambda: (env.docs / "sub" / "a.txt").read_text() == "three, on the server's disk",
                         "a write on the server's disk in a subfolder was not seen")
    print(f"notify latency in a subfolder: smb write {t_smb:.3f} s, disk write {t_disk:.3f} s")
    no_warnings(env)


def test_without_change_notify_the_next_scan_finds_it(quiet_smbd: EmbeddedSamba, mount_env) -> None:
    env = mount_env(server=quiet_smbd, timings={"scan_interval_s": 1})
    assert os.listdir(env.docs) == []
    wait_for(lambda: "periodic scans only" in env.daemon.log_text(), 10,
             "the daemon did not notice that the server does not notify")
    (env.server / "late.txt").write_text("found by a scan")
    seen_within(lambda: (env.docs / "late.txt").read_text() == "found by a scan",
                "the periodic scan did not find the change", timeout_s=5)
    tracking = change_tracking(env)
    assert tracking["mode"] == "polling" and tracking["directory_watches"] == 0
    no_warnings(env)

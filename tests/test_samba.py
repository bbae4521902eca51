"""``EmbeddedSamba``: the throwaway server the other tests stand on (plain sync tests)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from cscd.samba import EmbeddedSamba, SambaError


def smbclient_ls(server: EmbeddedSamba) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "smbclient",
            "-p",
            str(server.port),
            "-U",
            f"{server.username}%{server.password}",
            f"//{server.host}/{server.share}",
            "-c",
            "ls",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_serves_its_share_and_writes_a_private_credentials_file(tmp_path: Path) -> None:
    with EmbeddedSamba(tmp_path / "s", extra_options={"change notify": "no"}) as server:
        (server.share_dir / "hello.txt").write_text("hi")
        res = smbclient_ls(server)
        assert res.returncode == 0, res.stderr
        assert "hello.txt" in res.stdout
        creds = server.write_credentials_file(tmp_path / "creds")
        assert stat.S_IMODE(os.stat(creds).st_mode) == 0o600
        assert creds.read_text() == f"username={server.username}\npassword={server.password}\n"
        assert server.unc("a/b") == f"\\\\127.0.0.1\\{server.share}\\a\\b"
        conf = server.conf_path.read_text()
        assert conf.index("change notify = no") < conf.index(f"[{server.share}]")
        pid = server.pid
    assert pid is not None and not os.path.exists(f"/proc/{pid}")  # stopped and reaped


def _is_zombie(pid: int | None) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


def test_kill_restart_pause_stop(tmp_path: Path) -> None:
    server = EmbeddedSamba(tmp_path / "s")
    server.start()
    port = server.port
    server.kill()
    with socket.socket() as s:
        assert s.connect_ex((server.host, port)) != 0  # nothing listens any more
    server.start()
    assert server.port == port
    assert smbclient_ls(server).returncode == 0
    server.pause()
    server.stop()  # a paused server stops too
    assert not server.is_running()


def test_rerun_on_a_leftover_directory_kills_the_stale_server(tmp_path: Path) -> None:
    first = EmbeddedSamba(tmp_path / "s", password="pw-one")
    first.start()
    stale_pid = first.pid
    # Forget it without stopping, as a crashed test run would.
    second = EmbeddedSamba(tmp_path / "s", password="pw-two")
    second.start()
    try:
        assert second.pid != stale_pid
        assert _is_zombie(stale_pid) or not os.path.exists(f"/proc/{stale_pid}")
        assert smbclient_ls(second).returncode == 0
    finally:
        second.stop()
        first.kill()


def test_unknown_user_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SambaError, match="no unix account"):
        EmbeddedSamba(tmp_path / "s", username="no-such-user-cscd").start()

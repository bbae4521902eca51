"""Starting the daemon: bad input gives one clear line and a non-zero exit, never a traceback;
offline is a normal state at start when there is a cache."""

from __future__ import annotations

import os
import socket

import pytest

from tests.helpers.daemon import DaemonProcess, run_cscd, write_credentials
from tests.helpers.wait import wait_for


def one_line_error(result, code, *needles):
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    # Log lines may come first; the error itself is one line, the last one.
    errors = [line for line in result.stderr.splitlines() if line.startswith("cscd: ")]
    assert len(errors) == 1, f"expected one error line, got:\n{result.stderr}"
    err = errors[0]
    assert result.stderr.strip().endswith(err), result.stderr
    for needle in needles:
        assert needle in err, err
    return err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def config_dir(tmp_path):
    creds = write_credentials(tmp_path / "creds", "alice", "s3cret-pass")
    return tmp_path, creds


def write_config(tmp_path, text):
    p = tmp_path / "cscd.yaml"
    p.write_text(text)
    return p


def test_malformed_config(config_dir):
    tmp, creds = config_dir
    p = write_config(tmp, f"mount: {tmp}/mnt\ncache: {tmp}/c\ncredentials: {creds}\nport: many\n"
                          "folders:\n  Documents: '\\\\127.0.0.1\\share\\a'\n")
    one_line_error(run_cscd("-v", "daemon", "--config", str(p)), 2, f"{p}:4:", "port")


def test_missing_credentials_file(config_dir):
    tmp, _ = config_dir
    p = write_config(tmp, f"mount: {tmp}/mnt\ncache: {tmp}/c\ncredentials: {tmp}/nope\n"
                          "folders:\n  Documents: '\\\\127.0.0.1\\share\\a'\n")
    one_line_error(run_cscd("daemon", "--config", str(p)), 2, "credentials file not found", f"{tmp}/nope")


def test_world_readable_credentials_refused_without_leaking(config_dir):
    tmp, creds = config_dir
    os.chmod(creds, 0o644)
    p = write_config(tmp, f"mount: {tmp}/mnt\ncache: {tmp}/c\ncredentials: {creds}\n"
                          "folders:\n  Documents: '\\\\127.0.0.1\\share\\a'\n")
    err = one_line_error(run_cscd("daemon", "--config", str(p)), 2, "readable by others", "chmod 600")
    assert "s3cret-pass" not in err
    assert not os.path.ismount(tmp / "mnt")


def test_unreachable_server_on_first_start(config_dir):
    tmp, creds = config_dir
    p = write_config(tmp, f"mount: {tmp}/mnt\ncache: {tmp}/c\ncredentials: {creds}\nport: {free_port()}\n"
                          "timings:\n  request_timeout_s: 2\n"
                          "folders:\n  Documents: '\\\\127.0.0.1\\share\\a'\n")
    one_line_error(run_cscd("daemon", "--config", str(p)), 3, "cannot reach the server", "nothing is cached")
    assert not os.path.ismount(tmp / "mnt")


def test_hostile_server_name_refused(config_dir):
    tmp, creds = config_dir
    p = write_config(tmp, f"mount: {tmp}/mnt\ncache: {tmp}/c\ncredentials: {creds}\n"
                          "folders:\n  Documents: '\\\\../../etc\\share\\a'\n")
    one_line_error(run_cscd("daemon", "--config", str(p)), 2, f"{p}:5:", "folders.Documents")


def test_wrong_password_is_a_clear_error(smbd, tmp_path):
    creds = write_credentials(tmp_path / "creds", smbd.username, "not-the-password")
    (smbd.share_dir / "wrongpw").mkdir(exist_ok=True)
    p = write_config(tmp_path, f"mount: {tmp_path}/mnt\ncache: {tmp_path}/c\ncredentials: {creds}\n"
                               f"port: {smbd.port}\nfolders:\n  Documents: '{smbd.unc('wrongpw')}'\n")
    err = one_line_error(run_cscd("daemon", "--config", str(p)), 2, "access denied")
    assert "not-the-password" not in err


def test_the_password_can_come_from_a_systemd_credential(mount_env, tmp_path):
    """``credentials: systemd:NAME`` reads ``$CREDENTIALS_DIRECTORY/NAME`` (LoadCredential=),
    not the file the config named before."""
    env = mount_env(start=False, extra={"credentials": "systemd:cscd-smb"})
    creds_dir = tmp_path / "credentials.d"
    creds_dir.mkdir(mode=0o700)
    os.rename(env.credentials, creds_dir / "cscd-smb")
    (creds_dir / "cscd-smb").chmod(0o400)  # as systemd leaves it
    env.daemon.env["CREDENTIALS_DIRECTORY"] = str(creds_dir)
    (env.server / "from-server.txt").write_text("logged on with the systemd credential")
    env.start_daemon()
    assert (env.docs / "from-server.txt").read_text() == "logged on with the systemd credential"
    assert env.smbd.password not in env.daemon.log_text()


def test_already_mounted_mountpoint_refused(mount_env, tmp_path):
    env = mount_env()
    second = DaemonProcess(tmp_path, name="second", folders=env.daemon.folders, credentials=env.credentials,
                           port=env.proxy.port, mount=env.mount)
    result = run_cscd("daemon", "--config", str(second.config_path))
    one_line_error(result, 2, "already mounted")
    assert os.listdir(env.docs) == []  # the first mount still serves


@pytest.mark.log_allows(r"starts offline from its cache")
def test_starts_offline_from_cache_and_comes_back(mount_env):
    env = mount_env(start=False)
    (env.server / "kept.txt").write_text("cached")
    env.start_daemon()
    assert (env.docs / "kept.txt").read_text() == "cached"
    env.daemon.stop()
    env.proxy.stop_listening()  # the laptop boots away from the office
    env.start_daemon()
    assert (env.docs / "kept.txt").read_text() == "cached"
    (env.docs / "offline.txt").write_text("written offline")
    env.proxy.resume_listening()
    wait_for(lambda: (env.server / "offline.txt").exists(), 15, "offline change not uploaded after return",
             ignore=(OSError,))
    assert (env.server / "offline.txt").read_text() == "written offline"
    warnings = env.daemon.warnings()
    assert any("starts offline" in w for w in warnings), warnings


@pytest.mark.parametrize("user, needle", [("no-such-user-cscd", "--user no-such-user-cscd: no such user"),
                                          ("$PAM_USER", "no user name (is $PAM_USER set?")])
def test_a_user_that_cannot_be_found_is_one_line(user, needle):
    assert "PAM_USER" not in os.environ
    result = run_cscd("status", "--user", user)
    one_line_error(result, 2, needle)

"""The PAM snippet we ship (``policies/pam/cscd-session``) in a real PAM stack: pamtester
opens and closes a session of a throwaway PAM service, pam_exec runs ``cscd`` as root with a
bare environment and ``--user $PAM_USER``, and the user's daemon (listening under
``/run/user/UID``, as under systemd) pulls and pushes the roaming profile. Judged by the
outcome: the file is on the server and the daemon counted the logoff.
"""

from __future__ import annotations

import getpass
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.policy_env import PolicyEnv
from tests.helpers.wait import wait_for

REPO = Path(__file__).resolve().parents[1]
SNIPPET = REPO / "policies" / "pam" / "cscd-session"
CSCD = Path(os.sys.executable).parent / "cscd"

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("pamtester") is None,
                                reason="needs root (a service in /etc/pam.d) and pamtester")


@pytest.fixture
def run_user_dir() -> Iterator[Path]:
    """``/run/user/UID`` as logind makes it (0700, the user's), removed after if we made it."""
    path = Path(f"/run/user/{os.getuid()}")
    made = not path.exists()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        yield path
    finally:
        if made:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pam_service(penv: PolicyEnv, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A PAM service whose session lines are the snippet's, with this checkout's cscd and
    the test daemon's config; (its name, pam_exec's log)."""
    name = f"cscd-test-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "pam_exec.log"
    lines = ["auth required pam_permit.so", "account required pam_permit.so"]
    for line in SNIPPET.read_text().splitlines():
        if line.startswith("session"):
            line = line.replace("/usr/bin/cscd", str(CSCD)).replace("quiet", f"quiet log={log}")
            lines.append(f"{line} --config {penv.daemon.config_path}")
    assert len(lines) == 4, "the snippet has an open_session and a close_session line"
    service = Path("/etc/pam.d") / name
    service.write_text("\n".join(lines) + "\n")
    try:
        yield name, log
    finally:
        service.unlink()


def pamtester(service: str, *steps: str) -> None:
    import subprocess

    res = subprocess.run(["pamtester", "-v", service, getpass.getuser(), *steps],
                         capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_session_close_pushes_the_profile_of_pam_user(penv: PolicyEnv, run_user_dir: Path,
                                                          pam_service: tuple[str, Path]) -> None:
    service, log = pam_service
    server = penv.server_dir("Profile")
    server.mkdir(parents=True)
    penv.write_policy(f"- roaming_profile: {{target: '{penv.unc('Profile')}'}}\n")
    penv.daemon.env["XDG_RUNTIME_DIR"] = str(run_user_dir)
    penv.env.start_daemon()
    wait_for(lambda: any((run_user_dir / "cscd").glob("control*.sock")), 10,
             "the daemon does not listen under /run/user/UID")
    wait_for(lambda: penv.daemon.run_cli("status").returncode == 0, 10, "the daemon does not answer")

    pamtester(service, "open_session")
    text = log.read_text() if log.exists() else ""
    assert "cscd: waiting up to 120 s for the roaming profile" in text, text
    assert penv.status()["profile"]["logons"] == 1, "wait-logon waited for the start's pull, no second one"

    (penv.home / ".config" / "app").mkdir(parents=True)
    (penv.home / ".config" / "app" / "settings.ini").write_text("made in this session\n")
    pamtester(service, "close_session")
    assert (server / ".config/app/settings.ini").read_text() == "made in this session\n", log.read_text()
    wait_for(lambda: penv.status()["profile"]["logoffs"] == 1, 10, "the logoff was not counted")


@pytest.mark.log_allows(r"roaming profile: logon pull from .* did not run: ")
def test_the_required_line_refuses_a_logon_without_its_super_mandatory_profile(
        mount_env, tmp_path: Path, run_user_dir: Path) -> None:
    """The snippet's documented "required" open_session line, for a super-mandatory profile
    (a target folder named *.man) whose server is gone: pamtester's session open fails."""
    penv = PolicyEnv(mount_env, tmp_path, yaml_folders=False)
    required = next(line.lstrip("# ").strip() for line in SNIPPET.read_text().splitlines()
                    if line.lstrip("# ").startswith("session required"))
    log = tmp_path / "pam_exec.log"
    line = required.replace("/usr/bin/cscd", str(CSCD)).replace("quiet", f"quiet log={log}")
    name = f"cscd-test-{uuid.uuid4().hex[:8]}"
    service = Path("/etc/pam.d") / name
    service.write_text("auth required pam_permit.so\naccount required pam_permit.so\n"
                       f"{line.replace('--limit 120', '--limit 3')} --config {penv.daemon.config_path}\n")
    try:
        penv.server_dir("Corp.man").mkdir(parents=True)
        penv.write_policy(f"- roaming_profile: {{target: '{penv.unc('Corp.man')}'}}\n")
        penv.env.proxy.stop_listening()
        penv.env.proxy.reset()
        penv.daemon.env["XDG_RUNTIME_DIR"] = str(run_user_dir)
        penv.env.start_daemon()
        wait_for(lambda: penv.daemon.run_cli("status").returncode == 0, 10, "the daemon does not answer")
        import subprocess
        res = subprocess.run(["pamtester", "-v", name, getpass.getuser(), "open_session"],
                             capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
        assert res.returncode != 0, res.stdout + res.stderr
        text = log.read_text()
        assert "super-mandatory roaming profile" in text and "the logon is refused" in text, text
    finally:
        service.unlink()

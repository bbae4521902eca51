"""Mandatory and super-mandatory roaming profiles (issue 21, part 4), in the running daemon.

Real parts: the session smbd behind the test proxy, the daemon with a policy directory and a
home of its own (``PolicyEnv``). A mandatory profile comes down at logon, keeps the session's
changes for the session, pushes nothing at logoff, and the next logon puts the server's
profile back; a super-mandatory one (chosen by ``kind``, or by a target folder named ``*.man``
as on Windows) that cannot be loaded makes ``cscd profile wait-logon`` fail with one line,
so the PAM session refuses the logon. A mandatory profile with a background upload is a
policy mistake named by file, line and key.
"""

from __future__ import annotations

import textwrap

import pytest

from cscd.errors import ConfigError
from cscd.policy.machine import load_policy
from cscd.policy.model import Subject
from tests.helpers.policy_env import PolicyEnv, put
from tests.helpers.wait import wait_for

OLD = 1_600_000_000
ALICE = Subject("alice", ("staff",), "ws1.example.com", "0" * 32, "", "/home/alice")


def mandatory_policy(env, sub: str, kind: str | None) -> str:
    kind_line = f"\n            kind: {kind}" if kind else ""
    return f"""
        - roaming_profile:
            target: '{env.unc(sub)}'{kind_line}
        """


def test_a_mandatory_profile_discards_the_sessions_changes(penv):
    server = penv.server_dir("Mandatory")
    put(server, ".config/app/settings.ini", b"theme=corporate\n", OLD)
    put(server, ".bashrc", b"# the admin's\n", OLD)
    penv.write_policy(mandatory_policy(penv, "Mandatory", "mandatory"))
    penv.start()
    settings = penv.home / ".config/app/settings.ini"
    wait_for(lambda: settings.is_file(), 30, "the mandatory profile was not pulled at start")
    assert penv.cli("policy", "show")["rows"][-1] == {"key": "roaming_profile.kind", "value": "mandatory",
                                                       "origin": f"{penv.policy_dir / 'policy.yaml'}:3"}
    # the session changes things: they stay for the session
    settings.write_bytes(b"theme=mine\n")
    put(penv.home, ".config/app/new.ini", b"mine too\n")
    (penv.home / ".bashrc").unlink()
    report = penv.cli("profile", "logoff")
    assert report["result"] == "finished" and report["files"] == 0 and report["deleted"] == 0
    assert settings.read_bytes() == b"theme=mine\n"  # still there for this session
    # the server never saw them
    assert (server / ".config/app/settings.ini").read_bytes() == b"theme=corporate\n"
    assert not (server / ".config/app/new.ini").exists() and (server / ".bashrc").is_file()
    # the next logon brings the server's profile back over them
    penv.cli("profile", "logon")
    assert settings.read_bytes() == b"theme=corporate\n"
    assert not (penv.home / ".config/app/new.ini").exists()
    assert (penv.home / ".bashrc").read_bytes() == b"# the admin's\n"
    penv.daemon.stop()  # and stopping pushes nothing either
    assert not (server / ".config/app/new.ini").exists()


@pytest.mark.log_allows(r"roaming profile: logon pull from .* did not run: ")
def test_a_super_mandatory_profile_that_cannot_load_refuses_the_logon(mount_env, tmp_path):
    penv = PolicyEnv(mount_env, tmp_path, yaml_folders=False)  # no folder: a start without the server
    server = penv.server_dir("Corp.man")  # a folder named *.man: super-mandatory, as on Windows
    put(server, ".bashrc", b"# corporate\n", OLD)
    penv.write_policy(mandatory_policy(penv, "Corp.man", None))
    penv.env.proxy.stop_listening()  # the server is gone when the session starts
    penv.env.proxy.reset()
    penv.start()
    result = penv.daemon.run_cli("profile", "wait-logon", "--limit", "5", timeout_s=60)
    assert result.returncode == 5, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "super-mandatory roaming profile" in lines[0] and "logon is refused" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (penv.home / ".bashrc").exists()


@pytest.mark.log_allows(r"roaming profile: logon pull from .* did not run: ")
def test_an_ordinary_profile_that_cannot_load_lets_the_session_start(mount_env, tmp_path):
    penv = PolicyEnv(mount_env, tmp_path, yaml_folders=False)
    penv.write_policy(mandatory_policy(penv, "Plain", None))
    penv.server_dir("Plain").mkdir(parents=True)
    penv.env.proxy.stop_listening()
    penv.env.proxy.reset()
    penv.start()
    result = penv.daemon.run_cli("profile", "wait-logon", "--limit", "3", timeout_s=60)
    assert result.returncode == 0, (result.stdout, result.stderr)


def test_a_mandatory_profile_with_a_background_upload_is_refused(tmp_path):
    root = tmp_path / "policy"
    root.mkdir()
    (root / "policy.yaml").write_text(textwrap.dedent(r"""
        - roaming_profile:
            target: '\\srv\profiles\%USERNAME%'
            kind: mandatory
            background_upload: {interval_hours: 4}
        """).lstrip())
    with pytest.raises(ConfigError) as exc:
        load_policy(ALICE, root)
    assert str(exc.value).startswith(f"{root / 'policy.yaml'}:4: roaming_profile.background_upload: ")
    assert f"{root / 'policy.yaml'}:3: roaming_profile.kind" in str(exc.value)
    (root / "policy.yaml").write_text("- roaming_profile: {kind: mandatroy}\n")
    with pytest.raises(ConfigError) as exc:
        load_policy(ALICE, root)
    assert f"{root / 'policy.yaml'}:1" in str(exc.value) and "roaming_profile.kind" in str(exc.value)

"""The roaming profile in the running daemon: pulled at start, pushed by ``cscd profile
logoff`` and at stop, shown in ``cscd status``, steered by the ``roaming_profile`` policy keys.

Real parts only: the session smbd behind the ``MountEnv``'s TCP proxy, the daemon in a
subprocess with a policy directory and a home directory of its own, plain file I/O on both
sides. ``tests/test_profile.py`` covers the merge rules themselves against the same smbd.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.helpers.fake_logind import FakeLogind
from tests.helpers.policy_env import PolicyEnv, put
from tests.helpers.wait import wait_for

OLD = 1_600_000_000  # an mtime well in the past: the server's files are older than any edit


def roaming_policy(env: PolicyEnv, sub: str = "Profile", extra: str = "") -> str:
    return f"""
        - roaming_profile:
            target: '{env.unc(sub)}'
            exclude_patterns: ['*.log']
        {extra}"""


def test_profile_roams_at_start_on_logoff_and_at_stop(penv):
    server = penv.server_dir("Profile")
    put(server, ".config/app/settings.ini", b"theme=dark\n", OLD)
    put(server, ".bashrc", b"alias ll='ls -l'\n", OLD)
    put(server, ".cache/thumbs/a.png", b"never roams", OLD)
    put(penv.home, ".config/editor/init.vim", b"set number\n")
    penv.write_policy(roaming_policy(penv))
    penv.start()

    # logon at start: the server's profile comes down by itself, excluded paths do not
    wait_for(lambda: (penv.home / ".config/app/settings.ini").is_file(), 30, "profile not pulled at start")
    assert (penv.home / ".bashrc").read_bytes() == b"alias ll='ls -l'\n"
    assert not (penv.home / ".cache").exists()
    wait_for(lambda: penv.status()["profile"]["logons"] == 1, 10, "logon not counted")
    status = penv.status()["profile"]
    assert status["target"].endswith("\\Profile") and status["background_upload"] is False

    # cscd profile logoff pushes local files now; a policy pattern keeps *.log at home
    put(penv.home, ".config/editor/session.log", b"local only")
    put(penv.home, ".local/share/app/history", b"h" * 70_000)
    report = penv.cli("profile", "logoff")
    assert report["result"] == "finished" and report["errors"] == []
    assert (server / ".config/editor/init.vim").read_bytes() == b"set number\n"
    assert (server / ".local/share/app/history").read_bytes() == b"h" * 70_000
    assert not (server / ".config/editor/session.log").exists()
    names = [e["name"] for e in penv.cli("events")["events"]]
    assert "PROFILE_UPLOAD_STARTED" in names and "PROFILE_UPLOAD_FINISHED" in names

    # stopping the daemon (the session ends) pushes what changed since
    (penv.home / ".bashrc").write_bytes(b"alias ll='ls -la'\n")
    penv.daemon.stop()
    assert (server / ".bashrc").read_bytes() == b"alias ll='ls -la'\n"


def start_roaming(env: PolicyEnv) -> Path:
    """Start with an empty server profile and wait for the logon pull; the server folder."""
    server = env.server_dir("Profile")
    server.mkdir(parents=True)
    env.write_policy(roaming_policy(env))
    env.start()
    wait_for(lambda: env.status()["profile"]["logons"] == 1, 30, "logon did not run")
    return server


def test_first_logon_creates_the_profile_folder_on_the_server(penv):
    server = penv.server_dir("NewProfile")
    server.parent.mkdir(parents=True, exist_ok=True)
    assert not server.exists()
    put(penv.home, ".gitconfig", b"[user]\n\tname = A\n")
    penv.write_policy(roaming_policy(penv, "NewProfile"))
    penv.start()
    wait_for(lambda: server.is_dir(), 30, "the profile folder was not created")
    plain = penv.daemon.run_cli("profile", "logoff")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.startswith("logoff: 1 files (17 bytes) pushed"), plain.stdout
    assert (server / ".gitconfig").read_bytes() == b"[user]\n\tname = A\n"


def test_background_upload_follows_a_reloaded_policy(penv):
    start_roaming(penv)
    assert penv.status()["profile"]["next_upload_in_s"] is None

    penv.write_policy(roaming_policy(penv, extra="""
        - roaming_profile:
            background_upload: {interval_hours: 1, max_offset_min: 0}
        """))
    answer = penv.cli("reload")
    assert "roaming_profile.background_upload" in answer["applied"]
    status = penv.status()["profile"]
    assert status["background_upload"] is True
    assert 3500 < status["next_upload_in_s"] <= 3600
    plain = penv.daemon.run_cli("status").stdout
    assert "roaming profile: " in plain and "next background upload in 60 min" in plain, plain


def test_background_upload_true_runs_on_the_default_12_hour_schedule(penv):
    """``background_upload: true`` (it used to be refused): every 12 h plus up to an hour."""
    penv.write_policy(roaming_policy(penv, extra="""
        - roaming_profile:
            background_upload: true
        """))
    penv.start()
    status = penv.status()["profile"]
    assert status["background_upload"] is True
    assert 12 * 3600 - 60 < status["next_upload_in_s"] <= 13 * 3600, status


@pytest.mark.log_allows(r"profile upload failed",
                        r"logoff push did not finish",
                        r"sync of Documents did not finish",
                        r"Documents is now offline")
def test_profile_logoff_with_the_server_gone_fails_and_keeps_the_files(penv):
    server = start_roaming(penv)
    put(penv.home, ".config/app/new.ini", b"made while the server is gone")
    penv.env.proxy.stop_listening()
    penv.env.proxy.reset()
    error = penv.cli("profile", "logoff", code=5)["error"]
    assert error["code"] == "unavailable" and "nothing was lost" in error["message"]
    assert (penv.home / ".config/app/new.ini").read_bytes() == b"made while the server is gone"
    assert not (server / ".config/app/new.ini").exists()
    # the stop's own logoff push fails too, and says so
    penv.daemon.stop()


def test_nothing_roams_on_a_computer_that_is_not_primary(penv):
    server = penv.server_dir("Profile")
    put(server, ".config/app/settings.ini", b"theme=dark\n", OLD)
    put(penv.home, ".bashrc", b"local\n")
    penv.write_policy(roaming_policy(penv, extra="""
        - primary_computers: [some-other-workstation]
        """))
    penv.start()
    assert penv.status()["profile"] is None
    error = penv.cli("profile", "logoff", code=5)["error"]
    assert error["code"] == "not_configured" and "not one of" in error["message"]
    penv.daemon.stop()
    assert not (penv.home / ".config/app").exists()
    assert sorted(p.name for p in server.rglob("*")) == [".config", "app", "settings.ini"]  # no .bashrc


REDIRECTIONS = """<?xml version="1.0" encoding="UTF-8"?>
<FrxProfileFolderRedirection ExcludeCommonFolders="0">
  <Excludes>
    <Exclude Copy="0">.config\\vendor\\scratch</Exclude>
    <Exclude Copy="1">.config\\vendor\\session</Exclude>
    <Exclude Copy="3">.config\\vendor\\outbox</Exclude>
  </Excludes>
  <Includes>
    <Include>.config\\vendor\\scratch\\keep</Include>
  </Includes>
</FrxProfileFolderRedirection>
"""


def _files(root: Path, below: str) -> set[str]:
    base = root / below
    return {p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()} if base.is_dir() else set()


def _fslogix_profile(penv, xml_line: str) -> Path:
    server = penv.server_dir("Profile")
    put(server, ".config/vendor/session/s.dat", b"session state", OLD)
    put(server, ".config/vendor/outbox/o.dat", b"queued mail", OLD)
    put(server, ".config/app/settings.ini", b"theme=dark\n", OLD)
    penv.write_policy(roaming_policy(penv, extra=xml_line))
    penv.start()
    wait_for(lambda: penv.status()["profile"]["logons"] == 1, 30, "logon did not run")
    return server


def _sign_out_and_in(penv, server: Path) -> None:
    """The seed's Copy values through a real logoff and logon pair."""
    home = penv.home
    assert _files(home, ".config/vendor/session") == {"s.dat"}  # Copy 1: filled at sign-in
    assert _files(home, ".config/vendor/outbox") == {"o.dat"}  # Copy 3: filled at sign-in
    assert (home / ".config/vendor/scratch").is_dir()  # Copy 0: an empty folder
    put(home, ".config/vendor/scratch/tmp.bin", b"scratch data")
    put(home, ".config/vendor/scratch/keep/notes.txt", b"an Include: roams")
    put(home, ".config/vendor/session/new.dat", b"lost at sign-out")
    put(home, ".config/vendor/outbox/new.dat", b"copied back at sign-out")
    put(home, ".config/app/mine.ini", b"roams as usual")

    answer = penv.cli("profile", "logoff")
    assert sorted(answer["dropped"]) == [".config\\vendor\\outbox", ".config\\vendor\\scratch",
                                         ".config\\vendor\\session"], answer
    assert _files(server, ".config/vendor/outbox") == {"o.dat", "new.dat"}
    assert _files(server, ".config/vendor/session") == {"s.dat"}
    assert not (server / ".config/vendor/scratch/tmp.bin").exists()
    assert (server / ".config/vendor/scratch/keep/notes.txt").read_bytes() == b"an Include: roams"
    assert (server / ".config/app/mine.ini").read_bytes() == b"roams as usual"
    assert _files(home, ".config/vendor/session") == set()
    assert _files(home, ".config/vendor/outbox") == set()
    assert _files(home, ".config/vendor/scratch") == {"keep/notes.txt"}
    assert (home / ".config/app/mine.ini").read_bytes() == b"roams as usual"

    penv.cli("profile", "logon")
    assert _files(home, ".config/vendor/session") == {"s.dat"}  # new.dat was lost, as FSLogix says
    assert _files(home, ".config/vendor/outbox") == {"o.dat", "new.dat"}
    assert _files(home, ".config/vendor/scratch") == {"keep/notes.txt"}
    penv.cli("profile", "logoff")  # what the sign-out dropped was no deletion: the profile keeps it
    assert _files(server, ".config/vendor/session") == {"s.dat"}
    assert _files(server, ".config/vendor/outbox") == {"o.dat", "new.dat"}


def test_fslogix_copy_values_decide_what_a_sign_out_keeps(penv, tmp_path):
    xml = tmp_path / "redirections.xml"
    xml.write_text(REDIRECTIONS)
    server = _fslogix_profile(penv, f"- roaming_profile: {{redirections_xml: '{xml}'}}")
    _sign_out_and_in(penv, server)


def test_the_central_redirections_xml_is_named_central(penv):
    """``redirections_xml: central`` reads the central source's copy (no cache path to write)."""
    folder = penv.server_dir("central")
    folder.mkdir(parents=True)
    (folder / "redirections.xml").write_text(REDIRECTIONS)
    server = _fslogix_profile(penv, f"- central_source: '{penv.unc('central')}'\n"
                                    "          roaming_profile: {redirections_xml: central}")
    _sign_out_and_in(penv, server)


def test_a_daemon_stop_is_not_a_sign_out(penv, tmp_path):
    """Only ``cscd profile logoff`` signs out: a stop (a restart, an update) pushes and drops
    nothing local."""
    xml = tmp_path / "redirections.xml"
    xml.write_text(REDIRECTIONS)
    _fslogix_profile(penv, f"- roaming_profile: {{redirections_xml: '{xml}'}}")
    put(penv.home, ".config/vendor/session/new.dat", b"kept over a restart")
    penv.daemon.stop()
    assert (penv.home / ".config/vendor/session/new.dat").read_bytes() == b"kept over a restart"
    assert _files(penv.home, ".config/vendor/session") == {"s.dat", "new.dat"}


def test_the_session_start_waits_for_the_logon_pull_but_not_forever(penv):
    """``cscd profile wait-logon`` (the cscd-logon unit, before the desktop) waits for the pull
    the daemon started; past its limit the session goes on with the cached profile. It never
    pulls a second time."""
    server = penv.server_dir("Profile")
    for i in range(20):
        put(server, f".config/app{i:02d}/settings.ini", f"n={i}\n".encode(), OLD)
    penv.write_policy(roaming_policy(penv))
    penv.env.proxy.delay_s = 0.25  # each round trip 0.5 s: the pull takes a while
    penv.start()
    early = penv.cli("profile", "wait-logon", "--limit", "0.2")
    assert early["result"] == "timed_out", early
    assert "starts on the cached profile" in early["message"]
    penv.env.proxy.delay_s = 0.0
    text = penv.daemon.run_cli("profile", "wait-logon", "--limit", "60")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == "cscd: waiting up to 60 s for the roaming profile"
    assert lines[1].startswith("cscd: roaming profile from ") and "up to date: 20 files" in lines[1], lines
    for i in range(20):
        assert (penv.home / f".config/app{i:02d}/settings.ini").read_bytes() == f"n={i}\n".encode()
    assert penv.status()["profile"]["logons"] == 1  # the start's pull only
    again = penv.cli("profile", "wait-logon", "--limit", "0")
    assert again["result"] == "finished" and again["files"] == 20


def test_with_linger_the_profile_goes_up_when_the_last_session_ends(penv, tmp_path):
    """The daemon outlives the session (``loginctl enable-linger``): logind's SessionRemoved for
    the user's last session is the logoff, pushed under a delay inhibitor lock."""
    uid = os.getuid()
    logind = FakeLogind(tmp_path / "bus", [("1", uid, "me", "seat0", "/org/freedesktop/login1/session/_31"),
                                           ("2", uid, "me", "", "/org/freedesktop/login1/session/_32")])
    try:
        penv.daemon.extra["logind_dbus"] = logind.address
        penv.daemon.write_config()
        server = start_roaming(penv)
        put(penv.home, ".config/app/after-logon.ini", b"made in the session")
        logind.end_session("2")  # one session of the user is left: not a logoff
        time.sleep(1.5)
        assert not (server / ".config/app/after-logon.ini").exists()
        assert logind.inhibits == []
        logind.end_session("1")
        wait_for(lambda: (server / ".config/app/after-logon.ini").exists(), 20,
                 "the profile did not go up when the last session ended")
        assert (server / ".config/app/after-logon.ini").read_bytes() == b"made in the session"
        assert logind.inhibits == [("shutdown:sleep", "cscd", "uploading the roaming profile", "delay")]
        wait_for(lambda: logind.lock_released(0), 10, "the inhibitor lock was not released after the push")
        assert penv.daemon.is_running()  # the daemon lives on, as linger wants
    finally:
        logind.close()

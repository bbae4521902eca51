r"""Machine policy in the running daemon: refused at start when invalid, shown with file:line,
reloaded live (or kept when broken), scoped by group, and folder redirection through the
real mount — content moved in (also with the server down), primary computers, both removal
actions.

Real parts only: the session smbd, the daemon in a subprocess on a ``MountEnv`` (its TCP
proxy breaks the link), a temporary ``policy_dir`` and ``home``. The tests run as root, so
scopes use the group ``root`` against a group root is not in. Every warning the daemon logs
must be one the test expects (``log_allows``). ``PolicyEnv`` and its helpers live in
``tests/helpers/policy_env.py``; ``penv`` is a fixture of ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from cscd.redirect import USER_DIRS
from tests.helpers.daemon import run_cscd
from tests.helpers.fake_sssd import FakeInfoPipe
from tests.helpers.policy_env import FILES, PolicyEnv, documents_policy, fill, redirect_documents, tree
from tests.helpers.wait import wait_for

OTHER_GROUP = "cscd-test-nobody-is-in-this-group"


@pytest.fixture
def penv_policy_folders_only(mount_env, tmp_path: Path) -> PolicyEnv:
    """The daemon's YAML names no folder: everything mounted comes from the policy."""
    return PolicyEnv(mount_env, tmp_path, yaml_folders=False)


# ---------------------------------------------------------------- start, show, scope


def test_daemon_refuses_invalid_policy_with_file_line_key(penv):
    bad = penv.write_policy("""
        - offline_files:
            slow_link_ms: 0
        """, name="policy.d/20-lab.yaml")
    result = run_cscd("daemon", "--config", str(penv.daemon.config_path), timeout_s=30)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("cscd: ")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"cscd: {bad}:2: offline_files.slow_link_ms: "), errors[0]
    assert not penv.daemon.is_mounted()


def test_policy_show_gives_each_key_with_its_file_and_line(penv):
    path = penv.write_policy("""
        # site defaults
        - offline_files:
            slow_link_ms: 80
            background_sync_interval_min: 30
        """)
    penv.start()
    shown = penv.cli("policy", "show")
    rows = {r["key"]: r for r in shown["rows"]}
    assert rows["offline_files.slow_link_ms"] == {"key": "offline_files.slow_link_ms", "value": "80",
                                                  "origin": f"{path}:3"}
    assert rows["offline_files.background_sync_interval_min"]["origin"] == f"{path}:4"
    assert rows["offline_files.always_offline"] == {"key": "offline_files.always_offline", "value": "false",
                                                    "origin": "default"}
    assert shown["files"] == [str(path)] and shown["is_primary_computer"] is True
    assert shown["user"] == "root" and "root" in shown["groups"]
    plain = penv.daemon.run_cli("policy", "show")
    assert plain.returncode == 0, plain.stderr
    line = next(li for li in plain.stdout.splitlines() if li.startswith("offline_files.slow_link_ms "))
    assert line.split() == ["offline_files.slow_link_ms", "80", f"{path}:3"]


@pytest.mark.parametrize("root_gets", ["A", "B"])
def test_scoped_policy_gives_each_group_its_target(penv, root_gets):
    """Block for the group root → its target; the block for a group root is not in is ignored,
    whichever order the blocks come in."""
    for sub in ("A", "B"):
        penv.server_dir(sub).mkdir(parents=True)
    other = "B" if root_gets == "A" else "A"
    penv.write_policy(f"""
        - scope: {{groups: [root]}}
          folders:
            Documents: {{target: '{penv.unc(root_gets)}'}}
        - scope: {{groups: [{OTHER_GROUP}]}}
          folders:
            Documents: {{target: '{penv.unc(other)}'}}
        """)
    penv.start()
    (penv.mount / "Documents" / "where.txt").write_text("which target?")
    wait_for(lambda: (penv.server_dir(root_gets) / "where.txt").exists(), 15,
             f"file not uploaded to target {root_gets}")
    assert not (penv.server_dir(other) / "where.txt").exists()
    assert not (penv.server_dir("Documents") / "where.txt").exists()  # the YAML's target lost
    rows = {r["key"]: r for r in penv.cli("policy", "show")["rows"]}
    assert rows["folders.Documents.target"]["value"].endswith(f"\\{root_gets}")


def test_targets_by_group_picks_the_first_group_the_user_is_in(penv):
    for sub in ("A", "B"):
        penv.server_dir(sub).mkdir(parents=True)
    penv.write_policy(f"""
        - folders:
            Documents:
              targets_by_group:
                - {{group: {OTHER_GROUP}, target: '{penv.unc("A")}'}}
                - {{group: root, target: '{penv.unc("B")}'}}
        """)
    penv.start()
    (penv.mount / "Documents" / "where.txt").write_text("B, by group")
    wait_for(lambda: (penv.server_dir("B") / "where.txt").exists(), 15, "file not uploaded to B")
    assert not (penv.server_dir("A") / "where.txt").exists()


# ---------------------------------------------------------------- reload


@pytest.mark.log_allows(r"policy rejected")
def test_reload_with_a_broken_file_keeps_the_last_good_policy(penv):
    path = penv.write_policy("""
        - offline_files:
            slow_link_ms: 80
        """)
    penv.start()
    path.write_text("- offline_files:\n    slow_link_ms: fast\n")
    error = penv.cli("reload", code=5)["error"]
    assert error["code"] == "policy_rejected"
    assert f"{path}:2: offline_files.slow_link_ms: " in error["message"]
    assert "last good policy" in error["message"]
    rows = {r["key"]: r for r in penv.cli("policy", "show")["rows"]}
    assert rows["offline_files.slow_link_ms"]["value"] == "80"
    assert rows["offline_files.slow_link_ms"]["origin"] == f"{path}:2"

    os.kill(penv.daemon.pid, signal.SIGHUP)  # the same by signal

    def rejected():
        return [e for e in penv.cli("events")["events"] if e["name"] == "POLICY_REJECTED"]

    events = wait_for(lambda: len(rejected()) == 2 and rejected(), 10, "no POLICY_REJECTED for SIGHUP")
    assert events[0]["fields"]["file"] == str(path) and events[0]["fields"]["line"] == "2"
    assert events[0]["fields"]["key"] == "offline_files.slow_link_ms"
    assert penv.status()["folders"]["Documents"]["mode"] == "online"


def test_reload_applies_a_new_slow_link_threshold_live(penv):
    path = penv.write_policy("- offline_files: {slow_link_ms: 5000}\n")
    penv.env.proxy.delay_s = 0.03  # about 60 ms round trip
    penv.start()

    def mode():
        return penv.status()["folders"]["Documents"]["mode"]

    wait_for(lambda: penv.status()["folders"]["Documents"]["rtt_ms"] is not None, 10, "no probe yet")
    assert mode() == "online"
    path.write_text("- offline_files: {slow_link_ms: 20}\n")
    answer = penv.cli("reload")
    assert answer["reloaded"] is True
    assert answer["changed"] == ["offline_files.slow_link_ms"]
    assert answer["applied"] == ["offline_files.slow_link_ms"] and answer["restart_needed"] == []
    wait_for(lambda: mode() == "slow_link", 15, "the new threshold was not applied")
    rows = {r["key"]: r for r in penv.cli("policy", "show")["rows"]}
    assert rows["offline_files.slow_link_ms"]["value"] == "20"


def test_the_upload_cap_of_the_policy_holds_uploads_to_its_rate(penv):
    # offline_files.upload_cap_kibps: the push sets it on the folder's upstream each round,
    # and the worker processes that send the file pace every MiB by it.
    path = penv.write_policy("- offline_files: {upload_cap_kibps: 1024}\n")
    penv.start()
    data = os.urandom(4 << 20)
    on_server = penv.server_dir() / "capped.bin"
    t0 = time.monotonic()
    (penv.mount / "Documents" / "capped.bin").write_bytes(data)
    wait_for(lambda: on_server.exists() and on_server.read_bytes() == data, 60, "capped.bin never arrived")
    took = time.monotonic() - t0
    # a second's worth at once, then 1 MiB/s: 4 MiB take at least 3 s (uncapped: well under 1 s)
    assert took >= 2.8, f"4 MiB under a 1,024 KiB/s cap arrived after {took:.2f} s"
    path.write_text("- offline_files: {upload_cap_kibps: 0}\n")
    assert "offline_files.upload_cap_kibps" in penv.cli("reload")["applied"]
    rows = {r["key"]: r for r in penv.cli("policy", "show")["rows"]}
    assert rows["offline_files.upload_cap_kibps"]["value"] == "0"


def test_per_path_latency_of_1_ms_makes_the_folders_under_it_always_offline(penv):
    """Windows configures Always Offline as *Configure slow-link mode* with a 1 ms latency for
    a UNC path; the same entry here puts the folders under it in always_offline, and a reload
    without it brings them back online."""
    penv.write_policy(f"""
        - offline_files:
            per_path:
              - {{path: '\\\\elsewhere\\share\\*', slow_link_ms: 500}}
              - {{path: '{penv.smbd.unc(penv.env.user_dir)}\\*', slow_link_ms: 1}}
        """)
    penv.start()
    docs = penv.cli("status")["folders"]["Documents"]
    assert docs["mode"] == "always_offline" and "1 ms" in docs["reason"], docs
    (penv.mount / "Documents" / "local.txt").write_text("served from the cache")
    assert (penv.mount / "Documents" / "local.txt").read_text() == "served from the cache"
    penv.write_policy("- offline_files: {always_offline: false}\n")
    assert "offline_files.per_path" in penv.cli("reload")["applied"]
    wait_for(lambda: penv.cli("status")["folders"]["Documents"]["mode"] == "online", 15,
             "the folder did not come back online after the per-path entry went")


def test_reload_of_a_folder_change_asks_for_a_restart(penv):
    penv.server_dir("A").mkdir(parents=True)
    path = penv.write_policy("- offline_files: {always_offline: false}\n")
    penv.start()
    path.write_text(f"- folders:\n    Documents: {{target: '{penv.unc('A')}'}}\n")
    answer = penv.cli("reload")
    assert answer["reloaded"] is True and "folders.Documents.target" in answer["restart_needed"]
    assert "restart cscd" in answer["message"]
    assert "RELOADED" in [e["name"] for e in penv.cli("events")["events"]]


# ---------------------------------------------------------------- redirection


def test_redirect_documents_moves_everything_to_the_server(penv):
    want = fill(penv.home / "Documents", FILES)
    penv.write_policy(documents_policy(penv))
    penv.start()
    result = penv.wait_redirection()
    assert result["state"] == "done" and result["folders"]["Documents"]["done"], result
    wait_for(lambda: tree(penv.server_dir()) == want, 30, "not every file reached the server")
    assert tree(penv.mount / "Documents") == want
    assert penv.user_dirs()["XDG_DOCUMENTS_DIR"] == penv.mount / "Documents"
    local = penv.home / "Documents"
    assert local.is_symlink() and local.resolve() == (penv.mount / "Documents").resolve()
    assert penv.record()["Documents"]["removal_action"] == "leave"


@pytest.mark.log_allows(r"starts offline from its cache")
def test_redirect_with_the_server_down_loses_nothing(penv):
    # A first start lists the folder, so that a later start may begin offline from the cache.
    penv.start()
    assert os.listdir(penv.mount / "Documents") == []
    penv.daemon.stop()

    want = fill(penv.home / "Documents", FILES)
    penv.write_policy(documents_policy(penv))
    penv.env.proxy.stop_listening()
    penv.start()
    assert penv.status()["folders"]["Documents"]["mode"] == "offline"
    result = penv.wait_redirection()
    assert result["folders"]["Documents"]["done"], result
    assert tree(penv.mount / "Documents") == want
    assert penv.user_dirs()["XDG_DOCUMENTS_DIR"] == penv.mount / "Documents"
    assert not (penv.home / "Documents").resolve().is_relative_to(penv.home)
    assert tree(penv.server_dir()) == {}
    assert penv.status()["folders"]["Documents"]["pending_changes"] >= len(FILES)

    penv.env.proxy.resume_listening()
    wait_for(lambda: tree(penv.server_dir()) == want, 30, "moved files not uploaded when the server came back")


def test_not_a_primary_computer_redirects_nothing(penv):
    want = fill(penv.home / "Documents", FILES)
    penv.write_policy(documents_policy(penv, extra="- primary_computers: [cscd-some-other-host]"))
    penv.start()
    assert os.listdir(penv.mount) == []
    status = penv.status()
    assert status["is_primary_computer"] is False and status["folders"] == {}
    assert status["redirection"]["state"] == "none"
    assert penv.cli("policy", "show")["is_primary_computer"] is False
    assert tree(penv.home / "Documents") == want and not (penv.home / "Documents").is_symlink()
    assert not (penv.home / USER_DIRS).exists()
    assert tree(penv.server_dir()) == {}
    assert "is not one of root's primary computers" in penv.daemon.log_text()


def test_removal_leave_keeps_the_data_on_the_server(penv_policy_folders_only):
    env = penv_policy_folders_only
    want = redirect_documents(env, "leave")
    env.write_policy("- offline_files: {always_offline: false}\n")  # Documents no longer named
    env.start()
    result = env.wait_redirection()
    assert result["folders"]["Documents"]["step"] == "remove_leave", result
    assert result["folders"]["Documents"]["done"], result
    local = env.home / "Documents"
    assert local.is_dir() and not local.is_symlink() and os.listdir(local) == []
    assert env.user_dirs()["XDG_DOCUMENTS_DIR"] == local
    assert tree(env.server_dir()) == want
    assert "Documents" not in env.record()


def test_removal_redirect_back_copies_the_content_home(penv_policy_folders_only):
    env = penv_policy_folders_only
    want = redirect_documents(env, "redirect_back")
    env.write_policy("- offline_files: {always_offline: false}\n")
    env.start()
    result = env.wait_redirection()
    assert result["folders"]["Documents"]["step"] == "remove_redirect_back", result
    assert result["folders"]["Documents"]["done"], result
    local = env.home / "Documents"
    assert local.is_dir() and not local.is_symlink()
    assert tree(local) == want
    assert env.user_dirs()["XDG_DOCUMENTS_DIR"] == local
    assert tree(env.server_dir()) == want  # the server copy stays
    assert "Documents" not in env.record()


def test_leaving_the_primary_computers_brings_the_folder_back(penv_policy_folders_only):
    env = penv_policy_folders_only
    want = redirect_documents(env, "redirect_back")
    env.write_policy(documents_policy(env, removal_action="redirect_back",
                                      extra="- primary_computers: [cscd-some-other-host]"))
    env.start()
    result = env.wait_redirection()
    assert result["folders"]["Documents"]["done"], result
    assert tree(env.home / "Documents") == want and not (env.home / "Documents").is_symlink()
    assert env.user_dirs()["XDG_DOCUMENTS_DIR"] == env.home / "Documents"
    assert env.status()["is_primary_computer"] is False



@pytest.mark.parametrize("listed", [True, False], ids=["this-host-listed", "another-host-listed"])
def test_primary_computers_from_the_directory(penv, tmp_path, listed):
    """``primary_computers: directory``: the user's msDS-PrimaryComputer, through SSSD's
    InfoPipe (a stand-in on a private bus). Listed, the folders are mounted; not listed,
    the mount stays empty and ``policy show`` names the directory's computers."""
    host = socket.gethostname().split(".", 1)[0]
    dn = f"CN={host.upper() if listed else 'WS-ELSEWHERE'},OU=Workstations,DC=corp,DC=example"
    ipa = FakeInfoPipe(tmp_path / "sssd-bus", [dn])
    try:
        penv.daemon.extra["directory_dbus"] = ipa.address
        penv.write_policy("- primary_computers: directory\n")
        penv.start()
        assert ipa.asked, "SSSD was never asked"
        rows = {r["key"]: r["value"] for r in penv.cli("policy", "show")["rows"]}
        assert rows["primary_computers"] == f"directory: {host.upper() if listed else 'WS-ELSEWHERE'}"
        assert sorted(os.listdir(penv.mount)) == (["Documents"] if listed else [])
        penv.daemon.stop()
    finally:
        ipa.close()

r"""The central policy source in the running daemon: copied from the server at start and on
reload, shown with its central origin, the last copy used while the server is away, an
invalid central file refused like a local one.

Real parts only: the session smbd holds the central folder (``CENTRAL``), the daemon runs in a
subprocess behind the ``MountEnv``'s TCP proxy (which takes the server away), and the local
policy names the source with ``central_source``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.policy_env import PolicyEnv


def central(env: PolicyEnv, text: str, name: str = "10-site.yaml") -> Path:
    """Write one file into the central folder on the server; returns its local copy's path."""
    folder = env.server_dir("central")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    env.write_policy(f"- central_source: '{env.unc('central')}'\n")
    return env.daemon.cache / "central-policy" / name


def shown(env: PolicyEnv) -> dict[str, dict]:
    return {r["key"]: r for r in env.cli("policy", "show")["rows"]}


def test_a_central_key_is_shown_with_its_central_origin_and_follows_reload(penv):
    copy = central(penv, "# central defaults\n- offline_files: {slow_link_ms: 77}\n")
    penv.start()
    row = shown(penv)["offline_files.slow_link_ms"]
    assert row["value"] == "77"
    assert row["origin"] == f"{copy}:2 (central: {penv.unc('central')})"
    assert penv.cli("policy", "show")["central"]["state"] == "copied"
    assert copy.stat().st_mode & 0o777 == 0o444  # used read-only

    (penv.server_dir("central") / "10-site.yaml").write_text("- offline_files: {slow_link_ms: 88}\n")
    answer = penv.cli("reload")
    assert answer["applied"] == ["offline_files.slow_link_ms"], answer
    assert shown(penv)["offline_files.slow_link_ms"]["value"] == "88"
    assert penv.cli("reload")["changed"] == []  # unchanged on the server: nothing read again
    assert penv.cli("policy", "show")["central"]["state"] == "unchanged"


@pytest.mark.log_allows(r"central policy .*: not copied .* the last copy stays in force",
                        r"starts offline from its cache")
def test_server_down_at_start_uses_the_last_copy(penv):
    central(penv, "- offline_files: {slow_link_ms: 66}\n")
    penv.start()
    assert shown(penv)["offline_files.slow_link_ms"]["value"] == "66"
    os.listdir(penv.mount / "Documents")  # listed once: the next start may begin offline
    penv.daemon.stop()

    penv.env.proxy.stop_listening()
    penv.start()
    assert shown(penv)["offline_files.slow_link_ms"]["value"] == "66"
    state = penv.cli("policy", "show")["central"]
    assert state["state"] == "unreachable" and state["last_copy"] is True


@pytest.mark.log_allows(r"central policy rejected; its last good copy stays in force",
                        r"\[5000\] policy rejected: .*10-site.yaml:2")
def test_an_invalid_central_file_is_never_copied_and_the_last_good_copy_stays(penv):
    copy = central(penv, "- offline_files: {slow_link_ms: 55}\n")
    penv.start()
    assert shown(penv)["offline_files.slow_link_ms"]["value"] == "55"

    # an admin's typo on the server: the reload names the server file, line and key, the last
    # good copy stays in force, and so does the policy
    server_file = penv.server_dir("central") / "10-site.yaml"
    server_file.write_text("- offline_files:\n    slow_link_ms: fast\n")
    answer = penv.cli("reload")
    where = f"{penv.unc('central')}\\10-site.yaml:2: offline_files.slow_link_ms: "
    assert "central policy rejected" in answer["message"] and where in answer["message"], answer
    assert copy.read_text() == "- offline_files: {slow_link_ms: 55}\n"
    assert shown(penv)["offline_files.slow_link_ms"]["value"] == "55"
    events = [e for e in penv.cli("events")["events"] if e["name"] == "POLICY_REJECTED"]
    assert events and events[-1]["fields"]["key"] == "offline_files.slow_link_ms", events

    # and a restart with the typo still there starts on the last good copy
    penv.daemon.stop()
    penv.start()
    assert shown(penv)["offline_files.slow_link_ms"]["value"] == "55"
    assert penv.cli("policy", "show")["central"]["state"] == "rejected"


@pytest.mark.log_allows(r"central policy rejected; no good copy yet: only the local policy applies",
                        r"\[5000\] policy rejected: .*10-site.yaml:1: central_source")
def test_a_central_file_naming_another_source_is_rejected_at_first_start(penv):
    copy = central(penv, "- central_source: '\\\\elsewhere\\netlogon'\n")
    penv.start()  # the local policy alone: the start does not fail for a server-side mistake
    state = penv.cli("policy", "show")["central"]
    assert state["state"] == "rejected" and "10-site.yaml:1: central_source: " in state["error"]
    assert not copy.exists()

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

from tests.helpers.daemon import run_cscd
from tests.test_policy_daemon import PolicyEnv, penv  # noqa: F401 - the fixture


def central(env: PolicyEnv, text: str, name: str = "10-site.yaml") -> Path:
    """Write one file into the central folder on the server; returns its local copy's path."""
    folder = env.server_dir("central")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    env.write_policy(f"- central_source: '{env.unc('central')}'\n")
    return env.daemon.cache / "central-policy" / name


def shown(env: PolicyEnv) -> dict[str, dict]:
    return {r["key"]: r for r in env.cli("policy", "show")["rows"]}


def test_a_central_key_is_shown_with_its_central_origin_and_follows_reload(penv):  # noqa: F811
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


def test_server_down_at_start_uses_the_last_copy(penv):  # noqa: F811
    central(penv, "- offline_files: {slow_link_ms: 66}\n")
    penv.start()
    assert shown(penv)["offline_files.slow_link_ms"]["value"] == "66"
    os.listdir(penv.mount / "Documents")  # listed once: the next start may begin offline
    penv.daemon.stop()

    penv.env.proxy.stop_listening()
    penv.expected_warnings += [r"central policy .*: not copied .* the last copy stays in force",
                               r"starts offline from its cache"]
    penv.start()
    assert shown(penv)["offline_files.slow_link_ms"]["value"] == "66"
    state = penv.cli("policy", "show")["central"]
    assert state["state"] == "unreachable" and state["last_copy"] is True


def test_an_invalid_central_file_is_refused_with_file_line_key(penv):  # noqa: F811
    copy = central(penv, "- offline_files:\n    slow_link_ms: fast\n")
    result = run_cscd("daemon", "--config", str(penv.daemon.config_path), timeout_s=30)
    assert result.returncode == 2, (result.returncode, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("cscd: ")]
    assert len(errors) == 1 and errors[0].startswith(f"cscd: {copy}:2: offline_files.slow_link_ms: "), \
        result.stderr
    assert not penv.daemon.is_mounted()


def test_a_central_file_cannot_name_another_source(penv):  # noqa: F811
    copy = central(penv, "- central_source: '\\\\elsewhere\\netlogon'\n")
    result = run_cscd("daemon", "--config", str(penv.daemon.config_path), timeout_s=30)
    assert result.returncode == 2 and f"cscd: {copy}:1: central_source: " in result.stderr, result.stderr

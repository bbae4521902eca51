"""``cscd policy check`` and ``cscd policy show`` without a daemon (issue 19, part 6).

As ``sssctl config-check`` and ``gpresult`` do: the real CLI reads real policy files, names
the file, line and key of a mistake, and computes a user's effective policy on a given host
(or with given groups), each key with the file and line it came from; ``policy show`` falls
back to the files when no daemon answers.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.helpers.daemon import run_cscd

POLICY = textwrap.dedent(r"""
    - folders:
        Documents: {target: '\\srv\home\%USERNAME%\Documents'}
    - scope: {hosts: [ws9]}
      offline_files: {slow_link_ms: 80}
    - scope: {groups: [sales]}
      offline_files: {always_offline: true}
    """).lstrip()


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    d = tmp_path / "policy"
    d.mkdir()
    (d / "policy.yaml").write_text(POLICY)
    return d


def _rows(result) -> dict[str, tuple[str, str]]:
    assert result.returncode == 0, result.stderr
    return {r["key"]: (r["value"], r["origin"]) for r in json.loads(result.stdout)["rows"]}


def test_check_says_valid_or_names_the_file_line_and_key(policy_dir):
    ok = run_cscd("policy", "check", str(policy_dir))
    assert ok.returncode == 0 and ok.stdout.strip() == f"policy: 1 file(s), 3 block(s) in {policy_dir}: valid"
    (policy_dir / "policy.d").mkdir()
    (policy_dir / "policy.d" / "50-typo.yaml").write_text("offline_files:\n  slow_lnk_ms: 10\n")
    bad = run_cscd("policy", "check", str(policy_dir))
    assert bad.returncode == 2, bad
    assert f"{policy_dir}/policy.d/50-typo.yaml:2" in bad.stderr and "slow_lnk_ms" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr


def test_show_computes_a_user_on_a_host_from_the_files(policy_dir):
    on_ws9 = _rows(run_cscd("policy", "show", "--json", "--dir", str(policy_dir), "--host", "ws9"))
    assert on_ws9["offline_files.slow_link_ms"] == ("80", f"{policy_dir}/policy.yaml:4")
    on_ws1 = _rows(run_cscd("policy", "show", "--json", "--dir", str(policy_dir), "--host", "ws1.example.com"))
    assert on_ws1["offline_files.slow_link_ms"] == ("35", "default")
    assert on_ws1["offline_files.always_offline"] == ("false", "default")
    sales = _rows(run_cscd("policy", "show", "--json", "--dir", str(policy_dir), "--groups", "staff,sales"))
    assert sales["offline_files.always_offline"] == ("true", f"{policy_dir}/policy.yaml:6")


def test_show_without_a_daemon_reads_the_files(policy_dir, tmp_path):
    config = tmp_path / "cscd.yaml"
    config.write_text(f"mount: {tmp_path / 'mnt'}\ncache: {tmp_path / 'cache'}\npolicy_dir: {policy_dir}\n")
    shown = run_cscd("policy", "show", "--config", str(config), env_extra={"XDG_RUNTIME_DIR": str(tmp_path)})
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("(computed from the policy files: no daemon asked)\n"), shown.stdout
    assert f"{policy_dir}/policy.yaml:2" in shown.stdout

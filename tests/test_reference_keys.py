"""Every key policies/REFERENCE.md documents changes what the daemon runs with (issue 22, item 8).

A key that is read, validated and shown but changes nothing is a promise the docs break (as
``exclude_patterns`` once was: "not enforced yet"). For each documented key, a policy that
sets it away from its default must change the run-time view: the daemon's effective
configuration (``effective_config``) and each folder's Offline Files settings, the roaming
profile's settings, the redirection plan a logon carries out, the central source, and
whether this machine is a primary computer. A new key in REFERENCE.md fails here until it
gets an entry below, and an entry that stops having an effect fails too.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from cscd.operations.policy_in_force import effective_config
from cscd.policy.config import DaemonConfig
from cscd.policy.machine import load_policy
from cscd.policy.model import Subject
from cscd.policy.schema import ALL_KEYS
from cscd.profile.from_policy import profile_settings
from cscd.redirect import plan_redirection

REPO = Path(__file__).resolve().parents[1]
ALICE = Subject("alice", ("staff", "sales"), "ws1.example.com", "0" * 32, "EXAMPLE", "/home/alice")
XML = REPO / "policies" / "examples" / "redirections.xml"

BASE = r"""
- folders:
    Documents: {target: '\\srv\home\%USERNAME%\Documents'}
  roaming_profile: {target: '\\srv\profiles\%USERNAME%'}
"""

#: documented key → a policy block that sets it away from its default, or (baseline, changed)
EFFECTS: dict[str, str | tuple[str, str]] = {
    "folders.NAME.target": r"- folders: {Documents: {target: '\\other\home\%USERNAME%'}}",
    "folders.NAME.targets_by_group": r"- folders: {Documents: {targets_by_group: [{group: sales, target: '\\s2\x'}]}}",
    "folders.NAME.path": r"- folders: {Projects: {target: '\\srv\p', path: work/Projects}}",
    "folders.NAME.enabled": "- folders: {Documents: {enabled: false}}",
    "folders.NAME.offline": "- folders: {Documents: {offline: false}}",
    "folders.NAME.move_contents": "- folders: {Documents: {move_contents: false}}",
    "folders.NAME.removal_action": "- folders: {Documents: {removal_action: redirect_back}}",
    "offline_files.slow_link_ms": "- offline_files: {slow_link_ms: 80}",
    "offline_files.background_sync_interval_min": "- offline_files: {background_sync_interval_min: 30}",
    "offline_files.background_sync_max_offset_min": "- offline_files: {background_sync_max_offset_min: 5}",
    "offline_files.always_offline": "- offline_files: {always_offline: true}",
    "offline_files.fetch_uncached_on_slow_link": "- offline_files: {fetch_uncached_on_slow_link: false}",
    "offline_files.cost_aware_sync": "- offline_files: {cost_aware_sync: false}",
    "offline_files.sync_on_metered": "- offline_files: {sync_on_metered: true}",
    "offline_files.upload_cap_kibps": "- offline_files: {upload_cap_kibps: 2048}",
    "offline_files.slow_link_upload_kibps": "- offline_files: {slow_link_upload_kibps: 0}",
    "offline_files.notifications": "- offline_files: {notifications: false}",
    "offline_files.cache_size_limit": "- offline_files: {cache_size_limit: 2 GiB}",
    "offline_files.exclude_patterns": "- offline_files: {exclude_patterns: ['*.bak']}",
    "offline_files.max_file_size": "- offline_files: {max_file_size: 1 GB}",
    "offline_files.per_path": r"- offline_files: {per_path: [{path: '\\srv\home\*', slow_link_ms: 1}]}",
    "security.require_encryption": "- security: {require_encryption: false}",
    "security.require_signing": "- security: {require_signing: false}",
    "security.credentials": "- security: {credentials: /etc/cscd/creds}",
    "security.allow_ntlm": ("- security: {credentials: /etc/cscd/creds}",
                            "- security: {credentials: /etc/cscd/creds, allow_ntlm: false}"),
    "security.dfs_servers": "- security: {dfs_servers: ['*.corp.example']}",
    "primary_computers": "- primary_computers: [ws9.example.com]",
    # (against a policy that lists computers: the key changes what the list limits)
    "primary_computers_for": ("- primary_computers: [ws9.example.com]",
                              "- {primary_computers: [ws9.example.com], primary_computers_for: [roaming]}"),
    "central_source": r"- central_source: '\\srv\policy'",
    "roaming_profile.target": r"- roaming_profile: {target: '\\other\profiles\%USERNAME%'}",
    "roaming_profile.enabled": "- roaming_profile: {enabled: false}",
    "roaming_profile.include": "- roaming_profile: {include: [.ssh]}",
    "roaming_profile.include_dotfiles": "- roaming_profile: {include_dotfiles: false}",
    "roaming_profile.exclude_patterns": "- roaming_profile: {exclude_patterns: ['*.log']}",
    "roaming_profile.max_file_size": "- roaming_profile: {max_file_size: 5 MB}",
    "roaming_profile.redirections_xml": f"- roaming_profile: {{redirections_xml: '{XML}'}}",
    "roaming_profile.background_upload": "- roaming_profile: {background_upload: true}",
    "roaming_profile.kind": "- roaming_profile: {kind: mandatory}",
    "device.encrypt_cache": "- device: {encrypt_cache: true}",
    "device.cache_key": "- device: {cache_key: 'systemd:cscd-cache-key'}",
    "device.encrypt_with": "- device: {encrypt_with: cscd}",
    "device.require_screen_lock": "- device: {require_screen_lock: true}",
    "device.screen_lock_max_idle_min": "- device: {screen_lock_max_idle_min: 5}",
    "device.offline_when_noncompliant": "- device: {offline_when_noncompliant: false}",
    "device.wipe": "- device: {wipe: [Documents]}",
    "device.wipe_when_unreachable": "- device: {wipe_when_unreachable: wipe}",
    "roaming_profile.background_upload.max_offset_min":
        "- roaming_profile: {background_upload: {interval_hours: 12, max_offset_min: 5}}",
}
#: keys with an effect of another kind: who a block applies to, checked by the scope tests
NOT_SETTINGS = {k for k in ALL_KEYS if k.startswith("scope.")}


def _view(tmp_path: Path, extra: str, name: str) -> tuple:
    root = tmp_path / f"policy-{name}"
    root.mkdir(parents=True, exist_ok=True)
    (root / "policy.yaml").write_text(textwrap.dedent(BASE).lstrip() + extra + "\n")
    policy = load_policy(ALICE, root)
    base = DaemonConfig(tmp_path / "c.yaml", tmp_path / "m", tmp_path / "c", None)
    config = effective_config(base, policy)
    folders = {f.name: config.offline_for(f) for f in config.folders}
    # What ``profile_service`` builds the daemon's roaming profile from: its target and settings.
    profile = (policy.roaming_profile.target, profile_settings(policy)) if policy.roams() else None
    plan = plan_redirection(policy, Path("/home/alice"), tmp_path / "m", record={}, user_dirs_text=None)
    return config, folders, profile, plan.steps, policy.central_source, policy.is_primary_computer()


def test_every_documented_key_has_an_entry_here() -> None:
    documented = set(re.findall(r"^\| `([a-z_.]+)`", (REPO / "policies" / "REFERENCE.md").read_text(), re.M))
    settable = set(ALL_KEYS) - NOT_SETTINGS
    known = {k.rsplit(".", 1)[-1] for k in ALL_KEYS}
    assert documented <= known, f"REFERENCE.md documents keys cscd does not read: {sorted(documented - known)}"
    assert settable == set(EFFECTS), f"no effect check for {sorted(settable - set(EFFECTS))}"


@pytest.mark.parametrize("key", sorted(EFFECTS))
def test_a_documented_key_changes_what_the_daemon_runs_with(tmp_path: Path, key: str) -> None:
    baseline, change = EFFECTS[key] if isinstance(EFFECTS[key], tuple) else ("", EFFECTS[key])
    default = _view(tmp_path, baseline, "default")
    changed = _view(tmp_path, change, "changed")
    differs = [what for what, a, b in zip(("config", "folder offline settings", "profile", "redirection plan",
                                           "central source", "primary computer"), default, changed, strict=True)
               if a != b]
    assert differs, f"{key}: set in a policy, it changes nothing the daemon runs with"

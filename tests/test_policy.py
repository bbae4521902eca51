r"""Machine policy: files, validation (file:line: key: message), precedence, expansion, the rows of
``cscd policy show``, reload, the daemon's conversions, the central source and ``policies/``.

Pure parts are plain unit tests on temporary directories. The central source is tested against
``LocalUpstream`` and against the real ``SmbUpstream`` on the session's smbd.
"""

from __future__ import annotations

import os
import textwrap
import uuid
from pathlib import Path

import pytest

from cscd.errors import ConfigError, NotFound
from cscd.policy.central import MANIFEST, copy_central_policy
from cscd.policy.config import DaemonConfig, FolderConfig
from cscd.policy.machine import (
    changed_keys,
    current_subject,
    daemon_config,
    effective_policy,
    folder_configs,
    format_rows,
    load_policy,
    load_policy_credentials,
    load_policy_set,
    offline_policy,
    policy_rows,
    read_machine_id,
    reload_policy,
    smb_security,
)
from cscd.policy.model import GB, CacheSizeLimit, RemovalAction, Subject
from cscd.policy.schema import ALL_KEYS
from cscd.samba import EmbeddedSamba
from cscd.types import Credentials, OfflinePolicy, SmbSecurity, UncTarget
from cscd.upstream.local import LocalUpstream
from cscd.upstream.smb import SmbUpstream

REPO = Path(__file__).resolve().parents[1]
MID = "0123456789abcdef0123456789abcdef"
ALICE = Subject("alice", ("staff", "sales"), "ws1.example.com", MID, "EXAMPLE", "/home/alice")


def write(root: Path, rel: str, text: str) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))
    return p


def who(user: str = "alice", *groups: str, host: str = "ws1", domain: str = "EXAMPLE") -> Subject:
    return Subject(user, groups, host, MID, domain, f"/home/{user}")


def target_of(policy, name: str = "Documents") -> str:
    f = policy.folder(name)
    return str(f.target) if f is not None and f.target is not None else "(none)"


# -- a good file ---------------------------------------------------------------------------------

GOOD = r"""
- folders:
    Documents:
      target: '\\files.example.com\home$\%USERNAME%\Documents'
      removal_action: redirect_back
    Projects:
      path: ~/work/Projects
      target: '\\files.example.com\proj\%username%'
      offline: false
      move_contents: false
  offline_files:
    slow_link_ms: 80
    cache_size_limit: 25%
    max_file_size: 2 GiB
    exclude_patterns: ['*.tmp', '*.iso']
  security:
    require_encryption: true
    credentials: kerberos
"""


def test_good_file_loads_with_defaults_for_the_rest(tmp_path: Path) -> None:
    write(tmp_path, "policy.yaml", GOOD)
    p = load_policy(ALICE, tmp_path)
    assert target_of(p) == r"\\files.example.com\home$\alice\Documents"
    docs = p.folder("Documents")
    assert docs.removal_action is RemovalAction.REDIRECT_BACK
    assert docs.offline and docs.move_contents
    proj = p.folder("Projects")
    assert proj.local_path == "work/Projects" and not proj.offline and not proj.move_contents
    assert target_of(p, "Projects") == r"\\files.example.com\proj\alice"
    o = p.offline_files
    assert o.slow_link_ms == 80
    assert (o.background_sync_interval_min, o.background_sync_max_offset_min) == (120, 60)
    assert o.cache_size_limit == CacheSizeLimit(percent=25.0)
    assert o.max_file_size_bytes == 2 << 30
    assert o.exclude_patterns == ("*.tmp", "*.iso")
    assert not o.always_offline and o.fetch_uncached_on_slow_link and o.cost_aware_sync
    assert not o.sync_on_metered
    assert p.security.credentials.is_kerberos and p.security.require_signing
    assert p.primary_computers == () and p.is_primary_computer()


def test_no_files_means_defaults_and_nothing_redirected(tmp_path: Path) -> None:
    p = load_policy(ALICE, tmp_path)
    assert p.folders == () and p.files == ()
    assert p.offline_files.exclude_patterns == ("*.tmp", "~$*", ".~lock.*#")
    assert p.offline_files.max_file_size_bytes == 10 * GB
    assert p.offline_files.cache_size_limit.bytes_for(1000 * GB) == 100 * GB
    assert folder_configs(p) == ()


def test_a_single_mapping_is_one_block(tmp_path: Path) -> None:
    write(tmp_path, "policy.yaml", "offline_files:\n  always_offline: true\n")
    assert load_policy(ALICE, tmp_path).offline_files.always_offline


# -- malformed files: one message naming file, line and key ---------------------------------------

T = r"'\\srv\home\%USERNAME%\Documents'"
BAD = [
    ("- folders: [\n", 2, None, "not valid YAML"),
    ("just text\n", 1, None, "expected a list of policy blocks"),
    ("- 42\n", 1, None, "expected a policy block"),
    ("- colour: blue\n", 1, "colour", "unknown key"),
    ("- offline_files:\n    slow_link: 10\n", 2, "offline_files.slow_link",
     "did you mean 'slow_link_ms'?"),
    ("- folders:\n    Documents:\n      taget: x\n", 3, "folders.Documents.taget",
     "did you mean 'target'?"),
    ("- offline_files:\n    always_offline: maybe\n", 2, "offline_files.always_offline",
     "expected true or false, got 'maybe'"),
    ("- offline_files:\n    slow_link_ms: fast\n", 2, "offline_files.slow_link_ms",
     "expected a whole number ms"),
    ("- offline_files:\n    slow_link_ms: 0\n", 2, "offline_files.slow_link_ms",
     "out of range: allowed 1 to 60000"),
    ("- offline_files:\n    background_sync_interval_min: 0\n", 2,
     "offline_files.background_sync_interval_min", "out of range"),
    ("- offline_files:\n    background_sync_max_offset_min: 99999\n", 2,
     "offline_files.background_sync_max_offset_min", "out of range"),
    ("- offline_files:\n    cache_size_limit: 150%\n", 2, "offline_files.cache_size_limit",
     "150% is out of range"),
    ("- offline_files:\n    cache_size_limit: ten gigs\n", 2, "offline_files.cache_size_limit",
     "expected a size like 10 GB"),
    ("- offline_files:\n    cache_size_limit: 10\n", 2, "offline_files.cache_size_limit",
     "10 bytes is out of range"),
    ("- offline_files:\n    max_file_size: 5 XB\n", 2, "offline_files.max_file_size",
     "expected a size"),
    ("- offline_files:\n    exclude_patterns: '*.tmp'\n", 2, "offline_files.exclude_patterns",
     "expected a list of texts"),
    ("- offline_files:\n    exclude_patterns: ['a/*.tmp']\n", 2,
     "offline_files.exclude_patterns[0]", "cannot contain '/'"),
    ("- folders:\n    Documents:\n      target: 'srv\\share'\n", 3, "folders.Documents.target",
     "is not a UNC path"),
    ("- folders:\n    Documents:\n      target: '\\\\evil host\\share'\n", 3,
     "folders.Documents.target", "'evil host' is not a valid host name"),
    ("- folders:\n    Documents:\n      target: '\\\\srv\\share\\..\\x'\n", 3,
     "folders.Documents.target", "not a usable file name"),
    ("- folders:\n    Documents:\n      target: '\\\\srv\\home\\%USER%'\n", 3,
     "folders.Documents.target", "unknown variable %USER%"),
    ("- folders:\n    Documents:\n      target: " + T + "\n      targets_by_group: []\n", 4,
     "folders.Documents.targets_by_group", "not both"),
    ("- folders:\n    Documents:\n      targets_by_group:\n        - target: " + T + "\n", 4,
     "folders.Documents.targets_by_group[0]", "missing 'group'"),
    ("- folders:\n    Documents:\n      targets_by_group: sales\n", 3,
     "folders.Documents.targets_by_group", "expected a list of {group: NAME"),
    ("- folders:\n    Documents:\n      removal_action: delete\n", 3,
     "folders.Documents.removal_action", "expected one of leave, redirect_back"),
    ("- folders:\n    Documents:\n      offline: 1\n", 3, "folders.Documents.offline",
     "expected true or false"),
    ("- folders:\n    documents:\n      target: " + T + "\n", 2, "folders.documents",
     "write the known folder as 'Documents'"),
    ("- folders:\n    Projects:\n      target: " + T + "\n", 2, "folders.Projects",
     "custom folder needs 'path'"),
    ("- folders:\n    Projects:\n      path: /srv/x\n", 3, "folders.Projects.path",
     "inside the home directory"),
    ("- folders:\n    Documents:\n      path: Docs\n", 3, "folders.Documents.path",
     "'path' is for custom folders"),
    ("- folders:\n    'Pro:jects':\n      path: x\n", 2, "folders.Pro:jects",
     "not usable as a folder name"),
    ("- primary_computers: ['ws 1']\n", 1, "primary_computers[0]", "not a valid host name"),
    ("- primary_computers: []\n", 1, "primary_computers", "the list is empty"),
    ("- security:\n    credentials: ntlm\n", 2, "security.credentials",
     "expected 'kerberos' or an absolute path"),
    ("- security:\n    require_signing: 2\n", 2, "security.require_signing",
     "expected true or false"),
    ("- scope: {sites: [a]}\n", 1, "scope.sites", "unknown key"),
    ("- scope: {}\n", 1, "scope", "the scope is empty"),
    ("- scope: {groups: []}\n", 1, "scope.groups", "the list is empty"),
    ("- offline_files:\n    slow_link_ms: 10\n    slow_link_ms: 20\n", 3,
     "offline_files.slow_link_ms", "appears twice"),
    ("- central_source: 'not unc'\n", 1, "central_source", "is not a UNC path"),
    ("- roaming_profile:\n    taget: x\n", 2, "roaming_profile.taget", "did you mean 'target'?"),
    ("- roaming_profile:\n    target: 'C:\\profiles'\n", 2, "roaming_profile.target",
     "is not a UNC path"),
    ("- roaming_profile:\n    include: [/etc]\n", 2, "roaming_profile.include[0]",
     "relative to the home directory"),
    ("- roaming_profile:\n    exclude_patterns: ['~/.cache']\n", 2,
     "roaming_profile.exclude_patterns[0]", "relative to the home directory"),
    ("- roaming_profile:\n    exclude_patterns: ['../x']\n", 2,
     "roaming_profile.exclude_patterns[0]", "relative to the home directory"),
    ("- roaming_profile:\n    background_upload: {interval_hours: 1, time_of_day: '03:00'}\n", 2,
     "roaming_profile.background_upload.time_of_day", "not both"),
    ("- roaming_profile:\n    background_upload: {interval_hours: 0}\n", 2,
     "roaming_profile.background_upload.interval_hours", "out of range"),
    ("- roaming_profile:\n    background_upload: {time_of_day: '25:00'}\n", 2,
     "roaming_profile.background_upload.time_of_day", "expected a time of day"),
    ("- roaming_profile:\n    background_upload: {}\n", 2,
     "roaming_profile.background_upload", "true for every 12 h"),
    ("- offline_files:\n    per_path: [{slow_link_ms: 1}]\n", 2, "offline_files.per_path[0]", "missing 'path'"),
    ("- offline_files:\n    per_path: [{path: 'C:\\x', slow_link_ms: 1}]\n", 2, "offline_files.per_path[0].path",
     "is not a UNC path"),
    ("- offline_files:\n    per_path: [{path: '*'}]\n", 2, "offline_files.per_path[0]",
     "give slow_link_ms or background_sync_interval_min"),
    ("- offline_files:\n    per_path: [{path: '*', slow_link_ms: 0}]\n", 2,
     "offline_files.per_path[0].slow_link_ms", "out of range"),
    ("- roaming_profile:\n    redirections_xml: redirections.xml\n", 2,
     "roaming_profile.redirections_xml", "absolute path"),
]


@pytest.mark.parametrize(("text", "line", "key", "needle"), BAD,
                         ids=[f"{i:02d}-{b[3][:30]}" for i, b in enumerate(BAD)])
def test_malformed_policy_names_file_line_key(tmp_path: Path, text: str, line: int,
                                              key: str | None, needle: str) -> None:
    p = write(tmp_path, "policy.d/50-site.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_policy_set(tmp_path)
    msg = str(info.value)
    prefix = f"{p}:{line}: " + (f"{key}: " if key else "")
    assert msg.startswith(prefix), f"{msg!r} should start with {prefix!r}"
    assert needle in msg, msg
    assert "\n" not in msg and "Traceback" not in msg


def test_error_in_a_later_file_names_that_file(tmp_path: Path) -> None:
    write(tmp_path, "policy.yaml", GOOD)
    bad = write(tmp_path, "policy.d/90-late.yaml", "- offline_files:\n    slow_link_ms: -1\n")
    with pytest.raises(ConfigError, match=rf"^{bad}:2: offline_files.slow_link_ms: "):
        load_policy_set(tmp_path)


# -- precedence ----------------------------------------------------------------------------------

SCOPED = r"""
- folders:
    Documents:
      target: '\\fs\home\%USERNAME%\Docs-everyone'
- scope: {groups: [groupA]}
  folders:
    Documents:
      target: '\\fs-a\home\%USERNAME%'
- scope: {groups: [groupB]}
  folders:
    Documents:
      target: '\\fs-b\home\%USERNAME%'
- scope: {users: [carol]}
  folders:
    Documents:
      target: '\\fs-c\vip\carol'
- scope: {hosts: [kiosk1]}
  folders:
    Documents:
      target: '\\fs\kiosk\%USERNAME%'
"""


@pytest.mark.parametrize(("subject", "expected"), [
    (who("dave"), r"\\fs\home\dave\Docs-everyone"),
    (who("alice", "groupA"), r"\\fs-a\home\alice"),
    (who("bob", "groupB"), r"\\fs-b\home\bob"),
    (who("carol", "groupA"), r"\\fs-c\vip\carol"),  # users-scoped beats groups-scoped
    (who("dave", host="kiosk1"), r"\\fs\kiosk\dave"),  # hosts beats unscoped
    (who("erin", "groupA", host="kiosk1"), r"\\fs-a\home\erin"),  # groups beats hosts
    (who("alice", "GROUPA"), r"\\fs-a\home\alice"),  # names compare case-insensitively
])
def test_scope_precedence(tmp_path: Path, subject: Subject, expected: str) -> None:
    write(tmp_path, "policy.yaml", SCOPED)
    assert target_of(load_policy(subject, tmp_path)) == expected


def test_block_order_does_not_beat_narrower_scope(tmp_path: Path) -> None:
    """A later unscoped block does not override an earlier group-scoped one."""
    write(tmp_path, "policy.yaml", SCOPED + "- folders:\n    Documents:\n"
                                            "      target: '\\\\late\\x'\n")
    assert target_of(load_policy(who("alice", "groupA"), tmp_path)) == r"\\fs-a\home\alice"
    assert target_of(load_policy(who("dave"), tmp_path)) == r"\\late\x"


def test_users_and_hosts_beats_users_alone(tmp_path: Path) -> None:
    write(tmp_path, "policy.yaml", r"""
- scope: {users: [alice], hosts: [ws1]}
  offline_files: {slow_link_ms: 5}
- scope: {users: [alice]}
  offline_files: {slow_link_ms: 50}
""")
    assert load_policy(who("alice", host="ws1"), tmp_path).offline_files.slow_link_ms == 5
    assert load_policy(who("alice", host="ws2"), tmp_path).offline_files.slow_link_ms == 50


def test_later_file_wins_at_equal_scope_and_keys_merge_one_by_one(tmp_path: Path) -> None:
    write(tmp_path, "policy.yaml", "- offline_files: {slow_link_ms: 10, always_offline: true}\n")
    write(tmp_path, "policy.d/20-b.yaml", "- offline_files: {slow_link_ms: 30}\n")
    write(tmp_path, "policy.d/10-a.yaml", "- offline_files: {slow_link_ms: 20}\n")
    write(tmp_path, "policy.d/99-z.yaml.dpkg-old", "- offline_files: {slow_link_ms: 99}\n")
    p = load_policy(ALICE, tmp_path)
    assert p.offline_files.slow_link_ms == 30
    assert p.offline_files.always_offline  # not set by later files: kept
    assert [f.name for f in p.files] == ["policy.yaml", "10-a.yaml", "20-b.yaml"]
    assert str(p.origin("offline_files.slow_link_ms")) == f"{tmp_path}/policy.d/20-b.yaml:1"


def test_targets_by_group_first_matching_group_wins(tmp_path: Path) -> None:
    write(tmp_path, "policy.yaml", r"""
- folders:
    Desktop:
      targets_by_group:
        - group: sales
          target: '\\fs-sales\home\%USERNAME%\Desktop'
        - group: staff
          target: '\\fs-staff\home\%USERNAME%\Desktop'
""")
    p = load_policy(who("alice", "staff", "sales"), tmp_path)
    assert target_of(p, "Desktop") == r"\\fs-sales\home\alice\Desktop"
    assert p.folder("Desktop").matched_group == "sales"
    assert str(p.origin("folders.Desktop.target")).endswith("policy.yaml:5")
    assert target_of(load_policy(who("bob", "staff"), tmp_path), "Desktop") == \
        r"\\fs-staff\home\bob\Desktop"
    nobody = load_policy(who("eve", "guests"), tmp_path)
    assert target_of(nobody, "Desktop") == "(none)" and folder_configs(nobody) == ()


def test_a_winning_target_replaces_targets_by_group(tmp_path: Path) -> None:
    write(tmp_path, "policy.yaml", r"""
- folders:
    Desktop:
      targets_by_group: [{group: staff, target: '\\fs\a'}]
- scope: {users: [alice]}
  folders:
    Desktop: {target: '\\fs\b'}
""")
    assert target_of(load_policy(who("alice", "staff"), tmp_path), "Desktop") == r"\\fs\b"


def test_enabled_false_in_a_narrower_scope_stops_redirection(tmp_path: Path) -> None:
    write(tmp_path, "policy.yaml", SCOPED + "- scope: {users: [dave]}\n  folders:\n"
                                            "    Documents: {enabled: false}\n")
    p = load_policy(who("dave"), tmp_path)
    assert not p.folder("Documents").is_redirected and folder_configs(p) == ()


# -- variables and hostile names ------------------------------------------------------------------


def test_variables_expand_per_user(tmp_path: Path) -> None:
    write(tmp_path, "policy.yaml", r"""
- folders:
    Documents:
      target: '\\%USERDOMAIN%-fs.example.com\%HostName%\%USERNAME%'
""")
    p = load_policy(who("alice", host="ws7.example.com", domain="CORP"), tmp_path)
    assert p.folder("Documents").target == UncTarget("CORP-fs.example.com", "ws7", ("alice",))


def test_unknown_domain_is_an_error_at_expansion(tmp_path: Path) -> None:
    p = write(tmp_path, "policy.yaml", "- folders:\n    Documents:\n"
                                       "      target: '\\\\fs\\%USERDOMAIN%\\x'\n")
    with pytest.raises(ConfigError, match=rf"^{p}:3: folders.Documents.target: %USERDOMAIN% is "
                                          r"not known"):
        load_policy(who("alice", domain=""), tmp_path)


@pytest.mark.parametrize("user", ["..", "a/b", "a\\b", "CON", "x" * 300, "tab\tname"])
def test_hostile_user_names_are_not_expanded_into_paths(tmp_path: Path, user: str) -> None:
    p = write(tmp_path, "policy.yaml", "- folders:\n    Documents:\n"
                                       "      target: '\\\\fs\\home\\%USERNAME%'\n")
    with pytest.raises(ConfigError, match=rf"^{p}:3: folders.Documents.target: %USERNAME% = "):
        load_policy(who(user), tmp_path)


@pytest.mark.parametrize("server", [
    "evil host", "-lead", "trail-", "a..b", "under_score", "x" * 64 + ".com", "sp%20ace",
    "semi;colon", "at@sign", "",
])
def test_hostile_server_names_are_refused(tmp_path: Path, server: str) -> None:
    write(tmp_path, "policy.yaml",
          f"- folders:\n    Documents:\n      target: '\\\\{server}\\share'\n")
    with pytest.raises(ConfigError, match="folders.Documents.target: "):
        load_policy_set(tmp_path)


# -- policy show, reload -------------------------------------------------------------------------


def test_rows_show_value_and_origin_for_every_key(tmp_path: Path) -> None:
    f = write(tmp_path, "policy.yaml", GOOD)
    rows = {r.key: r for r in policy_rows(load_policy(ALICE, tmp_path))}
    assert rows["folders.Documents.target"].value == r"\\files.example.com\home$\alice\Documents"
    assert rows["folders.Documents.target"].origin == f"{f}:4"
    assert rows["folders.Documents.removal_action"].value == "redirect_back"
    assert rows["folders.Documents.offline"].origin == "default"
    assert rows["folders.Projects.path"].value == "~/work/Projects"
    assert rows["offline_files.slow_link_ms"].value == "80"
    assert rows["offline_files.slow_link_ms"].origin == f"{f}:12"
    assert rows["offline_files.cache_size_limit"].value == "25% of the cache filesystem"
    assert rows["offline_files.background_sync_interval_min"].origin == "default"
    assert rows["security.credentials"].value.startswith("kerberos (the user's ticket; NTLM if")  # the truth
    assert rows["primary_computers"].value == "(any computer)"
    shown = {k.replace("Documents", "NAME") for k in rows if "Projects" not in k}
    settable = {k for k in ALL_KEYS if not k.startswith("scope.")}
    assert settable - {"folders.NAME.targets_by_group", "folders.NAME.path"} <= shown


def test_reload_raises_and_the_last_good_policy_stays_usable(tmp_path: Path) -> None:
    f = write(tmp_path, "policy.yaml", GOOD)
    good = load_policy(ALICE, tmp_path)
    f.write_text(GOOD.replace("slow_link_ms: 80", "slow_link_ms: eighty"))
    with pytest.raises(ConfigError, match="offline_files.slow_link_ms"):
        reload_policy(ALICE, tmp_path)
    assert good.offline_files.slow_link_ms == 80
    f.write_text(GOOD.replace("slow_link_ms: 80", "slow_link_ms: 90"))
    new = reload_policy(ALICE, tmp_path)
    assert changed_keys(good, new) == ["offline_files.slow_link_ms"]


# -- what the daemon takes -----------------------------------------------------------------------


def test_conversions_for_the_daemon(tmp_path: Path) -> None:
    write(tmp_path, "policy.yaml", GOOD + "  primary_computers: [ws1]\n")
    p = load_policy(ALICE, tmp_path)
    assert folder_configs(p) == (
        FolderConfig("Documents", UncTarget("files.example.com", "home$", ("alice", "Documents"))),
        FolderConfig("Projects", UncTarget("files.example.com", "proj", ("alice",)), offline=False),
    )
    o = offline_policy(p)
    assert o.slow_link_ms == 80.0 and o.background_sync_interval_s == 7200.0
    assert o.background_sync_max_offset_s == 3600.0 and o.cost_aware_sync
    assert smb_security(p).require_encryption


def test_daemon_config_takes_only_what_the_policy_sets(tmp_path: Path) -> None:
    base = DaemonConfig(
        tmp_path / "cscd.yaml", tmp_path / "mnt", tmp_path / "cache", tmp_path / "creds",
        folders=(FolderConfig("Documents", UncTarget("old", "s")),
                 FolderConfig("Music", UncTarget("old", "m")),
                 FolderConfig("Videos", UncTarget("old", "v"))),
        security=SmbSecurity(require_encryption=False),
        offline=OfflinePolicy(slow_link_ms=5.0, background_sync_interval_s=9.0),
    )
    write(tmp_path, "policy.yaml", GOOD + "- folders: {Videos: {enabled: false}}\n")
    cfg = daemon_config(base, load_policy(ALICE, tmp_path))
    assert [f.name for f in cfg.folders] == ["Music", "Documents", "Projects"]
    assert cfg.folders[1].target.server == "files.example.com"
    assert cfg.offline.slow_link_ms == 80.0  # set by the policy
    assert cfg.offline.background_sync_interval_s == 9.0  # not set: the config's value stays
    assert cfg.security.require_encryption and cfg.credentials == tmp_path / "creds"
    unchanged = daemon_config(base, load_policy(ALICE, tmp_path / "empty"))
    assert unchanged == base
    write(tmp_path, "policy.d/pc.yaml", "- primary_computers: [elsewhere]\n")
    assert daemon_config(base, load_policy(ALICE, tmp_path)).folders == ()


def test_world_writable_policy_file_is_refused(tmp_path: Path) -> None:
    f = write(tmp_path, "policy.d/10-x.yaml", GOOD)
    os.chmod(f, 0o666)
    with pytest.raises(ConfigError, match=rf"^{f}: every user may change .*chmod o-w"):
        load_policy_set(tmp_path)


def test_show_table_has_one_line_per_key(tmp_path: Path) -> None:
    write(tmp_path, "policy.yaml", GOOD)
    rows = policy_rows(load_policy(ALICE, tmp_path))
    text = format_rows(rows)
    assert len(text.splitlines()) == len(rows)
    assert any(line.startswith("offline_files.slow_link_ms") and line.endswith("policy.yaml:12")
               for line in text.splitlines())


@pytest.mark.parametrize("hosts", ["[ws1]", "[ws1.example.com]", f"[{MID}]", "[WS1]"])
def test_primary_computer_by_name_or_machine_id(tmp_path: Path, hosts: str) -> None:
    write(tmp_path, "policy.yaml", GOOD + f"  primary_computers: {hosts}\n")
    assert load_policy(ALICE, tmp_path).is_primary_computer()


def test_elsewhere_nothing_is_redirected(tmp_path: Path) -> None:
    write(tmp_path, "policy.yaml", GOOD + "  primary_computers: [ws2, laptop9]\n")
    p = load_policy(ALICE, tmp_path)
    assert not p.is_primary_computer() and folder_configs(p) == ()


def test_credentials_file_must_be_private(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.write_text("username=alice\npassword=s3cret\n")
    os.chmod(creds, 0o644)
    f = write(tmp_path, "policy.yaml", f"- security:\n    credentials: {creds}\n")
    p = load_policy(ALICE, tmp_path)
    with pytest.raises(ConfigError) as info:
        load_policy_credentials(p)
    assert str(info.value).startswith(f"{f}:2: security.credentials: ")
    assert "chmod 600" in str(info.value) and "s3cret" not in str(info.value)
    os.chmod(creds, 0o600)
    assert load_policy_credentials(p) == Credentials("alice", "s3cret")


def test_credentials_path_expands_home_and_user(tmp_path: Path) -> None:
    write(tmp_path, "policy.yaml", "- security:\n    credentials: ~/.cscd/%USERNAME%.cred\n")
    p = load_policy(ALICE, tmp_path)
    assert p.security.credentials.path == Path("/home/alice/.cscd/alice.cred")
    assert load_policy_credentials(load_policy(ALICE, tmp_path / "none")) is None


@pytest.mark.parametrize(("text", "expected"), [
    ("10 GB", 10 * GB), ("512MiB", 512 << 20), ("1.5 TB", 1_500_000_000_000), (4096, 4096),
])
def test_sizes_with_units(tmp_path: Path, text: object, expected: int) -> None:
    write(tmp_path, "policy.yaml", f"- offline_files:\n    max_file_size: {text}\n")
    assert load_policy(ALICE, tmp_path).offline_files.max_file_size_bytes == expected


def test_cache_limit_in_bytes(tmp_path: Path) -> None:
    write(tmp_path, "policy.yaml", "- offline_files:\n    cache_size_limit: 20 GiB\n")
    limit = load_policy(ALICE, tmp_path).offline_files.cache_size_limit
    assert limit.bytes_for(1 << 40) == 20 << 30


def test_current_subject_and_machine_id(tmp_path: Path) -> None:
    s = current_subject()
    assert s.user and s.host and s.home
    (tmp_path / "mid").write_text(MID.upper() + "\n")
    assert read_machine_id(tmp_path / "mid") == MID
    (tmp_path / "bad").write_text("nope\n")
    assert read_machine_id(tmp_path / "bad") == "" and read_machine_id(tmp_path / "x") == ""


# -- the central source --------------------------------------------------------------------------


def central_upstream(kind: str, smbd: EmbeddedSamba, tmp_path: Path) -> tuple[object, Path]:
    if kind == "local":
        disk = tmp_path / "server" / "netlogon"
        disk.mkdir(parents=True)
        return LocalUpstream(tmp_path / "server"), disk
    name = f"central-{uuid.uuid4().hex[:10]}"
    disk = smbd.share_dir / name / "netlogon"
    disk.mkdir(parents=True)
    up = SmbUpstream(UncTarget(smbd.host, smbd.share, (name,)),
                     Credentials(smbd.username, smbd.password), port=smbd.port)
    return up, disk


@pytest.mark.parametrize("kind", ["local", "smb"])
async def test_central_copy_only_when_changed(kind: str, smbd: EmbeddedSamba,
                                              tmp_path: Path) -> None:
    up, disk = central_upstream(kind, smbd, tmp_path)
    await up.connect()
    try:
        (disk / "10-site.yaml").write_text("- offline_files: {slow_link_ms: 70}\n")
        (disk / "redirections.xml").write_text("<FrxProfileFolderRedirection/>\n")
        (disk / "notes.txt").write_text("not policy\n")
        cache = tmp_path / "central-cache"

        first = await copy_central_policy(up, b"netlogon", cache)
        assert first.copied == ("10-site.yaml", "redirections.xml") and first.reads >= 2
        assert (cache / "10-site.yaml").read_text() == (disk / "10-site.yaml").read_text()
        assert (cache / "10-site.yaml").stat().st_mode & 0o777 == 0o444
        assert not (cache / "notes.txt").exists()

        before = up.statistics().bytes_read
        again = await copy_central_policy(up, b"netlogon", cache)
        assert again.reads == 0 and again.copied == () and len(again.unchanged) == 2
        assert up.statistics().bytes_read == before

        # Same size and write time, but a new file (new FileId): copied again.
        st = (disk / "10-site.yaml").stat()
        (disk / "new.tmp").write_text("- offline_files: {slow_link_ms: 71}\n")
        os.utime(disk / "new.tmp", ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(disk / "new.tmp", disk / "10-site.yaml")
        (disk / "redirections.xml").unlink()
        third = await copy_central_policy(up, b"netlogon", cache)
        assert third.copied == ("10-site.yaml",) and third.removed == ("redirections.xml",)
        assert not (cache / "redirections.xml").exists()

        machine = tmp_path / "etc"
        write(machine, "policy.yaml", "- offline_files: {slow_link_ms: 40, always_offline: true}\n")
        p = load_policy(ALICE, machine, central_dir=cache)
        assert p.offline_files.slow_link_ms == 71 and p.offline_files.always_offline
    finally:
        await up.close()


async def test_central_source_down_keeps_the_last_copy(tmp_path: Path) -> None:
    disk = tmp_path / "server" / "netlogon"
    disk.mkdir(parents=True)
    (disk / "a.yaml").write_text("- offline_files: {slow_link_ms: 70}\n")
    up = LocalUpstream(tmp_path / "server")
    await up.connect()
    cache = tmp_path / "cache"
    await copy_central_policy(up, b"netlogon", cache)
    manifest = (cache / MANIFEST).read_bytes()
    disk.rename(tmp_path / "server" / "moved")
    with pytest.raises(NotFound):
        await copy_central_policy(up, b"netlogon", cache)
    assert (cache / "a.yaml").exists() and (cache / MANIFEST).read_bytes() == manifest


def test_central_policy_cannot_name_another_source(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    f = write(cache, "x.yaml", "- central_source: '\\\\fs\\netlogon'\n")
    with pytest.raises(ConfigError, match=rf"^{f}:1: central_source: the central policy cannot"):
        load_policy_set(tmp_path / "etc", central_dir=cache)


def test_central_source_is_read_from_machine_policy(tmp_path: Path) -> None:
    write(tmp_path, "policy.yaml", "- central_source: '\\\\dc1.example.com\\netlogon\\cscd'\n")
    assert load_policy(ALICE, tmp_path).central_source == \
        UncTarget("dc1.example.com", "netlogon", ("cscd",))


# -- policies/ -----------------------------------------------------------------------------------

EXAMPLES = sorted((REPO / "policies" / "examples").glob("*.yaml"))


def test_there_are_examples() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"basic-redirection", "redirection-by-group", "always-offline-laptops",
            "cost-aware-metered", "primary-computers"} <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates(tmp_path: Path, example: Path) -> None:
    (tmp_path / "policy.d").mkdir()
    (tmp_path / "policy.d" / example.name).write_bytes(example.read_bytes())
    policy_set = load_policy_set(tmp_path)
    assert policy_set.blocks
    for subject in (ALICE, who("bob", "laptops", "sales", "executives", host="laptop-bob")):
        effective_policy(policy_set, subject)


def test_reference_documents_every_key() -> None:
    text = (REPO / "policies" / "REFERENCE.md").read_text()
    missing = [k for k in ALL_KEYS if f"`{k.rsplit('.', 1)[-1]}`" not in text]
    assert not missing, f"policies/REFERENCE.md does not document {missing}"


def test_roaming_profile_keys_reach_the_policy(tmp_path: Path) -> None:
    write(tmp_path, "policy.yaml", """\
- roaming_profile:
    target: '\\\\srv\\profiles\\%USERNAME%'
    include: [.config, .ssh/known_hosts]
    exclude_patterns: [.config/chromium/, '*.log', '~$*']
    max_file_size: 5 MB
    background_upload: {time_of_day: 03:30, max_offset_min: 5}
- scope: {users: [bob]}
  roaming_profile: {enabled: false, background_upload: {interval_hours: 6}}
""")
    policy_set = load_policy_set(tmp_path)
    alice = effective_policy(policy_set, ALICE).roaming_profile
    assert str(alice.target) == "\\\\srv\\profiles\\alice"
    assert alice.include == (".config", ".ssh/known_hosts")
    assert alice.exclude_patterns == (".config/chromium/", "*.log", "~$*")
    assert alice.max_file_size_bytes == 5_000_000
    # unquoted 03:30 is the number 210 to YAML 1.1; the raw text is what counts
    assert (alice.background_upload.time_of_day, alice.background_upload.max_offset_min) == ("03:30", 5)
    assert alice.is_on
    bob = effective_policy(policy_set, who("bob")).roaming_profile
    assert not bob.is_on and str(bob.background_upload) == "every 6 h"
    assert bob.background_upload.max_offset_min == 5  # the offset from the wider block stays


@pytest.mark.parametrize(("given", "want"), [
    ("true", ("every 12 h", 60)),
    ("{max_offset_min: 10}", ("every 12 h", 10)),
    ("false", ("off", 60)),
    ("{time_of_day: '03:00'}", ("daily at 03:00", 60)),
])
def test_background_upload_switched_on_without_a_schedule_runs_every_12_hours(tmp_path: Path, given, want):
    """The seed's default schedule: a set interval of 12 h, with up to an hour's random delay."""
    write(tmp_path, "policy.yaml", f"- roaming_profile:\n    target: '\\\\srv\\p'\n    background_upload: {given}\n")
    upload = effective_policy(load_policy_set(tmp_path), ALICE).roaming_profile.background_upload
    assert (str(upload), upload.max_offset_min) == want


def test_per_path_thresholds_pick_the_most_specific_entry_for_a_target(tmp_path: Path) -> None:
    from cscd.types import OfflinePolicy, offline_for_target
    write(tmp_path, "policy.yaml", """\
- offline_files:
    slow_link_ms: 40
    per_path:
      - {path: '*', background_sync_interval_min: 30}
      - {path: '\\\\srv\\home\\*', slow_link_ms: 200}
      - {path: '\\\\SRV\\home\\alice\\Documents', slow_link_ms: 1}
""")
    rules = effective_policy(load_policy_set(tmp_path), ALICE).offline_files.per_path
    base = OfflinePolicy(slow_link_ms=40.0)
    docs = offline_for_target(base, rules, "\\\\srv\\home\\alice\\Documents")
    assert docs.works_always_offline and docs.background_sync_interval_s == base.background_sync_interval_s
    pics = offline_for_target(base, rules, "\\\\srv\\home\\alice\\Pictures")
    assert (pics.slow_link_ms, pics.works_always_offline) == (200.0, False)
    other = offline_for_target(base, rules, "\\\\files\\x\\Music")
    assert (other.slow_link_ms, other.background_sync_interval_s) == (40.0, 1800.0)
    assert offline_for_target(base, rules, "\\\\srv\\homes\\y").slow_link_ms == 40.0  # not under \\srv\\home


@pytest.mark.parametrize(("limits", "redirects", "roams"), [
    ("", False, False),  # both, as before the two settings
    ("primary_computers_for: [roaming]", True, False),
    ("primary_computers_for: [redirection]", False, True),
    ("primary_computers_for: []", True, True),
])
def test_the_primary_computer_limit_applies_to_what_primary_computers_for_names(
        tmp_path: Path, limits: str, redirects: bool, roams: bool) -> None:
    """Windows has two settings, one for folder redirection and one for roaming profiles."""
    write(tmp_path, "policy.yaml", f"""\
- folders: {{Documents: {{target: '\\\\srv\\h\\%USERNAME%'}}}}
  roaming_profile: {{target: '\\\\srv\\p\\%USERNAME%'}}
  primary_computers: [ws9.example.com]
  {limits}
""")
    policy = effective_policy(load_policy_set(tmp_path), ALICE)  # ALICE is on ws1, not ws9
    assert (bool(folder_configs(policy)), policy.roams()) == (redirects, roams)
    assert policy.is_primary_computer("redirection") is redirects

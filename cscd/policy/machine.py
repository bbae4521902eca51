r"""Machine policy: ``/etc/cscd/policy.yaml`` + ``policy.d/*.yaml`` (+ central copy) → ``Policy``.

Owns finding the policy files, the precedence between blocks, per-user expansion of
``%USERNAME%``/``%HOSTNAME%``/``%USERDOMAIN%``, the rows of ``cscd policy show`` and the
conversions the daemon needs (``daemon_config``, ``folder_configs``, ``offline_policy``,
``smb_security``, ``load_policy_credentials``). Reads local files only; no network (the
central source is copied by ``central.py`` first), no logging — the caller decides what to
say about a failed reload.

Files, in this order (the *file order*):

1. ``ROOT/policy.yaml`` (may be missing),
2. ``ROOT/policy.d/*.yaml`` sorted by file name (other names, e.g. ``x.yaml.dpkg-old``, are
   not read),
3. ``CENTRAL/*.yaml`` sorted by name: the local copy of the central policy, if any.

Precedence, decided key by key (``folders.Documents.target``, ``offline_files.slow_link_ms`` …):
among the blocks whose scope matches the user, the winner is the one with the narrowest scope,
then the one in the later file, then the later block in the same file. Narrowness compares
three questions in order — is it scoped by users? by groups? by hosts? — so
unscoped < hosts < groups < groups+hosts < users < users+hosts < users+groups < all three.
A list value (``exclude_patterns``, ``primary_computers``) is replaced, never appended to.
``target`` and ``targets_by_group`` are one key: whichever the winning block gives is used.
Scope names compare case-insensitively; a host matches by short name, full name or machine-id.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cscd.errors import BadName, ConfigError
from cscd.names import check_strict
from cscd.policy import directory as directory_lookup
from cscd.policy.config import DaemonConfig, FolderConfig
from cscd.policy.credentials import load_credentials
from cscd.policy.located import Origin
from cscd.policy.model import (
    DIRECTORY,
    KNOWN_FOLDERS,
    BackgroundUpload,
    CredentialSource,
    DevicePolicy,
    FolderPolicy,
    GroupTarget,
    OfflineFilesPolicy,
    Policy,
    RoamingProfilePolicy,
    SecurityPolicy,
    Subject,
)
from cscd.policy.schema import VARIABLE_RE, Block, Scope, Setting, expand, parse_file
from cscd.policy.unc import parse_unc
from cscd.types import Credentials, OfflinePolicy, SmbSecurity, UncTarget

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("/etc/cscd")
MAIN_FILE = "policy.yaml"
DROP_IN_DIR = "policy.d"
DEFAULT_MACHINE_ID = Path("/etc/machine-id")

#: ``offline_files`` keys as written in files → field of ``OfflineFilesPolicy``.
_OFFLINE_FIELDS = {"max_file_size": "max_file_size_bytes"}
#: ``roaming_profile`` keys as written → field of ``RoamingProfilePolicy`` (others: same name).
_ROAMING_FIELDS = {"max_file_size": "max_file_size_bytes"}


@dataclass(frozen=True, slots=True)
class PlacedBlock:
    """A block with its place in the file order (for precedence)."""

    file_index: int
    block_index: int
    block: Block

    def sort_key(self) -> tuple[tuple[bool, bool, bool], int, int]:
        return (self.block.scope.rank, self.file_index, self.block_index)


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Every block of every policy file, validated but not yet applied to a user."""

    files: tuple[Path, ...]
    blocks: tuple[PlacedBlock, ...]


@dataclass(frozen=True, slots=True)
class PolicyRow:
    """One line of ``cscd policy show``: key, value as text, and ``file:line`` or ``default``."""

    key: str
    value: str
    origin: str


# -- reading ------------------------------------------------------------------------------------


def policy_files(root: Path = DEFAULT_ROOT,
                 central_dir: Path | None = None) -> list[tuple[Path, bool]]:
    """The files to read in file order, each with "is it from the central source"."""
    out: list[tuple[Path, bool]] = []
    main = Path(root) / MAIN_FILE
    if main.exists():
        out.append((main, False))
    for directory, is_central in ((Path(root) / DROP_IN_DIR, False), (central_dir, True)):
        if directory is None or not directory.is_dir():
            continue
        names = sorted(p for p in directory.iterdir() if p.suffix == ".yaml"
                       and not p.name.startswith("."))
        out += [(p, is_central) for p in names]
    return out


def check_not_world_writable(path: Path) -> None:
    """Refuse a policy file any local user could edit: policy is the administrator's."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the policy file: {exc.strerror}") from None
    if mode & 0o002:
        raise ConfigError(f"{path}: every user may change this policy file (mode "
                          f"{mode & 0o7777:04o}); run: chmod o-w {path}")


def load_policy_set(root: Path = DEFAULT_ROOT, *, central_dir: Path | None = None) -> PolicySet:
    """Read and validate every policy file; ConfigError (file:line: key: …) on the first error.

    A file writable by every user is refused as a whole.
    """
    files, blocks = [], []
    for file_index, (path, is_central) in enumerate(policy_files(root, central_dir)):
        check_not_world_writable(path)
        files.append(path)
        for block_index, block in enumerate(parse_file(path, is_central=is_central)):
            blocks.append(PlacedBlock(file_index, block_index, block))
    return PolicySet(tuple(files), tuple(blocks))


def load_policy(subject: Subject, root: Path = DEFAULT_ROOT, *,
                central_dir: Path | None = None) -> Policy:
    """Read the files and compute ``subject``'s effective policy. Raises ConfigError.

    Use it at start (refuse to run on an error) and on reload (SIGHUP, ``cscd reload``): on
    an error there, keep running with the previous ``Policy`` and log the message — this
    function changes nothing, so the last good policy stays valid.
    """
    return effective_policy(load_policy_set(root, central_dir=central_dir), subject)


reload_policy = load_policy


# -- applying to a user -------------------------------------------------------------------------


def scope_matches(scope: Scope, subject: Subject) -> bool:
    """All conditions the scope gives must hold; within one list, any entry may match."""
    if scope.users and subject.user.casefold() not in {u.casefold() for u in scope.users}:
        return False
    groups = {g.casefold() for g in subject.groups}
    if scope.groups and not groups & {g.casefold() for g in scope.groups}:
        return False
    return not scope.hosts or any(subject.is_host(h) for h in scope.hosts)


def winning_settings(policy_set: PolicySet, subject: Subject) -> dict[str, Setting]:
    """Key → the setting that wins for ``subject`` (see the module docstring)."""
    winners: dict[str, Setting] = {}
    matching = [b for b in policy_set.blocks if scope_matches(b.block.scope, subject)]
    for placed in sorted(matching, key=PlacedBlock.sort_key):
        for setting in placed.block.settings:
            winners[setting.key] = setting
    return winners


def effective_policy(policy_set: PolicySet, subject: Subject) -> Policy:
    """The policy as it applies to ``subject``. Raises ConfigError when a variable cannot be
    filled in for this user (unknown domain, a user name that is not a usable path name) or
    the expanded target is not a valid UNC path; the message names file, line and key."""
    won = winning_settings(policy_set, subject)
    origins: dict[str, Origin] = {k: s.origin for k, s in won.items()}
    variables = _variables(subject)

    folder_names = {k.split(".")[1] for k in won if k.startswith("folders.")}
    ordered = [n for n in KNOWN_FOLDERS if n in folder_names]
    ordered += sorted(folder_names - set(KNOWN_FOLDERS))
    folders = []
    for name in ordered:
        kw: dict[str, Any] = {
            f: won[f"folders.{name}.{f}"].value
            for f in ("enabled", "offline", "move_contents", "removal_action")
            if f"folders.{name}.{f}" in won
        }
        if f"folders.{name}.path" in won:
            kw["local_path"] = won[f"folders.{name}.path"].value
        target = won.get(f"folders.{name}.target")
        if target is not None:
            if isinstance(target.value, str):
                kw["target"] = _unc(target.value, target, variables)
            else:
                chosen = _first_group(target.value, subject)
                if chosen is not None:
                    kw["matched_group"] = chosen.group
                    kw["target"] = _unc(chosen.target, Setting(target.key, chosen.target,
                                                               chosen.origin), variables)
                    origins[target.key] = chosen.origin
        folders.append(FolderPolicy(name, **kw))

    offline = {
        _OFFLINE_FIELDS.get(k, k): s.value
        for key, s in won.items() if key.startswith("offline_files.")
        for k in [key.split(".", 1)[1]]
    }
    security: dict[str, Any] = {
        key.split(".", 1)[1]: s.value for key, s in won.items() if key.startswith("security.")
    }
    if "credentials" in security:
        security["credentials"] = _credentials(won["security.credentials"], variables, subject)
    central = won.get("central_source")
    device = {key.split(".", 1)[1]: s.value for key, s in won.items() if key.startswith("device.")}
    return Policy(
        device=DevicePolicy(**device),
        roaming_profile=_roaming_profile(won, variables),
        subject=subject,
        folders=tuple(folders),
        offline_files=OfflineFilesPolicy(**offline),
        security=SecurityPolicy(**security),
        primary_computers=won["primary_computers"].value if "primary_computers" in won else (),
        **({"primary_computers_for": won["primary_computers_for"].value} if "primary_computers_for" in won else {}),
        **_directory_hosts(won, subject),
        central_source=_unc(central.value, central, variables) if central else None,
        origins=tuple(sorted(origins.items())),
        files=policy_set.files,
    )


def _roaming_profile(won: Mapping[str, Setting], variables: Mapping[str, str]) -> RoamingProfilePolicy:
    prefix = "roaming_profile."
    kw: dict[str, Any] = {
        _ROAMING_FIELDS.get(k, k): s.value
        for key, s in won.items() if key.startswith(prefix) and "background_upload" not in key
        for k in [key[len(prefix):]]
    }
    if "target" in kw:
        kw["target"] = _unc(kw["target"], won[prefix + "target"], variables)
    upload = won.get(prefix + "background_upload")
    schedule = upload.value if upload is not None else BackgroundUpload()
    offset = won.get(prefix + "background_upload.max_offset_min")
    if offset is not None:
        schedule = replace(schedule, max_offset_min=offset.value)
    policy = RoamingProfilePolicy(background_upload=schedule, **kw)
    if policy.is_mandatory and schedule.is_on:
        # A mandatory profile is never uploaded: a schedule to upload it is a mistake to name.
        where = won.get(prefix + "kind") or won.get(prefix + "target")
        assert where is not None and upload is not None
        raise ConfigError(f"{upload.origin}: roaming_profile.background_upload: the profile is "
                          f"{policy.effective_kind.replace('_', '-')} ({where.origin}: {where.key}), "
                          "never uploaded, so it cannot have a background upload")
    return policy


def _first_group(entries: Iterable[GroupTarget], subject: Subject) -> GroupTarget | None:
    groups = {g.casefold() for g in subject.groups}
    return next((e for e in entries if e.group.casefold() in groups), None)


def _variables(subject: Subject) -> dict[str, str]:
    return {"USERNAME": subject.user, "HOSTNAME": subject.short_host, "USERDOMAIN": subject.domain}


def _expand(text: str, setting: Setting, variables: Mapping[str, str]) -> str:
    for m in VARIABLE_RE.finditer(text):
        var = m.group(1).upper()
        value = variables[var]
        if not value:
            raise ConfigError(f"{setting.origin}: {setting.key}: %{var}% is not known for this "
                              f"user on this machine; set it or use a fixed name")
        try:
            check_strict(value.encode("utf-8"))
        except BadName as exc:
            raise ConfigError(f"{setting.origin}: {setting.key}: %{var}% = {value!r} cannot be "
                              f"part of a path: {exc}") from None
    return expand(text, variables)


def _unc(text: str, setting: Setting, variables: Mapping[str, str]) -> UncTarget:
    expanded = _expand(text, setting, variables)
    try:
        return parse_unc(expanded)
    except BadName as exc:
        raise ConfigError(f"{setting.origin}: {setting.key}: {exc}") from None


def _credentials(setting: Setting, variables: Mapping[str, str],
                 subject: Subject) -> CredentialSource:
    if setting.value == "kerberos":
        return CredentialSource()
    text = _expand(setting.value, setting, variables)
    if text.startswith("~/"):
        if not subject.home:
            raise ConfigError(f"{setting.origin}: {setting.key}: the home directory of "
                              f"{subject.user!r} is not known; give an absolute path")
        return CredentialSource(Path(subject.home) / text[2:])
    return CredentialSource(Path(text))


# -- showing ------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value) if value else "(none)"
    if value is None:
        return "(none)"
    return str(getattr(value, "value", value))


def policy_rows(policy: Policy) -> list[PolicyRow]:
    """Every key of the effective policy with its value and where it came from."""
    rows: list[tuple[str, Any]] = []
    for f in policy.folders:
        p = f"folders.{f.name}."
        target = str(f.target) if f.target else "(none)"
        if f.matched_group:
            target += f"  (group {f.matched_group})"
        rows.append((p + "target", target))
        if not f.is_known:
            rows.append((p + "path", f"~/{f.local_path}"))
        rows += [(p + k, getattr(f, k)) for k in ("enabled", "offline", "move_contents",
                                                  "removal_action")]
    o = policy.offline_files
    for field_name in o.__dataclass_fields__:
        key = next((k for k, v in _OFFLINE_FIELDS.items() if v == field_name), field_name)
        value = getattr(o, field_name)
        if key == "per_path":
            value = "; ".join(str(o) for o in value) or "(none)"
        rows.append((f"offline_files.{key}", f"{value} bytes" if key == "max_file_size" else value))
    s = policy.security
    rows += [(f"security.{k}", getattr(s, k)) for k in s.__dataclass_fields__]
    rows += [(f"device.{k}", getattr(policy.device, k)) for k in policy.device.__dataclass_fields__]
    computers = policy.primary_computers or "(any computer)"
    if policy.primary_computers == DIRECTORY:
        computers = (f"directory: {', '.join(policy.directory_hosts) or '(none listed)'}"
                     if policy.directory_hosts is not None else "directory (not readable: any computer)")
    rows += [("primary_computers", computers),
             ("primary_computers_for", ", ".join(policy.primary_computers_for) or "(nothing)"),
             ("central_source", policy.central_source)]
    r = policy.roaming_profile
    rows += [("roaming_profile.target", r.target), ("roaming_profile.enabled", r.enabled),
             ("roaming_profile.include", r.include),
             ("roaming_profile.include_dotfiles", r.include_dotfiles),
             ("roaming_profile.exclude_patterns", r.exclude_patterns),
             ("roaming_profile.max_file_size",
              "(no limit)" if r.max_file_size_bytes is None else f"{r.max_file_size_bytes} bytes"),
             ("roaming_profile.redirections_xml", r.redirections_xml),
             ("roaming_profile.background_upload", str(r.background_upload)),
             ("roaming_profile.background_upload.max_offset_min",
              r.background_upload.max_offset_min),
             ("roaming_profile.kind", r.effective_kind)]
    origins = dict(policy.origins)
    return [PolicyRow(k, _text(v), str(origins[k]) if k in origins else "default")
            for k, v in rows]


def format_rows(rows: Iterable[PolicyRow]) -> str:
    """The rows as an aligned three-column table (``cscd policy show``)."""
    rows = list(rows)
    if not rows:
        return ""
    kw = max(len(r.key) for r in rows)
    vw = min(max(len(r.value) for r in rows), 60)
    return "\n".join(f"{r.key:<{kw}}  {r.value:<{vw}}  {r.origin}".rstrip() for r in rows) + "\n"


def changed_keys(old: Policy, new: Policy) -> list[str]:
    """Keys whose value differs between two policies (for the reload log line)."""
    before = {r.key: r.value for r in policy_rows(old)}
    after = {r.key: r.value for r in policy_rows(new)}
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


# -- what the daemon needs ----------------------------------------------------------------------


def folder_configs(policy: Policy) -> tuple[FolderConfig, ...]:
    """The redirected folders as ``DaemonConfig.folders`` entries (name → UncTarget).

    Empty on a machine that is not one of the user's primary computers. Folders with
    ``offline: false`` are included: they are redirected, only not cached.
    """
    if not policy.is_primary_computer():
        return ()
    return tuple(FolderConfig(f.name, f.target, f.offline) for f in policy.folders
                 if f.is_redirected and f.target is not None)


def offline_policy(policy: Policy) -> OfflinePolicy:
    """The link monitor's settings (seconds) from the policy's Offline Files keys (minutes)."""
    o = policy.offline_files
    return OfflinePolicy(
        slow_link_ms=float(o.slow_link_ms),
        background_sync_interval_s=o.background_sync_interval_min * 60.0,
        background_sync_max_offset_s=o.background_sync_max_offset_min * 60.0,
        always_offline=o.always_offline,
        fetch_uncached_on_slow_link=o.fetch_uncached_on_slow_link,
        cost_aware_sync=o.cost_aware_sync,
        sync_on_metered=o.sync_on_metered,
        upload_cap_kibps=float(o.upload_cap_kibps),
        slow_link_upload_kibps=float(o.slow_link_upload_kibps),
        notifications=o.notifications,
    )


def smb_security(policy: Policy) -> SmbSecurity:
    return SmbSecurity(policy.security.require_encryption, policy.security.require_signing,
                       policy.security.dfs_servers)


def daemon_config(config: DaemonConfig, policy: Policy) -> DaemonConfig:
    """``config`` (the daemon's own YAML) with what the policy decides laid over it.

    Folders: the policy's redirected folders replace the config's folders of the same name;
    folders the policy names but does not redirect (``enabled: false``, no matching group) are
    dropped; on a machine that is not a primary computer no folder is left. Offline Files and
    security keys override the config only where a policy file set them (so a test's short
    timings in the config survive an empty policy). A credentials file named by the policy
    replaces the config's; ``kerberos`` leaves the config's as it is. A folder's ``offline``
    flag and the ``exclude_patterns`` and ``max_file_size`` keys travel the same way, so the
    cache and the folder source enforce them (``folders.X.offline: false`` → not cached).
    """
    if not policy.is_primary_computer():
        return replace(config, folders=())
    named = {f.name for f in policy.folders}
    folders = tuple(f for f in config.folders if f.name not in named) + folder_configs(policy)
    origins = dict(policy.origins)
    converted = offline_policy(policy)
    offline_keys = {"slow_link_ms": "slow_link_ms",
                    "background_sync_interval_min": "background_sync_interval_s",
                    "background_sync_max_offset_min": "background_sync_max_offset_s",
                    "always_offline": "always_offline",
                    "fetch_uncached_on_slow_link": "fetch_uncached_on_slow_link",
                    "cost_aware_sync": "cost_aware_sync", "sync_on_metered": "sync_on_metered",
                    "upload_cap_kibps": "upload_cap_kibps", "slow_link_upload_kibps": "slow_link_upload_kibps",
                    "notifications": "notifications"}
    offline = replace(config.offline, **{
        f: getattr(converted, f) for k, f in offline_keys.items() if f"offline_files.{k}" in origins
    })
    security = replace(config.security, **{
        k: getattr(policy.security, k) for k in ("require_encryption", "require_signing", "dfs_servers")
        if f"security.{k}" in origins
    })
    credentials = policy.security.credentials.path or config.credentials
    if not policy.security.allow_ntlm and credentials is not None:
        # The policy wins: a password file in cscd.yaml (or in the policy) is not used.
        log.info("%s forbids NTLM (security.allow_ntlm: false): %s is not used, the logon is Kerberos",
                 policy.origin("security.allow_ntlm"), credentials)
        credentials = None
    content = {field: getattr(policy.offline_files, field)
               for key, field in (("exclude_patterns", "exclude_patterns"), ("max_file_size", "max_file_size_bytes"))
               if f"offline_files.{key}" in origins}
    if "offline_files.per_path" in origins:
        content["offline_per_path"] = policy.offline_files.per_path
    return replace(config, folders=folders, offline=offline, security=security,
                   credentials=credentials, device=policy.device, **content)


def _directory_hosts(won: dict[str, Setting], subject: Subject) -> dict[str, Any]:
    """``directory_hosts`` for a policy whose ``primary_computers`` is ``directory``: one SSSD
    lookup per evaluation (start, reload); a failure leaves None ("every computer")."""
    setting = won.get("primary_computers")
    if setting is None or setting.value != DIRECTORY:
        return {}
    return {"directory_hosts": directory_lookup.primary_computers(subject.user, subject.directory_bus)}


def load_policy_credentials(policy: Policy) -> Credentials | None:
    """The credentials the policy names; None means "use the Kerberos ticket cache".

    Raises ConfigError naming the policy line and the file's problem (missing, readable by
    others — the fix is ``chmod 600`` —, no username line). Never shows the password.
    """
    source = policy.security.credentials
    if source.path is None:
        return None
    try:
        return load_credentials(source.path)
    except ConfigError as exc:
        where = policy.origin("security.credentials")
        raise ConfigError(f"{where}: security.credentials: {exc}") from None


# -- who and where ------------------------------------------------------------------------------


def read_machine_id(path: Path = DEFAULT_MACHINE_ID) -> str:
    """This machine's id (32 hex digits) or "" when the file is missing or malformed."""
    try:
        text = Path(path).read_text(encoding="ascii").strip().lower()
    except (OSError, UnicodeDecodeError):
        return ""
    return text if len(text) == 32 and all(c in "0123456789abcdef" for c in text) else ""


def current_subject(user: str | None = None, *,
                    machine_id_path: Path = DEFAULT_MACHINE_ID) -> Subject:
    r"""The subject for ``user`` (default: the calling user) on this machine.

    ``DOMAIN\user`` and ``user@domain.tld`` names give ``%USERDOMAIN%`` (the first label of the
    domain, upper case); plain names leave it empty. Groups come from the system's group
    database (``getgrouplist``, so SSSD/winbind groups count).
    """
    pw = pwd.getpwuid(os.getuid()) if user is None else pwd.getpwnam(user)
    name, domain = pw.pw_name, ""
    if "\\" in name:
        domain, name = name.split("\\", 1)
    elif "@" in name:
        name, domain = name.split("@", 1)
        domain = domain.split(".", 1)[0]
    groups = []
    for gid in os.getgrouplist(pw.pw_name, pw.pw_gid):
        try:
            groups.append(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue  # a gid without a name cannot be named in a policy either
    return Subject(name, tuple(sorted(set(groups))), socket.gethostname(),
                   read_machine_id(machine_id_path), domain.upper(), pw.pw_dir)

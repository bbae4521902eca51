"""The policy file schema: one file → validated ``Block``s of ``Setting``s, each with file and line.

Owns which keys exist, their types and ranges, and how a value is written in a file (sizes with
units, percentages, UNC templates with ``%USERNAME%``…). Everything that can be checked without
knowing the user is checked here, so a bad file fails at load, not at someone's logon; what
depends on the user (variable values, group choice) is ``machine.py``'s. Pure apart from reading
the file; no logging. Every error is one ``ConfigError`` line ``FILE:LINE: KEY: message``.

File shape: a list of blocks (or a single mapping, taken as one block). A block::

    - scope: {users: [...], groups: [...], hosts: [...]}    # optional; all given must match
      folders: {Documents: {target: ..., offline: ...}, ...}
      offline_files: {slow_link_ms: 35, ...}
      security: {require_encryption: true, credentials: kerberos}
      primary_computers: [ws-alice, 5f2b…machine-id]
      central_source: '\\\\server\\netlogon\\cscd'
      roaming_profile: {target: '\\\\server\\profiles\\%USERNAME%', background_upload: {interval_hours: 12}}
      device: {encrypt_cache: true, cache_key: secret-service}
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cscd.errors import BadName
from cscd.names import check_strict
from cscd.policy.located import Located, Origin, load_yaml
from cscd.policy.model import (
    CENTRAL,
    DIRECTORY,
    ENCRYPT_WITH_CHOICES,
    KNOWN_FOLDERS,
    PROFILE_KINDS,
    REDIRECTION,
    ROAMING,
    SECRET_SERVICE_KEY,
    VARIABLES,
    WIPE_ALL,
    WIPE_CHOICES,
    BackgroundUpload,
    CacheSizeLimit,
    GroupTarget,
    RemovalAction,
)
from cscd.policy.unc import check_server_name, parse_unc
from cscd.types import PathOverride

TOP_KEYS = ("scope", "folders", "offline_files", "security", "primary_computers", "primary_computers_for",
            "central_source",
            "roaming_profile", "device")
SCOPE_KEYS = ("users", "groups", "hosts")
FOLDER_KEYS = ("target", "targets_by_group", "path", "enabled", "offline", "move_contents",
               "removal_action")

MS_MAX = 60_000
MIN_MAX = 7 * 24 * 60
KIBPS_MAX = 10_000_000  # 10 GB/s: beyond any link
MAX_PATTERNS = 256
MiB = 1 << 20
#: A cache limit given in bytes must be at least this; less is a typo (``10`` meant ``10%``).
MIN_CACHE_BYTES = 16 * MiB
MAX_FILE_BYTES = 1 << 44  # 16 TiB

_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
VARIABLE_RE = re.compile(r"%([^%]*)%")
_SAMPLE = {"USERNAME": "user", "HOSTNAME": "host", "USERDOMAIN": "DOMAIN"}


@dataclass(frozen=True, slots=True)
class Scope:
    """Who a block applies to. Empty tuples mean "any"; all non-empty conditions must hold."""

    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()

    @property
    def rank(self) -> tuple[bool, bool, bool]:
        """Narrowness: users-scoped > groups-scoped > hosts-scoped > unscoped, compared in
        that order, so a block scoped by users and hosts beats one scoped by users alone."""
        return (bool(self.users), bool(self.groups), bool(self.hosts))

    def describe(self) -> str:
        parts = [f"{k}={','.join(v)}" for k, v in
                 (("users", self.users), ("groups", self.groups), ("hosts", self.hosts)) if v]
        return " ".join(parts) or "everyone"


@dataclass(frozen=True, slots=True)
class Setting:
    """One key set by one block: dotted key (``folders.Documents.offline``), value, origin.

    ``target`` and ``targets_by_group`` share the key ``folders.NAME.target`` (value ``str`` or
    ``tuple[GroupTarget, ...]``) so that a winning block's choice replaces the other form.
    """

    key: str
    value: Any
    origin: Origin


@dataclass(frozen=True, slots=True)
class Block:
    origin: Origin
    scope: Scope
    settings: tuple[Setting, ...]


# -- value readers ------------------------------------------------------------------------------


def check_template(loc: Located, text: str) -> str:
    """Refuse unknown ``%VARIABLES%``; return ``text`` unchanged."""
    for m in VARIABLE_RE.finditer(text):
        if m.group(1).upper() not in VARIABLES:
            known = ", ".join(f"%{v}%" for v in VARIABLES)
            raise loc.error(f"unknown variable %{m.group(1)}% (known: {known})")
    return text


def expand(text: str, values: Mapping[str, str]) -> str:
    """Replace each ``%VAR%`` (any case) by ``values[VAR]``; KeyError names a missing one."""
    return VARIABLE_RE.sub(lambda m: values[m.group(1).upper()], text)


def unc_template(loc: Located) -> str:
    """A UNC path, possibly with variables; checked with sample values for the variables."""
    text = check_template(loc, loc.as_str())
    try:
        parse_unc(expand(text, _SAMPLE))
    except BadName as exc:
        raise loc.error(str(exc)) from None
    return text


def size_bytes(loc: Located, lo: int, hi: int) -> int:
    """``10 GB``, ``512MiB``, ``1.5 TB`` or a plain number of bytes."""
    v = loc.scalar()
    if isinstance(v, int) and not isinstance(v, bool):
        n = v
    else:
        m = _SIZE.match(v) if isinstance(v, str) else None
        if m is None or m.group(2).lower() not in _UNITS:
            raise loc.error(f"expected a size like 10 GB, 512 MiB or a number of bytes, got {v!r}")
        n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if not lo <= n <= hi:
        raise loc.error(f"{n} bytes is out of range: allowed {lo} to {hi} bytes")
    return n


def cache_limit(loc: Located) -> CacheSizeLimit:
    v = loc.scalar()
    m = _PERCENT.match(v) if isinstance(v, str) else None
    if m is None:
        return CacheSizeLimit(percent=None, size_bytes=size_bytes(loc, MIN_CACHE_BYTES, 1 << 50))
    percent = float(m.group(1))
    if not 0 < percent <= 100:
        raise loc.error(f"{percent:g}% is out of range: allowed more than 0% up to 100%")
    return CacheSizeLimit(percent=percent)


def patterns(loc: Located) -> tuple[str, ...]:
    items = loc.as_str_list()
    if len(items) > MAX_PATTERNS:
        raise loc.error(f"{len(items)} patterns; at most {MAX_PATTERNS} are allowed")
    for text, item in items:
        if "/" in text or "\0" in text:
            raise item.error(f"{text!r}: a pattern matches one file name; it cannot contain '/'")
    return tuple(text for text, _ in items)


def host_patterns(loc: Located) -> tuple[str, ...]:
    """Host names or IP addresses, ``*`` and ``?`` allowed (``*.corp.example``)."""
    out = []
    for text, item in loc.as_str_list(allow_empty=False):
        try:
            check_server_name(text.replace("*", "x").replace("?", "x"))
        except BadName as exc:
            raise item.error(f"not a host name pattern: {exc}") from None
        out.append(text)
    return tuple(out)


def host_names(loc: Located) -> tuple[str, ...]:
    """Host names (short or full) or 32-hex-digit machine-ids."""
    out = []
    for text, item in loc.as_str_list(allow_empty=False):
        try:
            check_server_name(text)
        except BadName as exc:
            raise item.error(f"{exc}; expected a host name or an /etc/machine-id value") from None
        out.append(text)
    return tuple(out)


def principal_names(loc: Located) -> tuple[str, ...]:
    out = []
    for text, item in loc.as_str_list(allow_empty=False):
        if any(ord(c) < 32 for c in text) or text != text.strip():
            raise item.error(f"{text!r} has control characters or surrounding spaces")
        out.append(text)
    return tuple(out)


def group_targets(loc: Located) -> tuple[GroupTarget, ...]:
    entries = loc.entries("a list of {group: NAME, target: UNC} entries, first match wins")
    if not entries:
        raise loc.error("the list is empty; give at least one {group, target} entry")
    out = []
    for entry in entries:
        values = dict(entry.items(("group", "target"), what="a mapping {group: NAME, target: UNC}"))
        for need in ("group", "target"):
            if need not in values:
                raise entry.error(f"missing '{need}' (each entry needs group and target)")
        group = principal_names_one(values["group"])
        out.append(GroupTarget(group, unc_template(values["target"]), entry.origin))
    return tuple(out)


def principal_names_one(loc: Located) -> str:
    text = loc.as_str()
    if any(ord(c) < 32 for c in text) or text != text.strip():
        raise loc.error(f"{text!r} has control characters or surrounding spaces")
    return text


def local_path(loc: Located) -> str:
    """A custom folder's place: relative to the home directory (``~/`` allowed)."""
    text = loc.as_str()
    rel = text[2:] if text.startswith("~/") else text
    if rel.startswith("/") or text.startswith("~") and not text.startswith("~/"):
        raise loc.error(f"{text!r}: give a path inside the home directory, e.g. ~/Projects")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise loc.error(f"{text!r}: give a path inside the home directory, e.g. ~/Projects")
    return "/".join(parts)


def credentials_source(loc: Located) -> str:
    """``kerberos`` or a path (absolute or ``~/``), variables allowed."""
    text = check_template(loc, loc.as_str())
    if text == "kerberos":
        return text
    if not (text.startswith("/") or text.startswith("~/")):
        raise loc.error(f"{text!r}: expected 'kerberos' or an absolute path (or ~/...) "
                        f"to a credentials file with mode 0600")
    return text


def cache_key_source(loc: Located) -> str:
    """``secret-service`` or ``systemd:NAME`` (a credential name as systemd allows it)."""
    text = loc.as_str()
    if text == SECRET_SERVICE_KEY:
        return text
    name = text.removeprefix("systemd:")
    if not text.startswith("systemd:") or not re.fullmatch(r"[A-Za-z0-9_.@-]{1,255}", name) or name in (".", ".."):
        raise loc.error(f"{text!r}: expected '{SECRET_SERVICE_KEY}' or systemd:NAME, NAME as in "
                        "LoadCredentialEncrypted=NAME:...")
    return text


def wipe_folders(loc: Located) -> tuple[str, ...] | str:
    """``all``, or a list of folder names."""
    if not loc.is_list and loc.as_str() == WIPE_ALL:
        return WIPE_ALL
    names = []
    for text, item in loc.as_str_list():
        try:
            check_strict(text.encode("utf-8"))
        except BadName as exc:
            raise item.error(f"{text!r} is not a folder name: {exc}") from None
        names.append(text)
    return tuple(names)


def home_relative(loc: Located, text: str, *, what: str) -> str:
    """A ``/``-separated path below the home directory: not absolute, no ``.`` or ``..``."""
    parts = text.rstrip("/").split("/")
    # "~/x" and "~" would mean the home directory itself; "~$*" (Office's owner files) is a name
    if text.startswith(("/", "~/")) or text == "~" or "\0" in text or any(p in ("", ".", "..") for p in parts):
        raise loc.error(f"{text!r}: {what} is relative to the home directory, without '.', "
                        f"'..' or '~', e.g. .config/app")
    return text


def profile_paths(loc: Located) -> tuple[str, ...]:
    items = loc.as_str_list()
    return tuple(home_relative(item, text, what="an included path") for text, item in items)


def profile_patterns(loc: Located) -> tuple[str, ...]:
    """Patterns of the roaming profile: a name (any depth), ``dir/`` (directories only) or a
    home-relative path pattern with ``/`` (see ``profile/settings.py``)."""
    items = loc.as_str_list()
    if len(items) > MAX_PATTERNS:
        raise loc.error(f"{len(items)} patterns; at most {MAX_PATTERNS} are allowed")
    return tuple(home_relative(item, text, what="a pattern") for text, item in items)


def absolute_path(loc: Located) -> Path:
    text = loc.as_str()
    if not text.startswith("/") or "\0" in text:
        raise loc.error(f"{text!r}: expected an absolute path on this machine")
    return Path(text)


_TIME = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def time_of_day(loc: Located) -> str:
    """``"03:00"``: read from the raw text, since YAML 1.1 turns an unquoted 03:00 into 180."""
    loc.scalar()  # refuses a list or a mapping
    text = str(loc.node.value).strip()
    m = _TIME.match(text)
    if m is None:
        raise loc.error(f"expected a time of day like '03:00' (24-hour, local time), got {text!r}")
    return datetime.time(int(m.group(1)), int(m.group(2))).strftime("%H:%M")


def background_upload(loc: Located) -> list[Setting]:
    """``false`` (off), ``true`` (Windows' default schedule: every 12 h), or
    ``{interval_hours: N}`` / ``{time_of_day: "HH:MM"}`` with an optional ``max_offset_min``
    (alone, it means every 12 h too). Interval and time share one slot, so a narrower block's
    choice replaces the other form."""
    slot = "roaming_profile.background_upload"
    default = BackgroundUpload(interval_hours=BackgroundUpload.DEFAULT_INTERVAL_HOURS)
    if not loc.is_mapping:
        return [Setting(slot, default if loc.as_bool() else BackgroundUpload(), loc.origin)]
    given = dict(loc.items(("interval_hours", "time_of_day", "max_offset_min"),
                           what="a mapping {interval_hours | time_of_day, max_offset_min}"))
    if "interval_hours" in given and "time_of_day" in given:
        raise given["time_of_day"].error("give either interval_hours or time_of_day, not both")
    out = []
    if "interval_hours" in given:
        hours = given["interval_hours"].as_int(1, 720, "hours")
        out.append(Setting(slot, BackgroundUpload(interval_hours=hours), given["interval_hours"].origin))
    elif "time_of_day" in given:
        at = time_of_day(given["time_of_day"])
        out.append(Setting(slot, BackgroundUpload(time_of_day=at), given["time_of_day"].origin))
    if "max_offset_min" in given:
        item = given["max_offset_min"]
        if not out:  # switched on with only its delay: the default schedule
            out.append(Setting(slot, default, item.origin))
        out.append(Setting(f"{slot}.max_offset_min", item.as_int(0, 24 * 60, "minutes"), item.origin))
    if not out:
        raise loc.error("give interval_hours or time_of_day, true for every 12 h, or false for off")
    return out


def per_path(loc: Located) -> tuple[PathOverride, ...]:
    """``[{path: UNC | 'UNC\\*' | '*', slow_link_ms: N, background_sync_interval_min: N}, …]``:
    Windows' per-path lists of *Configure slow-link mode* and *Configure Background Sync*.
    A latency of 1 ms is Always Offline for the targets under that path, as on Windows."""
    entries = loc.entries("a list of {path: UNC, slow_link_ms, background_sync_interval_min} entries")
    out = []
    seen: set[str] = set()
    for entry in entries:
        values = dict(entry.items(("path", "slow_link_ms", "background_sync_interval_min"),
                                  what="a mapping {path, slow_link_ms, background_sync_interval_min}"))
        if "path" not in values:
            raise entry.error("missing 'path' (a UNC path, 'UNC\\*' for everything below it, or '*')")
        pattern = values["path"].as_str().strip()
        if pattern != "*":
            base = pattern[:-2] if pattern.endswith("\\*") else pattern
            try:
                parse_unc(base)
            except (BadName, ValueError) as exc:
                raise values["path"].error(f"{exc}; or a UNC path ending in '\\*', or '*'") from None
        if pattern.casefold() in seen:
            raise values["path"].error(f"{pattern!r} is listed twice")
        seen.add(pattern.casefold())
        if len(values) == 1:
            raise entry.error("give slow_link_ms or background_sync_interval_min for this path")
        out.append(PathOverride(
            pattern,
            float(values["slow_link_ms"].as_int(1, MS_MAX, "ms")) if "slow_link_ms" in values else None,
            values["background_sync_interval_min"].as_int(1, MIN_MAX, "minutes") * 60.0
            if "background_sync_interval_min" in values else None))
    return tuple(out)


def primary_for(loc: Located) -> tuple[str, ...]:
    """``[redirection, roaming]``, or one of them: what the primary-computer limit covers."""
    out = []
    for text, item in loc.as_str_list(allow_empty=True):
        if text not in (REDIRECTION, ROAMING):
            raise item.error(f"expected {REDIRECTION} or {ROAMING}, got {text!r}")
        if text not in out:
            out.append(text)
    return tuple(out)


def removal(loc: Located) -> RemovalAction:
    return RemovalAction(loc.as_choice(a.value for a in RemovalAction))


Reader = Callable[[Located], Any]

OFFLINE_KEYS: Mapping[str, Reader] = {
    "slow_link_ms": lambda loc: loc.as_int(1, MS_MAX, "ms"),
    "background_sync_interval_min": lambda loc: loc.as_int(1, MIN_MAX, "minutes"),
    "background_sync_max_offset_min": lambda loc: loc.as_int(0, MIN_MAX, "minutes"),
    "always_offline": Located.as_bool,
    "fetch_uncached_on_slow_link": Located.as_bool,
    "cost_aware_sync": Located.as_bool,
    "sync_on_metered": Located.as_bool,
    "upload_cap_kibps": lambda loc: loc.as_int(0, KIBPS_MAX, "KiB/s"),
    "slow_link_upload_kibps": lambda loc: loc.as_int(0, KIBPS_MAX, "KiB/s"),
    "cache_size_limit": cache_limit,
    "exclude_patterns": patterns,
    "max_file_size": lambda loc: size_bytes(loc, 1, MAX_FILE_BYTES),
    "per_path": per_path,
    "notifications": Located.as_bool,
}
SECURITY_KEYS: Mapping[str, Reader] = {
    "require_encryption": Located.as_bool,
    "require_signing": Located.as_bool,
    "credentials": credentials_source,
    "allow_ntlm": Located.as_bool,
    "dfs_servers": host_patterns,
}
ROAMING_KEYS: Mapping[str, Reader] = {
    "target": unc_template,
    "enabled": Located.as_bool,
    "include": profile_paths,
    "include_dotfiles": Located.as_bool,
    "exclude_patterns": profile_patterns,
    "max_file_size": lambda loc: size_bytes(loc, 1, MAX_FILE_BYTES),
    "redirections_xml": lambda loc: CENTRAL if loc.as_str() == CENTRAL else absolute_path(loc),
    "kind": lambda loc: loc.as_choice(PROFILE_KINDS),
}
DEVICE_KEYS: Mapping[str, Reader] = {
    "encrypt_cache": Located.as_bool,
    "cache_key": cache_key_source,
    "encrypt_with": lambda loc: loc.as_choice(ENCRYPT_WITH_CHOICES),
    "require_screen_lock": Located.as_bool,
    "screen_lock_max_idle_min": lambda loc: loc.as_int(1, 24 * 60, "min"),
    "offline_when_noncompliant": Located.as_bool,
    "wipe": wipe_folders,
    "wipe_when_unreachable": lambda loc: loc.as_choice(WIPE_CHOICES),
}
FOLDER_READERS: Mapping[str, Reader] = {
    "target": unc_template,
    "targets_by_group": group_targets,
    "path": local_path,
    "enabled": Located.as_bool,
    "offline": Located.as_bool,
    "move_contents": Located.as_bool,
    "removal_action": removal,
}

#: Every key a file may set, as ``cscd policy show`` and REFERENCE.md name them.
ALL_KEYS: tuple[str, ...] = (
    *(f"folders.NAME.{k}" for k in FOLDER_KEYS),
    *(f"offline_files.{k}" for k in OFFLINE_KEYS),
    *(f"security.{k}" for k in SECURITY_KEYS),
    "primary_computers", "primary_computers_for", "central_source",
    *(f"roaming_profile.{k}" for k in ROAMING_KEYS),
    "roaming_profile.background_upload", "roaming_profile.background_upload.max_offset_min",
    *(f"device.{k}" for k in DEVICE_KEYS),
    *(f"scope.{k}" for k in SCOPE_KEYS),
)


# -- blocks and files ---------------------------------------------------------------------------


def parse_scope(loc: Located) -> Scope:
    values = {}
    for name, item in loc.items(SCOPE_KEYS):
        values[name] = host_names(item) if name == "hosts" else principal_names(item)
    if not values:
        raise loc.error("the scope is empty; leave 'scope' out for a block that applies "
                        "to everyone")
    return Scope(**values)


def parse_folder(name: str, loc: Located) -> list[Setting]:
    known = {k.casefold(): k for k in KNOWN_FOLDERS}
    if name not in KNOWN_FOLDERS and name.casefold() in known:
        raise loc.error(f"write the known folder as '{known[name.casefold()]}'")
    try:
        check_strict(name.encode("utf-8"))
    except BadName as exc:
        raise loc.error(f"not usable as a folder name: {exc}") from None
    given = dict(loc.items(FOLDER_KEYS, what="a mapping of folder settings (target, offline, …)"))
    if "target" in given and "targets_by_group" in given:
        raise given["targets_by_group"].error(
            "give either target (everyone) or targets_by_group (first matching group), not both")
    if "path" in given and name in KNOWN_FOLDERS:
        raise given["path"].error(
            "known folders live where ~/.config/user-dirs.dirs says; 'path' is for custom folders")
    if "path" not in given and name not in KNOWN_FOLDERS:
        raise loc.error(f"custom folder needs 'path' (known folders: {', '.join(KNOWN_FOLDERS)})")
    out = []
    for key, item in given.items():
        slot = "target" if key == "targets_by_group" else key
        out.append(Setting(f"folders.{name}.{slot}", FOLDER_READERS[key](item), item.origin))
    return out


def parse_section(loc: Located, readers: Mapping[str, Reader]) -> list[Setting]:
    return [Setting(item.key, readers[name](item), item.origin)
            for name, item in loc.items(readers)]


def parse_roaming_profile(loc: Located) -> list[Setting]:
    out: list[Setting] = []
    for name, item in loc.items((*ROAMING_KEYS, "background_upload"),
                                what="a mapping of roaming profile settings (target, include, …)"):
        if name == "background_upload":
            out += background_upload(item)
        else:
            out.append(Setting(item.key, ROAMING_KEYS[name](item), item.origin))
    return out


def parse_block(loc: Located, *, is_central: bool) -> Block:
    scope = Scope()
    settings: list[Setting] = []
    for name, item in loc.items(TOP_KEYS, what="a policy block (a mapping of sections)"):
        if name == "scope":
            scope = parse_scope(item)
        elif name == "folders":
            for fname, floc in item.items(what="a mapping of folder names to settings"):
                settings += parse_folder(fname, floc)
        elif name == "offline_files":
            settings += parse_section(item, OFFLINE_KEYS)
        elif name == "security":
            settings += parse_section(item, SECURITY_KEYS)
        elif name == "primary_computers":
            value = DIRECTORY if not item.is_list and item.as_str() == DIRECTORY else host_names(item)
            settings.append(Setting(name, value, item.origin))
        elif name == "primary_computers_for":
            settings.append(Setting(name, primary_for(item), item.origin))
        elif name == "roaming_profile":
            settings += parse_roaming_profile(item)
        elif name == "device":
            settings += parse_section(item, DEVICE_KEYS)
        elif name == "central_source":
            if is_central:
                raise item.error("the central policy cannot name another central source; "
                                 "set central_source in /etc/cscd")
            settings.append(Setting(name, unc_template(item), item.origin))
    return Block(loc.origin, scope, tuple(settings))


def parse_file(path: Path, *, is_central: bool = False) -> list[Block]:
    """All blocks of one policy file, validated; ConfigError names file, line and key."""
    root = load_yaml(path)
    if root is None:
        return []
    if root.is_mapping:
        return [parse_block(root, is_central=is_central)]
    if not root.is_list:
        raise root.error("expected a list of policy blocks (- folders: …) or one block")
    # Blocks are located with an empty key: messages name keys as written, without "[2]."
    return [parse_block(Located(b.node, b.origin, ""), is_central=is_central)
            for b in root.entries("a list of policy blocks")]

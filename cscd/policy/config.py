"""The daemon's configuration file: YAML → a frozen ``DaemonConfig``, every error with file:line.

Minimal form (kept stable for tools and later policy layers)::

    mount: /path/to/mountpoint
    cache: /path/to/cache-dir           # optional: $XDG_STATE_HOME/cscd
    credentials: /path/to/credentials   # mount.cifs format, mode 0600; or kerberos (default)
    port: 445                           # optional
    folders:
      Documents: '\\\\server\\share\\alice\\Documents'

Optional sections: ``security`` (``require_encryption``, ``require_signing``) and
``timings`` (seconds; see ``Timings``). Unknown keys are errors, never silently ignored.

A folder may also be a mapping, to turn its caching off (``offline: false``: redirected and
mounted, but served from the server, never kept in the cache; see ``cache/residency.py``)::

    folders:
      Scans: {target: '\\\\server\\share\\alice\\Scans', offline: false}

``exclude_patterns`` (a list of file-name patterns, ``*.tmp``, ``~$*``, ``.~lock.*#`` by
default: such files live only on this machine) and ``max_file_size`` (``10G`` by default: no
file larger is cached) are the policy's ``offline_files`` keys of the same names; a policy
file that sets them wins (``machine.daemon_config``).

Machine policy (``policy/machine.py``) is read from ``policy_dir`` (default ``/etc/cscd``; a
missing directory means no machine policy) and laid over this file by the daemon; ``home``
(default ``$HOME``) is the home directory whose known folders policy redirects. When the file
names ``policy_dir`` itself, ``folders`` may be left out: the policy then gives them. Neither
key is a security boundary: the daemon runs as the user, who could run anything else.
"""

from __future__ import annotations

import logging
import os
import pwd
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from cscd.errors import BadName, ConfigError
from cscd.names import check_strict
from cscd.policy.credentials import SECRET_SERVICE, load_password
from cscd.policy.model import DevicePolicy
from cscd.policy.unc import parse_unc
from cscd.types import (
    KerberosLogon,
    Logon,
    OfflinePolicy,
    PathOverride,
    ServerSettings,
    SmbSecurity,
    UncTarget,
    offline_for_target,
)

log = logging.getLogger(__name__)

#: Defaults of the policy keys ``offline_files.exclude_patterns`` and ``max_file_size``
#: (``policy/model.py`` has the same values; ``tests/test_config.py`` keeps them equal).
DEFAULT_EXCLUDE_PATTERNS: tuple[str, ...] = ("*.tmp", "~$*", ".~lock.*#")
DEFAULT_MAX_FILE_BYTES = 10 * 1000**3

#: Open change notifications on recently used directories per folder (issue 16): each costs
#: the server one handle (and, on Samba, one inotify watch) and no requests while idle.
DEFAULT_DIRECTORY_WATCHES = 256

#: Machine policy's default place (``policy/machine.py`` reads ``policy.yaml`` and ``policy.d``).
DEFAULT_POLICY_DIR = Path("/etc/cscd")


@dataclass(frozen=True)
class Timings:
    """Intervals and deadlines in seconds; the defaults suit a LAN, tests shorten them."""

    request_timeout_s: float = 10.0  # one SMB request
    fetch_timeout_s: float = 30.0  # an on-demand read or listing a user waits for
    probe_interval_s: float = 2.0  # how often the link monitor looks at traffic while online
    idle_probe_s: float = 60.0  # one echo after the server was silent this long
    reconnect_max_s: float = 5.0  # longest wait between reconnect attempts while offline
    upload_delay_s: float = 0.3  # settle time after close before uploading
    scan_interval_s: float = 3.0  # first poll of a recently used directory, without notifications
    poll_max_s: float = 300.0  # ... doubling while it stays unchanged, up to this
    revalidate_interval_s: float = 60.0  # one unwatched directory re-listed per interval
    roaming_poll_s: float = 30.0  # ModemManager asked whether a modem roams (cost-aware sync)
    space_interval_s: float = 60.0  # how often each share is asked its size and free space (df)
    compliance_interval_s: float = 30.0  # how often the screen lock is checked (device.require_screen_lock)
    policy_refresh_s: float = 5400.0  # the policy fetched again (plus up to a third more): a wipe, a rule
    keyring_wait_s: float = 15.0  # at start, a keyring still locked or not yet on the bus is waited for


@dataclass(frozen=True)
class FolderConfig:
    """A redirected folder: its name in the mount and its target, a UNC path or, for trying
    cscd without a server, an absolute local directory."""

    name: str
    target: UncTarget | Path
    #: False: redirected but not cached (policy ``folders.NAME.offline``)
    offline: bool = True


@dataclass(frozen=True)
class DaemonConfig:
    path: Path
    mount: Path
    cache: Path
    #: the NTLM password's source: a file, or ``"secret-service"``; None: Kerberos only
    credentials: Path | str | None
    port: int = 445
    folders: tuple[FolderConfig, ...] = ()
    security: SmbSecurity = SmbSecurity()
    timings: Timings = field(default_factory=Timings)
    offline: OfflinePolicy = OfflinePolicy()
    #: per-UNC-path thresholds laid over ``offline`` (policy ``offline_files.per_path``)
    offline_per_path: tuple[PathOverride, ...] = ()
    #: run large uploads and downloads in worker processes (keeps the FUSE loop fast)
    offload_transfers: bool = True
    #: content-store size limit: bytes, or a fraction of the cache's filesystem
    cache_limit_bytes: int | None = None
    cache_limit_fraction: float = 0.10
    #: a file whose content says whether the network is metered ("1"/"yes"/"true"), for
    #: machines without NetworkManager
    metered_file: Path | None = None
    #: where to ask NetworkManager: "system" (default), "session", a D-Bus address, or None
    metered_dbus: str | None = "system"
    #: where SSSD's InfoPipe answers for ``primary_computers: directory`` (system, session, none, address)
    directory_dbus: str | None = "system"
    #: where logind answers, to push the roaming profile when the last session ends (linger)
    logind_dbus: str | None = "system"
    #: where desktop notifications go (org.freedesktop.Notifications): "session" (default),
    #: "system", a D-Bus address, or None (none at all)
    notify_dbus: str | None = "session"
    #: where the desktop's settings portal answers (org.freedesktop.portal.Settings), for
    #: ``device.require_screen_lock``: "session" (default), a D-Bus address, or None
    settings_dbus: str | None = "session"
    #: the device policy (cache encryption at rest): from policy files only, never cscd.yaml
    device: DevicePolicy = DevicePolicy()
    #: where machine policy lives (``policy.yaml`` + ``policy.d/``); None: no machine policy
    policy_dir: Path | None = DEFAULT_POLICY_DIR
    #: the home directory whose known folders are redirected; None: ``$HOME``
    home: Path | None = None
    #: file-name patterns kept out of sync: such files live only in this machine's cache
    exclude_patterns: tuple[str, ...] = DEFAULT_EXCLUDE_PATTERNS
    #: no file larger than this is cached (reads go to the server, growing past it is EFBIG)
    max_file_size_bytes: int = DEFAULT_MAX_FILE_BYTES
    #: change-notification handles kept open on recently used directories, per folder
    directory_watches: int = DEFAULT_DIRECTORY_WATCHES
    #: ``credentials: [kerberos, FILE]``: the ticket first, NTLM with ``credentials`` only
    #: when no usable ticket logs on (a fallback the policy may forbid: ``allow_ntlm``)
    kerberos_first: bool = False

    def server_settings(self, *, offload: bool | None = None, timeout_s: float | None = None) -> ServerSettings:
        """The settings ``upstream.open_upstream`` connects with; reads the credentials file
        (``ConfigError`` naming it if it is unusable). ``offload`` defaults to
        ``offload_transfers``, ``timeout_s`` to the request timeout."""
        creds: Logon
        if self.credentials is None:
            creds = KerberosLogon()
        elif self.kerberos_first:
            creds = KerberosLogon(fallback=load_password(self.credentials))
        else:
            creds = load_password(self.credentials)
        return ServerSettings(
            creds, port=self.port, security=self.security,
            timeout_s=self.timings.request_timeout_s if timeout_s is None else timeout_s,
            offload=self.offload_transfers if offload is None else offload,
            credentials_origin=f"{self.path}: credentials")

    @property
    def central_copy_dir(self) -> Path:
        """Where the local, read-only copy of the central policy lives (per user, in the cache)."""
        return self.cache / "central-policy"

    def offline_for(self, folder: FolderConfig) -> OfflinePolicy:
        """The Offline Files settings of one folder: ``offline`` with the most specific
        ``offline_per_path`` entry for its target laid over it."""
        return offline_for_target(self.offline, self.offline_per_path, str(folder.target))

    @property
    def home_dir(self) -> Path:
        """``home``, else ``$HOME``, else the password database's home of this uid."""
        if self.home is not None:
            return self.home
        env = os.environ.get("HOME")
        if env and os.path.isabs(env):
            return Path(env)
        return Path(pwd.getpwuid(os.getuid()).pw_dir)


_TOP_KEYS = {"mount", "cache", "credentials", "port", "folders", "security", "timings", "offline", "metered_file",
             "metered_dbus", "directory_dbus", "logind_dbus", "notify_dbus", "settings_dbus", "cache_limit",
             "policy_dir", "home",
             "exclude_patterns", "max_file_size", "directory_watches"}
#: Timings that existed once and are accepted, with a warning, so an old file still starts.
_RETIRED_TIMINGS = {"full_scan_interval_s": "directories are revalidated one per revalidate_interval_s now"}


class _Doc:
    """A YAML mapping with the line of each key, for messages that say where."""

    def __init__(self, path: Path, node: yaml.Node, where: str) -> None:
        if not isinstance(node, yaml.MappingNode):
            raise ConfigError(f"{path}:{node.start_mark.line + 1}: {where} must be a mapping of keys to values")
        self.path = path
        self.where = where
        self.items: dict[str, tuple[yaml.Node, int]] = {}
        for k, v in node.value:
            key = str(k.value)
            if key in self.items:
                raise ConfigError(f"{path}:{k.start_mark.line + 1}: key '{key}' appears twice")
            self.items[key] = (v, k.start_mark.line + 1)
        self.line = node.start_mark.line + 1

    def err(self, key: str, msg: str) -> ConfigError:
        line = self.items[key][1] if key in self.items else self.line
        dotted = f"{self.where}.{key}" if self.where != "file" else key
        return ConfigError(f"{self.path}:{line}: {dotted}: {msg}")

    def check_keys(self, allowed: set[str]) -> None:
        for key in self.items:
            if key not in allowed:
                raise self.err(key, f"unknown key (allowed: {', '.join(sorted(allowed))})")

    def value(self, key: str) -> Any:
        node = self.items[key][0]
        return yaml.safe_load(yaml.serialize(node))

    def get_str(self, key: str, *, required: bool = False) -> str | None:
        if key not in self.items:
            if required:
                raise self.err(key, "missing (required)")
            return None
        v = self.value(key)
        if not isinstance(v, str) or not v:
            raise self.err(key, f"expected a non-empty string, got {v!r}")
        return v

    def get_path(self, key: str, *, required: bool = True) -> Path | None:
        v = self.get_str(key, required=required)
        if v is None:
            return None
        p = Path(v).expanduser()
        if not p.is_absolute():
            p = (self.path.parent / p).resolve()
        return p

    def get_int(self, key: str, default: int, lo: int, hi: int) -> int:
        if key not in self.items:
            return default
        v = self.value(key)
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise self.err(key, f"expected a whole number from {lo} to {hi}, got {v!r}")
        return v

    def get_bool(self, key: str, default: bool) -> bool:
        if key not in self.items:
            return default
        v = self.value(key)
        if not isinstance(v, bool):
            raise self.err(key, f"expected true or false, got {v!r}")
        return v

    def get_float(self, key: str, default: float, lo: float, hi: float) -> float:
        if key not in self.items:
            return default
        v = self.value(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise self.err(key, f"expected a number from {lo} to {hi}, got {v!r}")
        return float(v)

    def sub(self, key: str) -> _Doc | None:
        if key not in self.items:
            return None
        return _Doc(self.path, self.items[key][0], key if self.where == "file" else f"{self.where}.{key}")


def _credentials(doc: _Doc) -> tuple[Path | str | None, bool]:
    """``credentials``: (the password file or None for Kerberos only, Kerberos first?).

    ``kerberos`` (or no key): the user's ticket. A path: NTLM with that file.
    ``systemd:NAME``: NTLM with the file systemd passes as the credential NAME
    (``LoadCredential=NAME:...`` in the unit: ``$CREDENTIALS_DIRECTORY/NAME``).
    ``secret-service``: NTLM with the password the Secret Service keeps for cscd.
    ``[kerberos, one of those]``: the ticket, and NTLM only when it fails.
    """
    if "credentials" not in doc.items:
        return None, False
    value = doc.value("credentials")
    entries = value if isinstance(value, list) else [value]
    if not entries or not all(isinstance(e, str) and e for e in entries):
        raise doc.err("credentials", "expected kerberos, a file, systemd:NAME, secret-service or "
                                     f"[kerberos, FILE], got {value!r}")
    if len(entries) == 1:
        return (None, False) if entries[0] == "kerberos" else (_password_file(doc, entries[0]), False)
    if len(entries) != 2 or entries[0] != "kerberos" or entries[1] == "kerberos":
        raise doc.err("credentials", f"a list is [kerberos, FILE, systemd:NAME or secret-service] (the ticket first, "
                                     f"NTLM as the fallback), got {value!r}")
    return _password_file(doc, entries[1]), True


def _password_file(doc: _Doc, text: str) -> Path | str:
    if text == SECRET_SERVICE:
        return text
    if text.startswith("systemd:"):
        name = text[len("systemd:"):]
        if not name or "/" in name or name in (".", ".."):
            raise doc.err("credentials", f"{text!r}: expected systemd:NAME, NAME as in LoadCredential=NAME:...")
        directory = os.environ.get("CREDENTIALS_DIRECTORY", "")
        if not directory:
            raise doc.err("credentials", f"{text}: systemd passed no credentials ($CREDENTIALS_DIRECTORY is "
                                         f"not set): add LoadCredential={name}:/path/to/file to the unit")
        return Path(directory) / name
    p = Path(text).expanduser()
    return p if p.is_absolute() else (doc.path.parent / p).resolve()


def default_cache_dir() -> Path:
    """``$XDG_STATE_HOME/cscd`` (``~/.local/state/cscd``): the cache holds the only copy of
    offline edits, so it is state, not a cache in the XDG sense — ``~/.cache`` is what backup
    tools skip and cleaners wipe. A file that names ``cache`` keeps its place."""
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "cscd"


def load_config(path: Path) -> DaemonConfig:
    """Read and validate the daemon's YAML file; ConfigError names file, line and key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    if root is None:
        raise ConfigError(f"{path}: the file is empty; see the README for the minimal form")
    doc = _Doc(path, root, "file")
    doc.check_keys(_TOP_KEYS)
    mount = doc.get_path("mount")
    cache = doc.get_path("cache", required=False) or default_cache_dir()
    credentials, kerberos_first = _credentials(doc)
    port = doc.get_int("port", 445, 1, 65535)

    policy_dir = doc.get_path("policy_dir", required=False)
    home = doc.get_path("home", required=False)
    folders_doc = doc.sub("folders")
    if policy_dir is None and (folders_doc is None or not folders_doc.items):
        raise doc.err("folders", "missing: name at least one folder, "
                                 "e.g. Documents: '\\\\server\\share\\you\\Documents'")
    folders = []
    for name in (folders_doc.items if folders_doc is not None else ()):
        try:
            check_strict(name.encode("utf-8"))
        except BadName as exc:
            raise folders_doc.err(name, f"not usable as a folder name: {exc}") from None
        folders.append(_folder(folders_doc, name))

    security = SmbSecurity()
    sec = doc.sub("security")
    if sec is not None:
        sec.check_keys({"require_encryption", "require_signing"})
        security = SmbSecurity(
            require_encryption=sec.get_bool("require_encryption", True),
            require_signing=sec.get_bool("require_signing", True),
        )
    timings = Timings()
    tim = doc.sub("timings")
    if tim is not None:
        names = {f.name for f in fields(Timings)}
        tim.check_keys(names | set(_RETIRED_TIMINGS))
        for old, why in _RETIRED_TIMINGS.items():
            if old in tim.items:
                log.warning("%s: timings.%s is ignored: %s", path, old, why)
        timings = Timings(**{n: tim.get_float(n, getattr(timings, n), 0.01, 86400.0) for n in names})
    offline = OfflinePolicy()
    off = doc.sub("offline")
    if off is not None:
        off.check_keys({f.name for f in fields(OfflinePolicy)})
        values = {}
        for f in fields(OfflinePolicy):
            default = getattr(offline, f.name)
            if isinstance(default, bool):
                values[f.name] = off.get_bool(f.name, default)
            elif isinstance(default, int):
                values[f.name] = off.get_int(f.name, default, 1, 1000)
            else:
                values[f.name] = off.get_float(f.name, default, 0.0, 10 * 86400.0)
        offline = OfflinePolicy(**values)
    metered_file = doc.get_path("metered_file", required=False)
    metered_dbus, directory_dbus, logind_dbus = (_bus(doc, key) for key in ("metered_dbus", "directory_dbus",
                                                                            "logind_dbus"))
    limit_bytes, limit_fraction = None, 0.10
    if "cache_limit" in doc.items:
        raw = doc.value("cache_limit")
        try:
            limit_bytes, limit_fraction = parse_size_or_percent(raw)
        except ValueError as exc:
            raise doc.err("cache_limit", str(exc)) from None
    patterns = DEFAULT_EXCLUDE_PATTERNS
    if "exclude_patterns" in doc.items:
        raw = doc.value("exclude_patterns")
        if not isinstance(raw, list) or not all(isinstance(p, str) and p and "/" not in p for p in raw):
            raise doc.err("exclude_patterns", f"expected a list of file-name patterns like '*.tmp', got {raw!r}")
        patterns = tuple(raw)
    max_file_bytes = DEFAULT_MAX_FILE_BYTES
    if "max_file_size" in doc.items:
        try:
            max_file_bytes, _share = parse_size_or_percent(doc.value("max_file_size"))
        except ValueError as exc:
            raise doc.err("max_file_size", str(exc)) from None
        if max_file_bytes is None:
            raise doc.err("max_file_size", f"expected a size like 500M or 2G, got {doc.value('max_file_size')!r}")
    watches = doc.get_int("directory_watches", DEFAULT_DIRECTORY_WATCHES, 0, 4096)
    return DaemonConfig(path, mount, cache, credentials, port, tuple(folders), security, timings,
                        kerberos_first=kerberos_first,
                        directory_watches=watches, offline=offline, metered_file=metered_file,
                        metered_dbus=metered_dbus,
                        directory_dbus=directory_dbus,
                        logind_dbus=logind_dbus, notify_dbus=_bus(doc, "notify_dbus", "session"),
                        settings_dbus=_bus(doc, "settings_dbus", "session"),
                        cache_limit_bytes=limit_bytes,
                        cache_limit_fraction=limit_fraction,
                        policy_dir=policy_dir if policy_dir is not None else DEFAULT_POLICY_DIR,
                        home=home, exclude_patterns=patterns, max_file_size_bytes=max_file_bytes)


def _bus(doc: _Doc, key: str, default: str = "system") -> str | None:
    """A D-Bus bus key: ``system`` (the default), ``session``, ``none`` or an address."""
    if key not in doc.items:
        return default
    raw = doc.value(key)
    if raw is None or raw is False or raw == "none":
        return None
    if isinstance(raw, str) and (raw in ("system", "session") or raw.startswith(("unix:", "tcp:"))):
        return raw
    raise doc.err(key, f"expected system, session, none or a D-Bus address, got {raw!r}")


def _folder(folders_doc: _Doc, name: str) -> FolderConfig:
    """One entry of ``folders``: a target string, or ``{target: ..., offline: false}``."""
    offline = True
    if isinstance(folders_doc.items[name][0], yaml.MappingNode):
        sub = folders_doc.sub(name)
        assert sub is not None
        sub.check_keys({"target", "offline"})
        unc = sub.get_str("target", required=True)
        offline = sub.get_bool("offline", True)
        err = sub.err
        key = "target"
    else:
        unc = folders_doc.get_str(name, required=True)
        err, key = folders_doc.err, name
    assert unc is not None
    if unc.startswith("/"):
        return FolderConfig(name, Path(unc), offline)
    try:
        return FolderConfig(name, parse_unc(unc), offline)
    except BadName as exc:
        raise err(key, str(exc)) from None


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size_or_percent(raw: object) -> tuple[int | None, float]:
    """``"10%"`` → (None, 0.10); ``"500M"``/``"2G"``/``123`` → (bytes, 0.0). ValueError otherwise."""
    if isinstance(raw, bool):
        raise ValueError(f"expected a size like 2G or a percentage like 10%, got {raw!r}")
    if isinstance(raw, int):
        if raw <= 0:
            raise ValueError("must be more than 0")
        return raw, 0.0
    text = str(raw).strip().upper()
    if text.endswith("%"):
        try:
            pct = float(text[:-1])
        except ValueError:
            raise ValueError(f"expected a percentage like 10%, got {raw!r}") from None
        if not 0 < pct <= 100:
            raise ValueError(f"a percentage from 0 to 100, got {raw!r}")
        return None, pct / 100
    unit = text[-1] if text[-1:] in "KMGT" else ""
    number = text[: len(text) - len(unit)].removesuffix("I").strip() if unit else text
    if text.endswith(("IB", "B")):
        raise ValueError(f"write sizes like 500M or 2G, got {raw!r}")
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"expected a size like 2G or a percentage like 10%, got {raw!r}") from None
    if value <= 0:
        raise ValueError("must be more than 0")
    return int(value * _UNITS[unit]), 0.0

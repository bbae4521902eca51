"""Small value types shared by every layer: node ids, modes, the per-folder link state.

Leaf module: imports nothing from cscd. ``FolderLink`` is how news about the link travels
*upward* as data: ``link.py`` writes it, ``fs``, ``cache`` and ``sync`` only read it.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field, replace
from typing import NewType

#: A node's 64-bit id: the FUSE inode, the content-store key and the sync identity.
NodeId = NewType("NodeId", int)

ROOT_ID = NodeId(1)


class Mode(enum.Enum):
    """How a redirected folder reaches its server right now (see DESIGN.md, Modes)."""

    ONLINE = "online"
    SLOW_LINK = "slow_link"
    OFFLINE = "offline"
    ALWAYS_OFFLINE = "always_offline"
    WORKING_OFFLINE = "working_offline"
    METERED = "metered"

    @property
    def may_fetch(self) -> bool:
        """Whether an uncached read may go to the server in this mode (policy may narrow it)."""
        return self in (Mode.ONLINE, Mode.SLOW_LINK, Mode.ALWAYS_OFFLINE)

    @property
    def syncs_immediately(self) -> bool:
        return self is Mode.ONLINE


@dataclass
class FolderLink:
    """The mutable link state of one folder, written only by the link monitor."""

    mode: Mode = Mode.OFFLINE
    reason: str = "not probed yet"
    rtt_s: float | None = None
    since: float = 0.0
    #: Bumped on every change, so waiters can tell a new state from an old one.
    generation: int = 0
    history: list[str] = field(default_factory=list)

    def set(self, mode: Mode, reason: str, now: float) -> bool:
        """Record a new mode; return True if it changed."""
        if mode is self.mode:
            self.reason = reason
            return False
        self.mode = mode
        self.reason = reason
        self.since = now
        self.generation += 1
        return True


@dataclass(frozen=True, slots=True)
class UncTarget:
    r"""A parsed ``\\server\share\path`` target; ``path`` components are already validated."""

    server: str
    share: str
    path: tuple[str, ...] = ()

    def __str__(self) -> str:
        return "\\\\" + "\\".join((self.server, self.share, *self.path))


@dataclass(frozen=True, slots=True)
class Credentials:
    """User name and password for NTLM; ``repr`` never shows the password."""

    username: str
    password: str = field(repr=False)
    domain: str = ""

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, domain={self.domain!r}, password=<redacted>)"


@dataclass(frozen=True, slots=True)
class KerberosLogon:
    """Log on with the user's Kerberos ticket, as a domain-joined Windows client does: the
    credential cache SSSD, winbind or ``kinit`` left (``KRB5CCNAME``, KCM, KEYRING), read at
    each connect, so a renewed ticket is used without a restart. No password anywhere."""

    #: the client principal (``alice@CORP.EXAMPLE``); "" takes the cache's default one
    principal: str = ""
    #: NTLM with these when no usable ticket logs on (``credentials: [kerberos, FILE]``);
    #: None: Kerberos only
    fallback: Credentials | None = None

    def __str__(self) -> str:
        return f"Kerberos ticket of {self.principal}" if self.principal else "Kerberos ticket"


#: How a connection logs on: NTLM with a user name and password, or a Kerberos ticket.
Logon = Credentials | KerberosLogon


@dataclass(frozen=True, slots=True)
class SmbSecurity:
    """Transport security; both on by default (policy may turn encryption off)."""

    require_encryption: bool = True
    require_signing: bool = True
    #: host-name patterns (``fnmatch``, no case) a DFS referral may send this client to;
    #: empty: any valid host name
    dfs_servers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """How to reach a folder's server: everything ``upstream.open_upstream`` needs but the
    target. ``credentials`` None means none were configured; ``credentials_origin`` names
    the setting to fix then (``FILE: credentials``). Picklable: offload workers get a copy."""

    credentials: Logon | None
    port: int = 445
    security: SmbSecurity = SmbSecurity()  # noqa: RUF009 - frozen dataclass
    timeout_s: float = 10.0
    offload: bool = False
    credentials_origin: str = "credentials"
    #: the daemon's ``ForegroundClock`` file: offloaded uploads make way for the mount
    foreground_clock: str | None = None


@dataclass(frozen=True, slots=True)
class RemoteEntry:
    """What the server says about one name; ``file_id`` is the server's FileId (0 if unknown)."""

    name: bytes
    is_dir: bool
    size: int
    mtime_ns: int
    ctime_ns: int
    file_id: int
    #: the sorted (name, value) EAs (``cscd.xattrs``); None when not known (a server that
    #: stores none, an upstream call that does not read them, a read that failed)
    eas: tuple[tuple[bytes, bytes], ...] | None = None

    def same_version(self, other: RemoteEntry | None) -> bool:
        """True if ``other`` describes the same content version (id, size, write time)."""
        return (
            other is not None
            and self.is_dir == other.is_dir
            and self.file_id == other.file_id
            and self.size == other.size
            and self.mtime_ns == other.mtime_ns
        )


@dataclass(frozen=True, slots=True)
class OfflinePolicy:
    """The Offline Files settings one folder runs with (policy keys of issue 6, defaults of
    Windows). Intervals are seconds here; policy files speak minutes."""

    slow_link_ms: float = 35.0
    #: consecutive smoothed samples on the other side of the threshold before the mode flips
    slow_link_samples: int = 3
    background_sync_interval_s: float = 120 * 60.0
    background_sync_max_offset_s: float = 60 * 60.0
    always_offline: bool = False
    fetch_uncached_on_slow_link: bool = True
    cost_aware_sync: bool = True
    sync_on_metered: bool = False
    #: upload cap in every mode, KiB/s (0: none)
    upload_cap_kibps: float = 0.0
    #: upload cap on a slow link, KiB/s (0: none): background sync trickles, the link stays usable
    slow_link_upload_kibps: float = 1024.0
    #: desktop notifications about this folder (``operations/desktop.py``)
    notifications: bool = True

    @property
    def works_always_offline(self) -> bool:
        """Always Offline, also in the Windows form: a slow-link latency of 1 ms (or less)."""
        return self.always_offline or self.slow_link_ms <= 1.0

    def upload_rate(self, slow: bool) -> float | None:
        """Bytes per second uploads may use now, or None for no cap."""
        caps = [c for c in (self.upload_cap_kibps, self.slow_link_upload_kibps if slow else 0.0) if c > 0]
        return min(caps) * 1024 if caps else None


@dataclass(frozen=True, slots=True)
class PathOverride:
    """Offline Files thresholds for the targets under one UNC path: the per-path lists of
    Windows' *Configure slow-link mode* and *Configure Background Sync* (policy
    ``offline_files.per_path``). ``pattern`` is a UNC path, a UNC path ending in ``\\*``
    (everything below it) or ``*`` (every target); matched case-insensitively, the most
    specific pattern wins. ``None`` leaves the folder's own value."""

    pattern: str
    slow_link_ms: float | None = None
    background_sync_interval_s: float | None = None

    def matches(self, unc: str) -> bool:
        p, u = self.pattern.casefold().rstrip("\\"), unc.casefold().rstrip("\\")
        if p == "*":
            return True
        if p.endswith("\\*"):
            return u.startswith(p[:-1])
        return u == p or u.startswith(p + "\\")

    @property
    def specificity(self) -> int:
        return -1 if self.pattern == "*" else len(self.pattern.rstrip("*\\"))

    def __str__(self) -> str:
        parts = [f"slow_link_ms={self.slow_link_ms:g}" if self.slow_link_ms is not None else "",
                 f"background_sync_interval_min={self.background_sync_interval_s / 60:g}"
                 if self.background_sync_interval_s is not None else ""]
        return f"{self.pattern}: " + ", ".join(p for p in parts if p)


def offline_for_target(base: OfflinePolicy, overrides: tuple[PathOverride, ...], unc: str) -> OfflinePolicy:
    """``base`` with the most specific ``overrides`` entry matching the target ``unc`` laid over it."""
    best = max((o for o in overrides if o.matches(unc)), key=lambda o: o.specificity, default=None)
    if best is None:
        return base
    changes = {k: v for k, v in (("slow_link_ms", best.slow_link_ms),
                                 ("background_sync_interval_s", best.background_sync_interval_s)) if v is not None}
    return replace(base, **changes)


@dataclass
class ContentSnapshot:
    """A frozen copy of one file's content, made for one upload (the cache's ``content_snapshot``).

    Why a copy: the user may write, truncate, rename or delete the file while its upload runs
    (sqlite's journals, editors' swap files, git's ``index.lock`` live for milliseconds). The
    upload reads this unnamed copy, never the live file, so it sends one consistent version;
    ``version`` says which, and sync records the base only if the node is still at it.
    ``path`` opens the same copy from another process (upload workers, hashing workers).
    ``content_key`` is set when the copy is sealed (a large file of a sealed cache): it is
    then read through ``cscd.sealed_files.SealedReader`` with that key (a ``SealedKey``: the
    key's id and bytes), never as plain bytes.
    The owner closes it; closing twice is harmless.
    """

    fd: int
    version: int
    size: int
    mtime_ns: int
    content_key: tuple[int, bytes] | None = field(default=None, repr=False)

    @property
    def path(self) -> str:
        return f"/proc/{os.getpid()}/fd/{self.fd}"

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

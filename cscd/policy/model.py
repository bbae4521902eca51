"""The effective policy of one user on one machine: a tree of frozen dataclasses.

Owns the shapes and defaults of every policy key (the defaults live here and nowhere else:
``schema.py`` validates files against them, ``policies/REFERENCE.md`` documents them) and the
pure questions one asks of a finished policy (is this a primary computer, how many bytes may
the cache use). Builds nothing from files: that is ``machine.py``. No I/O, no logging.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from cscd.policy.located import Origin
from cscd.types import PathOverride, UncTarget

#: The XDG user directories cscd redirects by name (``xdg-user-dirs``' eight), in the order
#: ``cscd policy show`` lists them. Any other folder name is a custom folder and needs ``path``.
KNOWN_FOLDERS: tuple[str, ...] = (
    "Desktop", "Documents", "Downloads", "Music", "Pictures", "Videos", "Templates", "Public",
)

#: Variables a target (or a credentials path) may use; expanded per user, case-insensitive.
VARIABLES: tuple[str, ...] = ("USERNAME", "HOSTNAME", "USERDOMAIN")

GB = 1000**3


class RemovalAction(enum.Enum):
    """What happens to a redirected folder when the policy stops redirecting it."""

    #: the data stays on the server; the user gets an empty local folder
    LEAVE = "leave"
    #: the content is copied back home (verified) before the redirection is removed
    REDIRECT_BACK = "redirect_back"


@dataclass(frozen=True, slots=True)
class GroupTarget:
    """One entry of ``targets_by_group``: members of ``group`` get ``target`` (unexpanded)."""

    group: str
    target: str
    origin: Origin


@dataclass(frozen=True, slots=True)
class CacheSizeLimit:
    """Either a share of the cache's filesystem (``percent``) or a fixed ``size_bytes``."""

    percent: float | None = 10.0
    size_bytes: int | None = None

    def bytes_for(self, filesystem_bytes: int) -> int:
        """The limit in bytes for a cache filesystem of ``filesystem_bytes``."""
        if self.size_bytes is not None:
            return self.size_bytes
        assert self.percent is not None
        return int(filesystem_bytes * self.percent / 100)

    def __str__(self) -> str:
        if self.size_bytes is not None:
            return f"{self.size_bytes} bytes"
        return f"{self.percent:g}% of the cache filesystem"


@dataclass(frozen=True, slots=True)
class CredentialSource:
    """Where the SMB credentials come from: the user's Kerberos ticket cache, or a 0600 file."""

    path: Path | None = None  # None: Kerberos

    @property
    def is_kerberos(self) -> bool:
        return self.path is None

    def __str__(self) -> str:
        # Say what happens: a credentials file the user's cscd.yaml names still wins.
        return ("kerberos (the user's ticket; NTLM if cscd.yaml names a credentials file)"
                if self.path is None else str(self.path))


@dataclass(frozen=True, slots=True)
class Subject:
    """Who the policy is computed for: user, groups, machine (host name and machine-id)."""

    user: str
    groups: tuple[str, ...] = ()
    host: str = ""
    machine_id: str = ""
    domain: str = ""
    home: str = ""
    #: where to ask SSSD for the directory's primary computers (``cscd.policy.directory``)
    directory_bus: str | None = None

    @property
    def short_host(self) -> str:
        return self.host.split(".", 1)[0]

    def is_host(self, name: str) -> bool:
        """True if ``name`` is this machine: its host name (short or full) or its machine-id."""
        n = name.casefold().rstrip(".")
        return bool(n) and n in {
            self.host.casefold(), self.short_host.casefold(), self.machine_id.casefold(),
        }


@dataclass(frozen=True, slots=True)
class FolderPolicy:
    """One redirected (or formerly redirected) folder, as it applies to the subject.

    ``target`` is the expanded target for this user, or None when nothing applies (no
    ``target``, no matching group, or ``enabled: false``). ``local_path`` is relative to the
    home directory for custom folders; None for known folders, whose local place is what
    ``~/.config/user-dirs.dirs`` says.
    """

    name: str
    target: UncTarget | None = None
    matched_group: str | None = None
    local_path: str | None = None
    enabled: bool = True
    offline: bool = True
    move_contents: bool = True
    removal_action: RemovalAction = RemovalAction.LEAVE

    @property
    def is_known(self) -> bool:
        return self.name in KNOWN_FOLDERS

    @property
    def is_redirected(self) -> bool:
        return self.enabled and self.target is not None


@dataclass(frozen=True, slots=True)
class OfflineFilesPolicy:
    """Offline Files settings (the defaults of Windows where it has one)."""

    slow_link_ms: int = 35
    background_sync_interval_min: int = 120
    background_sync_max_offset_min: int = 60
    always_offline: bool = False
    fetch_uncached_on_slow_link: bool = True
    cost_aware_sync: bool = True
    sync_on_metered: bool = False
    #: upload caps, KiB/s (0: none): in every mode, and on a slow link (trickle, keep it usable)
    upload_cap_kibps: int = 0
    slow_link_upload_kibps: int = 1024
    cache_size_limit: CacheSizeLimit = CacheSizeLimit()
    exclude_patterns: tuple[str, ...] = ("*.tmp", "~$*", ".~lock.*#")
    max_file_size_bytes: int = 10 * GB
    per_path: tuple[PathOverride, ...] = ()
    #: desktop notifications (conflicts, sync problems, offline, cache nearly full)
    notifications: bool = True


@dataclass(frozen=True, slots=True)
class SecurityPolicy:
    require_encryption: bool = True
    require_signing: bool = True
    credentials: CredentialSource = CredentialSource()
    #: False: never NTLM, even where cscd.yaml names a credentials file (Kerberos only)
    allow_ntlm: bool = True
    #: the servers a DFS referral may send this client to (host patterns); empty: any
    dfs_servers: tuple[str, ...] = ()


#: ``device.cache_key``: the desktop's keyring holds the cache's key (made there at first use)
SECRET_SERVICE_KEY = "secret-service"
#: ``device.wipe: all``: every folder of the user on this machine; ``wipe_when_unreachable``
WIPE_ALL = "all"
WIPE_CHOICES = ("wait", "wipe")
#: ``device.encrypt_with``
ENCRYPT_WITH_CHOICES = ("auto", "fscrypt", "cscd")


@dataclass(frozen=True, slots=True)
class DevicePolicy:
    """What the organisation asks of the machine that holds its files (Work Folders' device
    policies): the cache encrypted at rest, with its key unlocked with the user's session."""

    encrypt_cache: bool = False
    #: where the key is kept: ``secret-service``, or ``systemd:NAME`` (a credential the unit
    #: passes: ``LoadCredentialEncrypted=NAME:...``)
    cache_key: str = SECRET_SERVICE_KEY
    #: how a cache not yet encrypted is: ``auto``, ``fscrypt`` or ``cscd`` (``cscd.cache.protection``)
    encrypt_with: str = "auto"
    #: the session must lock its screen, with a password, within ``screen_lock_max_idle_min``
    require_screen_lock: bool = False
    screen_lock_max_idle_min: int = 15
    #: False: while the session does not comply, cached files are not served offline
    offline_when_noncompliant: bool = True
    #: selective wipe: ``"all"`` or the names of folders whose cached copy is destroyed
    #: (after their changes are uploaded), and that are not served here any more
    wipe: tuple[str, ...] | str = ()
    #: a revoked folder with changes its server cannot take now: ``wait`` for the server, or
    #: ``wipe`` at once (the changes are lost)
    wipe_when_unreachable: str = "wait"

    def wiped(self, folders: tuple[str, ...] | list[str]) -> list[str]:
        """Of ``folders``, those the policy revokes."""
        return list(folders) if self.wipe == WIPE_ALL else [f for f in folders if f in self.wipe]


#: ``roaming_profile.kind``: a normal roaming profile, a mandatory one, a super-mandatory one
ROAMING_KIND, MANDATORY, SUPER_MANDATORY = "roaming", "mandatory", "super_mandatory"
PROFILE_KINDS = (ROAMING_KIND, MANDATORY, SUPER_MANDATORY)

#: What roams by default: these folders below the home directory, with everything in them.
ROAMING_INCLUDE: tuple[str, ...] = (".config", ".local/share")


#: ``primary_computers: directory``: the user's ``msDS-PrimaryComputer``, read through SSSD
DIRECTORY = "directory"
#: what ``primary_computers_for`` may name
REDIRECTION, ROAMING = "redirection", "roaming"

#: ``roaming_profile.redirections_xml: central``: the ``redirections.xml`` of the central source's copy
CENTRAL = "central"


@dataclass(frozen=True, slots=True)
class BackgroundUpload:
    """When the roaming profile is uploaded while the user is logged on (Windows: "background
    upload of a roaming user profile's registry file"): every ``interval_hours`` or daily at
    ``time_of_day`` ("HH:MM", local time), each run delayed by up to ``max_offset_min``."""

    #: ``background_upload: true``: the seed's default schedule (a set interval of 12 h; its
    #: time-of-day form has to be written out, ``{time_of_day: '03:00'}``).
    DEFAULT_INTERVAL_HOURS: ClassVar[int] = 12

    interval_hours: int | None = None
    time_of_day: str | None = None
    max_offset_min: int = 60

    @property
    def is_on(self) -> bool:
        return self.interval_hours is not None or self.time_of_day is not None

    def __str__(self) -> str:
        if self.interval_hours is not None:
            return f"every {self.interval_hours} h"
        if self.time_of_day is not None:
            return f"daily at {self.time_of_day}"
        return "off"


@dataclass(frozen=True, slots=True)
class RoamingProfilePolicy:
    """The roaming profile: the parts of the home directory that are not redirected folders.

    ``exclude_patterns`` are added to the built-in exclusions (cscd's own state, caches,
    locks), never replace them: those protect the machine, not a preference.
    """

    target: UncTarget | None = None
    enabled: bool = True
    include: tuple[str, ...] = ROAMING_INCLUDE
    include_dotfiles: bool = True
    exclude_patterns: tuple[str, ...] = ()
    max_file_size_bytes: int | None = None
    #: a local file, ``CENTRAL`` (the central source's copy), or None
    redirections_xml: Path | str | None = None
    background_upload: BackgroundUpload = BackgroundUpload()
    #: ``roaming`` (pushed at logoff), ``mandatory`` (pulled, never pushed: the session's
    #: changes are discarded) or ``super_mandatory`` (mandatory, and no logon without it);
    #: None: from the target, as Windows reads a profile folder named ``*.man``
    kind: str | None = None

    @property
    def effective_kind(self) -> str:
        if self.kind is not None:
            return self.kind
        if self.target is not None and self.target.path and self.target.path[-1].lower().endswith(".man"):
            return SUPER_MANDATORY
        return ROAMING_KIND

    @property
    def is_mandatory(self) -> bool:
        return self.effective_kind in (MANDATORY, SUPER_MANDATORY)

    @property
    def is_on(self) -> bool:
        return self.enabled and self.target is not None


@dataclass(frozen=True)
class Policy:
    """The effective policy. ``origins`` maps each key that a file set to where it was set;
    keys missing from it have their default. ``files`` are the files read, in order."""

    subject: Subject
    folders: tuple[FolderPolicy, ...] = ()
    offline_files: OfflineFilesPolicy = OfflineFilesPolicy()
    security: SecurityPolicy = SecurityPolicy()
    #: host names / machine-ids, or ``DIRECTORY`` (the user's msDS-PrimaryComputer)
    primary_computers: tuple[str, ...] | str = ()
    #: what the primary-computer limit applies to: ``redirection``, ``roaming`` (Windows has one
    #: setting for each; a policy that lists computers limits both unless it says otherwise)
    primary_computers_for: tuple[str, ...] = ("redirection", "roaming")
    #: the directory's list when ``primary_computers`` is ``DIRECTORY``; None: it could not be read
    directory_hosts: tuple[str, ...] | None = None
    central_source: UncTarget | None = None
    roaming_profile: RoamingProfilePolicy = RoamingProfilePolicy()
    device: DevicePolicy = DevicePolicy()
    origins: tuple[tuple[str, Origin], ...] = ()
    files: tuple[Path, ...] = field(default=())

    def folder(self, name: str) -> FolderPolicy | None:
        return next((f for f in self.folders if f.name == name), None)

    def origin(self, key: str) -> Origin | None:
        """Where ``key`` (dotted, as in ``cscd policy show``) was set; None for a default."""
        return dict(self.origins).get(key)

    def is_primary_computer(self, for_: str = REDIRECTION) -> bool:
        """True if folder redirection (``for_="redirection"``) or the roaming profile
        (``"roaming"``) applies on the subject's machine.

        Windows' two settings, "redirect folders on primary computers only" and "download
        roaming profiles on primary computers only", are ``primary_computers_for``. An empty
        list of computers means every machine is primary, as does a directory that lists none
        for the user or cannot be read (Windows applies the limit only to users who have
        primary computers).
        """
        if for_ not in self.primary_computers_for:
            return True
        hosts = self.directory_hosts if self.primary_computers == DIRECTORY else self.primary_computers
        if not hosts:
            return True
        return any(self.subject.is_host(name) for name in hosts)

    def roams(self) -> bool:
        """True if the roaming profile applies here (on, and a primary computer for roaming)."""
        return self.roaming_profile.is_on and self.is_primary_computer(ROAMING)

"""Settings of the roaming profile: what roams, what never moves, when background uploads run.

Owns ``ProfileSettings`` (frozen; its defaults live here) and the default exclusion patterns.
Pure: no I/O, no logging, no network. ``from_policy.py`` builds it from the policy's
``roaming_profile`` keys.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cscd.policy.fslogix import ProfileExclusions
from cscd.policy.model import ROAMING_INCLUDE

#: Folders below the home directory that roam, with everything below them (the policy's default).
DEFAULT_INCLUDE: tuple[str, ...] = ROAMING_INCLUDE

#: Patterns that never move, in either direction. ``name/`` matches directories only; a pattern
#: with a ``/`` inside is matched against the whole home-relative path, otherwise against the
#: last component at any depth (``fnmatch``, case-sensitive as the local filesystem is).
DEFAULT_EXCLUDE_PATTERNS: tuple[str, ...] = (
    ".cache/",
    # cscd's own configuration, credentials and state, and the per-machine folder map it writes
    ".config/cscd/",
    ".local/share/cscd/",
    ".config/user-dirs.dirs",
    # per-machine or bulky data that does not belong in a roaming profile
    ".local/share/Trash/",
    ".local/share/flatpak/",
    ".local/share/containers/",
    ".local/share/baloo/",
    ".local/share/tracker/",
    ".local/share/gvfs-metadata/",
    ".config/pulse/",
    # locks, swap and temporary files
    "*.lock",
    "lock",
    "*.tmp",
    "*.swp",
    ".~lock.*#",
)

#: Longest random delay added to each background upload (Windows: up to one hour).
DEFAULT_UPLOAD_MAX_OFFSET_S = 3600.0


@dataclass(frozen=True)
class ProfileSettings:
    """How one user's roaming profile behaves on this machine.

    Paths in ``include`` are relative to the home directory, ``/``-separated; a folder roams
    with everything below it, a file as itself. ``include_dotfiles`` adds the plain files
    directly in the home directory whose names start with ``.`` (``.bashrc``, ``.gitconfig``).
    ``exclusions`` is the parsed ``redirections.xml``; ``exclude_paths`` are absolute local
    paths that never roam (the daemon passes the mount point, the cache directory and the
    redirected folders). ``state_path`` is where the last agreed listing is kept; None means
    ``~/.local/state/cscd/profile-state.json``.

    Background upload is off unless ``upload_interval_s`` or ``upload_time_of_day`` is set
    (not both); each run is delayed further by a random offset in ``[0, upload_max_offset_s]``.
    It is skipped on a slow link or a metered network unless the matching flag allows it.
    """

    include: tuple[str, ...] = DEFAULT_INCLUDE
    include_dotfiles: bool = True
    exclude_patterns: tuple[str, ...] = DEFAULT_EXCLUDE_PATTERNS
    exclusions: ProfileExclusions = field(default_factory=ProfileExclusions)
    exclude_paths: tuple[Path, ...] = ()
    state_path: Path | None = None
    #: files larger than this never roam (None: no limit)
    max_file_size_bytes: int | None = None
    #: transfers and directory listings in flight at once
    transfers: int = 4
    #: two write times closer than this are the same time (SMB keeps 100 ns)
    time_slack_ns: int = 100
    upload_interval_s: float | None = None
    upload_time_of_day: datetime.time | None = None
    upload_max_offset_s: float = DEFAULT_UPLOAD_MAX_OFFSET_S
    upload_on_slow_link: bool = False
    upload_on_metered: bool = False
    #: host name used in conflict copies' names (None: this machine's short name)
    host: str | None = None
    #: a mandatory profile: pulled at logon over whatever the session changed, never pushed
    mandatory: bool = False
    #: super-mandatory: mandatory, and a logon without it is refused (``wait-logon`` fails)
    super_mandatory: bool = False

    def __post_init__(self) -> None:
        for entry in self.include:
            p = PurePosixPath(entry)
            if not entry or p.is_absolute() or ".." in p.parts or "." in entry.split("/"):
                raise ValueError(f"roaming profile include {entry!r} must be a path relative "
                                 f"to the home directory, without '.' or '..'")
        if self.upload_interval_s is not None and self.upload_interval_s <= 0:
            raise ValueError("the background upload interval must be positive")
        if self.upload_interval_s is not None and self.upload_time_of_day is not None:
            raise ValueError("background upload runs on an interval or at a time of day, "
                             "not both")
        if self.upload_max_offset_s < 0:
            raise ValueError("the background upload's random offset must not be negative")
        if self.transfers < 1:
            raise ValueError("transfers must be at least 1")
        if self.time_slack_ns < 1:
            raise ValueError("time_slack_ns must be at least 1")

    @property
    def is_background_upload_on(self) -> bool:
        return self.upload_interval_s is not None or self.upload_time_of_day is not None

    def state_file(self, home: Path) -> Path:
        """Where the last agreed listing lives for the profile of ``home``."""
        if self.state_path is not None:
            return Path(self.state_path)
        return Path(home) / ".local" / "state" / "cscd" / "profile-state.json"

"""Roaming user profile: the parts of a home directory that are not redirected folders
(``~/.config``, ``~/.local/share``, dotfiles) roam through a server folder.

Only ``cscd.sync`` (conflict names), ``cscd.upstream``, ``cscd.policy`` and the leaves are
imported; the cache and the FUSE mount are never touched — the profile lives in the real home
directory, not on the mount. Modules, top to bottom:

- ``service.py``: ``ProfileService`` — background upload task, ``logon``/``logoff`` for the
  control handlers, events.
- ``schedule.py``: when background uploads run (interval or time of day + random offset) and
  in which link modes they are skipped. Pure.
- ``sync.py``: ``logon`` (pull) and ``logoff`` (push) — walk, decide, move, save the state.
- ``merge.py``: the per-path decision table (timestamp merge against the last agreement). Pure.
- ``transfer.py``: one download / upload / delete, with the checks that make it safe.
- ``tree.py``: listing the home directory and the server folder.
- ``scope.py``: what roams: include list, patterns, ``redirections.xml``, names. Pure.
- ``state.py``: the last agreed listing (one JSON file).
- ``settings.py``: ``ProfileSettings``. ``work.py``: bounded concurrent tasks.
- ``from_policy.py``: settings and service from the effective policy (reads redirections.xml).

How the merge works (Windows' roaming profile, with memory): a logon pulls — server files
that are newer or new come down, server deletions since the last agreement are applied — and a
logoff (or a background upload) pushes the same way in the other direction. The state file
remembers what both sides agreed on, so a file deleted on one side is deleted on the other
instead of coming back; a file changed on both sides keeps both versions (the newer keeps the
name, the older becomes a conflict copy), so nothing is lost.

The policy's ``roaming_profile`` keys (``policy/model.py``) become ``ProfileSettings`` in
``from_policy.py``, which also builds the service for the daemon; the daemon adds
``exclude_paths`` (mount point, cache directory, redirected folders) itself.

Not supported: symbolic links, special files and POSIX modes do not roam; names the server
cannot store are reported and stay local; no delta upload (profile files are small);
server changes reach the machine only at logon, as on Windows.
"""

from cscd.profile.schedule import UploadSchedule, skip_reason
from cscd.profile.service import ProfileService, ProfileStatistics
from cscd.profile.settings import DEFAULT_EXCLUDE_PATTERNS, DEFAULT_INCLUDE, ProfileSettings
from cscd.profile.sync import LogoffReport, LogonReport, RoamReport, logoff, logon

__all__ = [
    "DEFAULT_EXCLUDE_PATTERNS",
    "DEFAULT_INCLUDE",
    "LogoffReport",
    "LogonReport",
    "ProfileService",
    "ProfileSettings",
    "ProfileStatistics",
    "RoamReport",
    "UploadSchedule",
    "logoff",
    "logon",
    "skip_reason",
]

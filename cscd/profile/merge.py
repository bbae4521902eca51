"""What to do with one path of the roaming profile: the timestamp merge, as a pure function.

Owns the decision table; no I/O, no clock, no logging. ``sync.py`` carries decisions out.

Inputs are the local entry (None: absent), the server entry (None: absent) and the base (the
last agreed versions, None when this machine never agreed on the path). A side *changed* when
it differs from its half of the base. Rules, for files:

- neither side changed: nothing;
- one side changed (edited, created or deleted): the change goes to the other side — but a
  logon only pulls and a logoff only pushes, so the other direction answers ``WAIT``;
- both changed: equal versions (same size, same time) are simply agreed; a deletion loses to
  an edit (nothing is lost); two edits: the newer write time keeps the name and the older is
  kept beside it as ``name (conflict HOST DATE TIME).ext``, made on the side that holds the
  loser — by a logon on this machine, by a logoff on the server;
- no base (first meeting): equal versions are agreed, otherwise the newer write time wins and
  overwrites the older (Windows' roaming-profile behaviour); a file on one side only is new and
  is copied, never deleted. Equal times with different sizes cannot be ordered: a logon keeps
  both, a logoff waits for the logon.

Folders: created on the other side when new, removed from the other side when deleted since
the base (only if empty, after their files). A folder on one side and a file on the other is
a clash the user must resolve; nothing moves.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cscd.profile.scope import Direction
from cscd.profile.state import BaseEntry, LocalVersion, RemoteVersion
from cscd.types import RemoteEntry


@dataclass(frozen=True, slots=True)
class LocalEntry:
    """A home-directory entry as a walk saw it (``lstat``; symlinks are never entries)."""

    is_dir: bool
    size: int
    mtime_ns: int

    @property
    def version(self) -> LocalVersion:
        return (self.size, self.mtime_ns)


class Action(enum.Enum):
    NOTHING = "nothing"
    WAIT = "wait"  # a change the other direction will carry
    AGREE = "agree"  # both sides hold the same version: record it as the base
    FORGET = "forget"  # gone on both sides: drop the base
    CLASH = "clash"  # a folder on one side, a file on the other
    # pull (logon)
    DOWNLOAD = "download"
    DELETE_LOCAL = "delete_local"
    CONFLICT_LOCAL = "conflict_local"  # keep the local file as a conflict copy, then download
    MKDIR_LOCAL = "mkdir_local"
    RMDIR_LOCAL = "rmdir_local"
    # push (logoff, background upload)
    UPLOAD = "upload"
    DELETE_REMOTE = "delete_remote"
    CONFLICT_REMOTE = "conflict_remote"  # keep the server file as a conflict copy, then upload
    MKDIR_REMOTE = "mkdir_remote"
    RMDIR_REMOTE = "rmdir_remote"


def remote_version(entry: RemoteEntry | None) -> RemoteVersion | None:
    return None if entry is None else (entry.size, entry.mtime_ns, entry.file_id)


def local_version(entry: LocalEntry | None) -> LocalVersion | None:
    return None if entry is None else entry.version


def decide(direction: Direction, local: LocalEntry | None, remote: RemoteEntry | None,
           base: BaseEntry | None, *, slack_ns: int = 100) -> Action:
    """The action for one path in ``direction`` (see the module docstring for the table)."""
    if local is None and remote is None:
        return Action.FORGET if base is not None else Action.NOTHING
    if local is not None and remote is not None and local.is_dir != remote.is_dir:
        return Action.CLASH
    is_dir = local.is_dir if local is not None else remote.is_dir  # type: ignore[union-attr]
    if base is not None and base.is_dir != is_dir:
        base = None  # the path changed kind since the base: treat it as new
    if is_dir:
        return _decide_dir(direction, local is not None, remote is not None, base is not None)
    return _decide_file(direction, local, remote, base, slack_ns)


def decide_mandatory(local: LocalEntry | None, remote: RemoteEntry | None, *, slack_ns: int = 100) -> Action:
    """A mandatory profile's logon: the server's profile as it is, whatever this machine has
    (what the last session changed is discarded, as Windows drops a mandatory profile's local
    copy at logoff); never a conflict copy, never an upload."""
    if local is None and remote is None:
        return Action.NOTHING
    if local is not None and remote is not None and local.is_dir != remote.is_dir:
        return Action.CLASH
    if local is None:
        return Action.MKDIR_LOCAL if remote.is_dir else Action.DOWNLOAD  # type: ignore[union-attr]
    if remote is None:
        return Action.RMDIR_LOCAL if local.is_dir else Action.DELETE_LOCAL
    if local.is_dir or _same(local, remote, slack_ns):
        return Action.AGREE
    return Action.DOWNLOAD


def _decide_dir(direction: Direction, has_local: bool, has_remote: bool, has_base: bool) -> Action:
    if has_local and has_remote:
        return Action.AGREE
    pull = direction is Direction.PULL
    if has_remote:  # only on the server
        if has_base:  # deleted here since the base
            return Action.WAIT if pull else Action.RMDIR_REMOTE
        return Action.MKDIR_LOCAL if pull else Action.WAIT
    if has_base:  # only here; deleted on the server since the base
        return Action.RMDIR_LOCAL if pull else Action.WAIT
    return Action.WAIT if pull else Action.MKDIR_REMOTE


def _same(local: LocalEntry, remote: RemoteEntry, slack_ns: int) -> bool:
    return local.size == remote.size and abs(local.mtime_ns - remote.mtime_ns) < slack_ns


def _newer(a_ns: int, b_ns: int, slack_ns: int) -> bool:
    return a_ns - b_ns >= slack_ns


def _decide_file(direction: Direction, local: LocalEntry | None, remote: RemoteEntry | None,
                 base: BaseEntry | None, slack_ns: int) -> Action:
    pull = direction is Direction.PULL
    if base is None:
        if local is None:
            return Action.DOWNLOAD if pull else Action.WAIT
        if remote is None:
            return Action.WAIT if pull else Action.UPLOAD
        if _same(local, remote, slack_ns):
            return Action.AGREE
        if _newer(remote.mtime_ns, local.mtime_ns, slack_ns):
            return Action.DOWNLOAD if pull else Action.WAIT
        if _newer(local.mtime_ns, remote.mtime_ns, slack_ns):
            return Action.WAIT if pull else Action.UPLOAD
        return Action.CONFLICT_LOCAL if pull else Action.WAIT  # same time, other content

    local_changed = local_version(local) != base.local
    remote_changed = remote_version(remote) != base.remote
    if not local_changed and not remote_changed:
        return Action.NOTHING
    if local_changed and not remote_changed:
        if pull:
            return Action.WAIT
        return Action.DELETE_REMOTE if local is None else Action.UPLOAD
    if remote_changed and not local_changed:
        if not pull:
            return Action.WAIT
        return Action.DELETE_LOCAL if remote is None else Action.DOWNLOAD
    # both changed since the base
    if local is None:  # deleted here, edited (or created) there: the edit wins
        return Action.DOWNLOAD if pull else Action.WAIT
    if remote is None:  # edited here, deleted there
        return Action.WAIT if pull else Action.UPLOAD
    if _same(local, remote, slack_ns):
        return Action.AGREE
    if _newer(local.mtime_ns, remote.mtime_ns, slack_ns):
        return Action.WAIT if pull else Action.CONFLICT_REMOTE
    return Action.CONFLICT_LOCAL if pull else Action.WAIT

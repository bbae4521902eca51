"""The three-way reconcile decision: (base, local, remote) → what to do. Pure; no I/O.

Owns the one rule that says when a conflict copy is made, and every other answer to "the
server and this client disagree about a name" (DESIGN.md invariants 4 and 8). Nothing here
touches LMDB, the content store or the network, and nothing here awaits: the callers read
the three states, call ``decide``, and carry out the ``Action`` (inside their own
transaction, or with their own server calls).

Why a leaf module and not ``sync/reconcile.py``: both sides apply the rule. The cache applies
it when a listing arrives (``cache/merge.py``: what a server change does to a node), sync
applies it when an upload meets the server (``sync/push.py``: the server is not the base any
more). The cache and sync may not import each other, so the rule lives below both, with
``types`` as its only import.

The states:

- *base*: the version both sides last agreed on (a ``RemoteEntry`` from the index), or None
  for a name this client never saw on the server;
- *local*: ``Local`` — whether the node still exists here and whether it (or, for a
  directory, anything under it) changed since the base;
- *remote*: what the server holds under the base's name now (a ``RemoteEntry``), or None;
- *ours*: what this client itself put there last (``Ours``: size and write time of an upload
  whose answer may have been lost to a crash or a broken link), or None.

A conflict needs a version on the server that is neither the base nor ours, and a change
here: one writer alone never makes one, whatever the interleaving of its own uploads,
listings and crashes (``tests/test_reconcile.py`` checks that over random histories).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cscd.types import RemoteEntry

#: SMB keeps write times in 100 ns units: what we set comes back rounded down to them.
SMB_TIME_UNIT_NS = 100


class Action(enum.Enum):
    """What to do with one name; the docstring of ``decide`` says when each applies."""

    NOTHING = "nothing"  # both sides agree
    PUSH = "push"  # only this side changed: upload (or mkdir, rename, set times) over the base
    DELETE_REMOTE = "delete_remote"  # deleted here, server still at the base: delete it there
    ADD = "add"  # new on the server: a placeholder here
    FOLLOW = "follow"  # only the server changed: take its version (drop stale content)
    REPLACE_KIND = "replace_kind"  # the server turned a clean file into a folder or back
    FORGET = "forget"  # the server deleted it and nothing changed here: delete it here
    KEEP_AS_NEW = "keep_as_new"  # the server deleted it, but it changed here: upload it as new
    RESTORE = "restore"  # deleted here, changed there: the server's version comes back
    ADOPT = "adopt"  # the server holds what we uploaded ourselves: record it as the base
    CONFLICT = "conflict"  # both changed: keep both, the local version as a conflict copy


@dataclass(frozen=True, slots=True)
class Local:
    """This side's state of one node, as far as reconciling needs it."""

    exists: bool = True  # False: deleted here (a tombstone waiting for its server delete)
    changed: bool = False  # dirty, or (a directory) something under it is dirty
    is_dir: bool = False


@dataclass(frozen=True, slots=True)
class Ours:
    """A version this client put on the server itself: an upload (its size and the write time
    it set; the server picks the file id) or a rename (the base it moved: size, time and id)."""

    size: int
    mtime_ns: int
    file_id: int = 0  # 0: not known in advance (an upload's temporary gets a new one)
    is_dir: bool = False

    def is_(self, entry: RemoteEntry) -> bool:
        """True if ``entry`` is this version (same kind and id if known; a file's size and the
        write time we set, to SMB's unit)."""
        if entry.is_dir != self.is_dir or (self.file_id and entry.file_id != self.file_id):
            return False
        return self.is_dir or (entry.size == self.size
                               and entry.mtime_ns == self.mtime_ns // SMB_TIME_UNIT_NS * SMB_TIME_UNIT_NS)


@dataclass(frozen=True, slots=True)
class Unrecorded:
    """A server change this client started and has not recorded: node ``node_id`` put
    ``ours`` under the name ``name`` of the directory node ``parent`` (see ``cache.unrecorded``)."""

    parent: int
    name: bytes
    node_id: int
    ours: Ours


def same_version(base: RemoteEntry, remote: RemoteEntry) -> bool:
    """Whether ``remote`` is still the agreed version: same kind and server id, and for a file
    the same size and write time. A directory's times move with its children; they do not
    make it another version."""
    return (base.is_dir == remote.is_dir and base.file_id == remote.file_id
            and (base.is_dir or (base.size == remote.size and base.mtime_ns == remote.mtime_ns)))


def decide(base: RemoteEntry | None, local: Local | None, remote: RemoteEntry | None, *,
           ours: Ours | None = None) -> Action:
    """The action for one name, from its base, local and remote states (``local=None``: no
    node here holds that name at all).

    ========  ==================  ==================  ==========================================
    base      local               remote              action
    ========  ==================  ==================  ==========================================
    none      none                none / present      NOTHING / ADD
    none      exists              none                PUSH (a new name)
    none      exists              ours                ADOPT (our upload, its answer lost)
    none      exists (a dir)      a dir               ADOPT (the same folder made on both sides)
    none      exists              other               CONFLICT (someone else took the name)
    none      deleted             any                 NOTHING (it never reached the server)
    B         clean / changed     B                   NOTHING / PUSH
    B         deleted             B                   DELETE_REMOTE
    B         any                 none                FORGET if clean or deleted, else KEEP_AS_NEW
    B         any                 ours                ADOPT
    B         clean               other, same kind    FOLLOW
    B         clean               other kind          REPLACE_KIND
    B         deleted             other               RESTORE
    B         changed             other               CONFLICT
    ========  ==================  ==================  ==========================================

    ``ours`` is consulted only when the server is not at the base: an upload that reached
    the server but was never recorded (a crash between the two, a lost answer) is adopted,
    never mistaken for someone else's change.
    """
    if base is None:
        if local is None:
            return Action.NOTHING if remote is None else Action.ADD
        if not local.exists:
            return Action.NOTHING
        if remote is None:
            return Action.PUSH
        if ours is not None and ours.is_(remote):
            return Action.ADOPT
        if remote.is_dir and local.is_dir:
            return Action.ADOPT
        return Action.CONFLICT
    local = local if local is not None else Local(exists=False)
    if remote is None:
        return Action.KEEP_AS_NEW if local.exists and local.changed else Action.FORGET
    if same_version(base, remote):
        if not local.exists:
            return Action.DELETE_REMOTE
        return Action.PUSH if local.changed else Action.NOTHING
    if ours is not None and ours.is_(remote):
        return Action.ADOPT
    if not local.exists:
        return Action.RESTORE
    if local.changed:
        return Action.CONFLICT
    return Action.FOLLOW if remote.is_dir == base.is_dir else Action.REPLACE_KIND

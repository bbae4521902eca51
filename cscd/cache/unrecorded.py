"""Server changes this client started and has not recorded: where, by which node, what version.

Owns the ``unrecorded`` table (see ``index``). An upload or a rename is noted here, in a
transaction of its own, before it goes to the server; recording its result
(``SyncSide.record_synced``) removes the note. A note that outlives that names a server file
the index knows nothing about although it is ours: the daemon was killed between the server
change and its record, or the answer was lost. The note says what that file is
(``reconcile.Ours``), so that

- an upload that meets it builds on it instead of calling it a second writer's change
  (``sync.push``: one writer never conflicts with itself);
- a listing that shows it does not bring it back here as someone else's new file
  (``merge``: a file deleted or renamed here before its upload was recorded stays gone);
- the push's recovery sweep gives it back to its node as the base, or deletes it if no node
  wants it any more (``sync.push.Pusher.recover_unrecorded``).

Keys are those of ``bases`` (parent id u64 + name): the notes of a name are found with one
get, whichever node made them. Transaction-level functions only; ``SyncSide`` wraps them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import lmdb

from cscd.cache.index import Index, from_u64, u64
from cscd.reconcile import Ours, Unrecorded

_NOTE = struct.Struct(">QBQqQ")  # node id, is a directory, size, write time ns, file id
#: Notes kept per name (one per crash or lost answer in a row), newest first.
KEPT = 4


def _unpack(parent: int, name: bytes, data: bytes) -> list[Unrecorded]:
    out = []
    for i in range(0, len(data) - len(data) % _NOTE.size, _NOTE.size):
        node_id, is_dir, size, mtime_ns, file_id = _NOTE.unpack_from(data, i)
        out.append(Unrecorded(parent, name, node_id, Ours(size, mtime_ns, file_id, bool(is_dir))))
    return out


def _pack(notes: list[Unrecorded]) -> bytes:
    return b"".join(_NOTE.pack(n.node_id, n.ours.is_dir, n.ours.size, n.ours.mtime_ns, n.ours.file_id)
                    for n in notes)


def at(ix: Index, txn: lmdb.Transaction, parent: int, name: bytes) -> list[Unrecorded]:
    """The notes of one name, newest first."""
    return _unpack(parent, name, bytes(txn.get(ix.child_key(parent, name), b"", db=ix.unrecorded)))


def _store(ix: Index, txn: lmdb.Transaction, parent: int, name: bytes, notes: list[Unrecorded]) -> None:
    key = ix.child_key(parent, name)
    if notes:
        txn.put(key, _pack(notes[:KEPT]), db=ix.unrecorded)
    else:
        txn.delete(key, db=ix.unrecorded)


def add(ix: Index, txn: lmdb.Transaction, note: Unrecorded) -> list[Unrecorded]:
    """Note a change about to go to the server; returns the notes the name had before."""
    before = [n for n in at(ix, txn, note.parent, note.name) if n != note]
    _store(ix, txn, note.parent, note.name, [note, *before])
    return before


def remove(ix: Index, txn: lmdb.Transaction, parent: int, name: bytes, node_id: int) -> None:
    """Drop the notes ``node_id`` made for a name (its change there is recorded or settled)."""
    notes = at(ix, txn, parent, name)
    kept = [n for n in notes if n.node_id != node_id]
    if len(kept) != len(notes):
        _store(ix, txn, parent, name, kept)


def clear(ix: Index, txn: lmdb.Transaction, parent: int, name: bytes) -> None:
    """Drop every note of a name (the server holds a recorded version there now)."""
    txn.delete(ix.child_key(parent, name), db=ix.unrecorded)


def discard(ix: Index, txn: lmdb.Transaction, note: Unrecorded) -> None:
    """Drop one note."""
    notes = at(ix, txn, note.parent, note.name)
    if note in notes:
        _store(ix, txn, note.parent, note.name, [n for n in notes if n != note])


def iter_all(ix: Index, txn: lmdb.Transaction) -> Iterator[Unrecorded]:
    for key, value in txn.cursor(db=ix.unrecorded):
        yield from _unpack(from_u64(bytes(key[:8])), ix.name_of(key), bytes(value))


def any_under(ix: Index, txn: lmdb.Transaction, dir_id: int) -> bool:
    """Whether some name in directory ``dir_id`` has a note."""
    cursor = txn.cursor(db=ix.unrecorded)
    prefix = u64(dir_id)
    return cursor.set_range(prefix) and bytes(cursor.key()[:8]) == prefix


def claims(ix: Index, txn: lmdb.Transaction, parent: int, entry) -> Unrecorded | None:
    """The note whose version ``entry`` (a server entry under ``parent``) is, if any."""
    return next((n for n in at(ix, txn, parent, entry.name) if n.ours.is_(entry)), None)

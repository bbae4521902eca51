"""Newer server versions of complete cached copies, waiting to be swapped in whole.

Owns the ``newer`` table (see ``index``) and the swap that replaces a file's content with a
new server version in one step. Offline Files keeps a file it holds offline readable in
every mode: in a folder that serves its cached files without asking the server (every mode
but online: slow link, always offline, metered, offline, working offline), a listing that
shows a newer version of a *complete* copy does not empty it (``merge``): the old bytes and
the old base stay, and the new version is noted here. Sync (``cscd.sync.refresh``) fetches
it whole into ``content/newer/<id>`` when the folder's mode allows (a background session, a
manual sync, online) and ``swap`` puts it in place. Until then the user reads the old
version; a local write meanwhile is a change against the old base, so the push sees both
sides changed and keeps both (a conflict copy), as it should.

The swap survives a crash at any point: the note turns ``SWAPPING`` in one transaction,
the fetched file is renamed over the content file, and a second transaction makes the new
version the base. On opening the cache, ``recover`` finishes a swap whose rename happened
(the fetched file is gone) and undoes one whose rename did not (it is still there).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import lmdb

from cscd.cache import nodes
from cscd.cache.index import Index, from_u64, u64
from cscd.cache.nodes import Flag, Node
from cscd.types import RemoteEntry

_NOTE = struct.Struct(">QQqqB")  # file id, size, write time ns, change time ns, state
WAITING, SWAPPING = 0, 1


def _pack(entry: RemoteEntry, state: int) -> bytes:
    return _NOTE.pack(entry.file_id, entry.size, entry.mtime_ns, entry.ctime_ns, state)


def _unpack(node: Node, data: bytes) -> tuple[RemoteEntry, int]:
    file_id, size, mtime_ns, ctime_ns, state = _NOTE.unpack(data)
    return RemoteEntry(node.base_name, False, size, mtime_ns, ctime_ns, file_id), state


def note(ix: Index, txn: lmdb.Transaction, node: Node, entry: RemoteEntry) -> None:
    """The server holds ``entry``, newer than the node's complete copy: swap it in later."""
    txn.put(u64(node.id), _pack(entry, WAITING), db=ix.newer)


def get(ix: Index, txn: lmdb.Transaction, node: Node) -> RemoteEntry | None:
    data = txn.get(u64(node.id), db=ix.newer)
    return None if data is None else _unpack(node, bytes(data))[0]


def drop(ix: Index, txn: lmdb.Transaction, node_id: int) -> None:
    txn.delete(u64(node_id), db=ix.newer)


def iter_ids(ix: Index, txn: lmdb.Transaction) -> Iterator[int]:
    for key in txn.cursor(db=ix.newer).iternext(values=False):
        yield from_u64(bytes(key))


def become_placeholder(ix: Index, txn: lmdb.Transaction, node: Node) -> None:
    """The node's content is going (eviction): let the placeholder name the newer version,
    so the next read fetches that one and not a mix of two."""
    entry = get(ix, txn, node)
    if entry is None:
        return
    drop(ix, txn, node.id)
    nodes.set_base(ix, txn, node, node.base_parent, entry)
    node.size = entry.size
    node.mtime_ns = entry.mtime_ns or node.mtime_ns


def fetched_path(content_root: Path, node_id: int) -> Path:
    """Where sync writes the newer version before the swap (same filesystem as the content)."""
    return content_root / "newer" / f"{node_id:016x}"


def begin_swap(ix: Index, txn: lmdb.Transaction, node: Node, entry: RemoteEntry) -> bool:
    """Mark the swap as started, if ``entry`` is still the newer version the node waits for."""
    if get(ix, txn, node) != entry:
        return False
    txn.put(u64(node.id), _pack(entry, SWAPPING), db=ix.newer)
    return True


def finish_swap(ix: Index, txn: lmdb.Transaction, node: Node, entry: RemoteEntry) -> None:
    """The fetched file is the content file now: make its version the base."""
    drop(ix, txn, node.id)
    nodes.set_base(ix, txn, node, node.base_parent, entry)
    node.size = entry.size
    node.mtime_ns = entry.mtime_ns or node.mtime_ns
    node.ctime_ns = entry.ctime_ns or node.ctime_ns
    node.flags |= Flag.HYDRATED
    txn.delete(u64(node.id), db=ix.ranges)
    txn.delete(u64(node.id), db=ix.chunks)  # the map described the old version
    nodes.put(ix, txn, node)


def recover(ix: Index, content_root: Path) -> list[int]:
    """Finish or undo the swaps a crash interrupted; returns the ids whose swap finished."""
    done = []
    with ix.env.begin(write=True) as txn:
        for key, data in list(txn.cursor(db=ix.newer)):
            node = nodes.find(ix, txn, from_u64(bytes(key)))
            if node is None:
                txn.delete(key, db=ix.newer)
                continue
            entry, state = _unpack(node, bytes(data))
            fetched = fetched_path(content_root, node.id)
            if state != SWAPPING:
                fetched.unlink(missing_ok=True)  # a fetch the crash cut short
                continue
            if fetched.exists():
                os.unlink(fetched)  # the rename never happened: the old copy stands
                txn.put(key, _pack(entry, WAITING), db=ix.newer)
            else:
                finish_swap(ix, txn, node, entry)
                done.append(node.id)
    return done

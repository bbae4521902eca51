"""Selective wipe: a revoked folder's cached copy destroyed (``device.wipe``).

Owns finding everything the cache holds for one redirected folder — every node below it,
live or a tombstone waiting for its server delete — and removing it: its content file
overwritten with zeros before it is deleted, or in a sealed cache deleted and its folder's
key destroyed, which makes every copy of its blocks unreadable (``ContentStore.destroy``,
``Sealer.erase_folder_keys``), its rows in every table
of the index (record, names, base, dirty mark, ranges, chunks, pins, LRU, conflicts, notes of
uploads under way). The folder's own node stays, empty and never listed, so the mount's
root keeps a consistent shape; ``Hydration.revoked`` refuses it.

Nothing here decides whether the folder's changes went up first: ``operations.wipe`` does.
Works in batches of ``BATCH`` nodes per write transaction with a checkpoint between, so the
mount keeps answering while a large folder goes. LMDB keeps freed pages until it reuses
them, so the folder's names stay in the index file's free space until the next start, which
rewrites the index compacted and overwrites the old file (``index.compact_after_wipe``).
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from cscd.cache import nodes
from cscd.cache.core import CacheCore
from cscd.cache.index import COMPACT_MARKER, from_u64, u64
from cscd.cache.nodes import Flag
from cscd.errors import NotFound
from cscd.types import ROOT_ID

BATCH = 1000


@dataclass
class WipeReport:
    files: int = 0
    bytes_overwritten: int = 0
    #: changes that had not reached the server
    dirty: int = 0
    #: folder keys destroyed (a sealed cache: its files never open again, crypto-erase)
    keys_erased: int = 0


def _members(core: CacheCore, folder: bytes) -> tuple[int | None, list[int]]:
    """The folder's node id and every node below it (tombstones included), deepest last."""
    ix = core.index
    with core.txn() as txn:
        root = nodes.lookup_id(ix, txn, ROOT_ID, folder)
        if root is None:
            return None, []
        found, todo = [], [root]
        while todo:
            parent = todo.pop()
            for child, _name in nodes.iter_children(ix, txn, parent):
                found.append(child)
                todo.append(child)
        ids = set(found)
        tombstones = [node for nid in nodes.iter_tombstones(ix, txn)
                      if nid not in ids and (node := nodes.find(ix, txn, nid)) is not None]
    for node in tombstones:
        try:
            if core.folder_of(node)[0] == folder:
                found.append(node.id)
        except NotFound:
            continue  # detached below another deleted directory: its folder is unknown
    return root, found


async def wipe_folder(core: CacheCore, folder: bytes) -> WipeReport:
    """Destroy what the cache holds for ``folder``; returns what went."""
    report = WipeReport()
    root, members = _members(core, folder)
    if root is None:
        return report
    ix = core.index
    gone = set(members) | {root}
    for start in range(0, len(members), BATCH):
        batch = members[start:start + BATCH]
        # Content first, then the rows: a daemon killed in between leaves rows without
        # content (the next start wipes the folder again), never content without rows.
        for nid in batch:
            report.bytes_overwritten += await trio.to_thread.run_sync(core.store.destroy, nid)
        with core.txn(write=True) as txn:
            for nid in batch:
                node = nodes.find(ix, txn, nid)
                if node is None:
                    continue
                if nodes.dirty_reasons(ix, txn, nid):
                    report.dirty += 1
                if not node.is_dir:
                    report.files += 1
                nodes.unlink(ix, txn, node)
                nodes.delete_record(ix, txn, node)
                for table in (ix.lru, ix.conflicts):
                    txn.delete(u64(nid), db=table)
    with core.txn(write=True) as txn:
        stale = [key for key in txn.cursor(db=ix.unrecorded).iternext(keys=True, values=False)
                 if from_u64(bytes(key[:8])) in gone]
        for key in stale:
            txn.delete(key, db=ix.unrecorded)
        node = nodes.get(ix, txn, root)
        node.flags &= ~Flag.LISTED
        txn.delete(u64(root), db=ix.dirty)
        txn.delete(u64(root), db=ix.listed)
        nodes.put(ix, txn, node)
    # The folder's key last: until its rows are gone its files must still open for a
    # daemon killed midway (which wipes again at its next start, this key included).
    if core.store.sealer is not None:
        report.keys_erased = await trio.to_thread.run_sync(core.store.sealer.erase_folder_keys, folder)
    # LMDB's freed pages still hold the rows until it reuses them: the next start rewrites the
    # index compacted and overwrites the old file (``index.compact_after_wipe``).
    (core.index.path / COMPACT_MARKER).touch()
    core.publish(("inode", root))
    core.publish(("entry", ROOT_ID, folder))
    return report

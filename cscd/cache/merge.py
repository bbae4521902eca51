"""Bringing server news into the index: one directory enumeration merged at a time.

Owns the rules for what a server listing changes locally. The listing is matched against
the *agreed* server names (``bases``), so local changes not yet uploaded are left for sync:
a clean node follows the server (its content is dropped if the version changed), a dirty
one keeps its local state. New server names become placeholders; agreed names gone from
the server vanish locally if their subtree is clean, else lose their base and are uploaded
again as new — nothing local is lost. One write transaction per listing; no network here.

A part of ``Cache`` split out for size: it uses the cache's package-private helpers
(``_txn``, ``_publish``, ``_open_count``) and nothing outside ``cscd.cache`` calls it directly.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from cscd.cache import nodes
from cscd.cache.index import u64
from cscd.cache.nodes import DirtyReason, Flag, Node
from cscd.types import RemoteEntry

if TYPE_CHECKING:
    from cscd.cache.cache import Cache

DEFAULT_FILE_MODE = 0o644
DEFAULT_DIR_MODE = 0o755


def merge_listing(cache: Cache, dir_id: int, entries: list[RemoteEntry]) -> None:
    """Bring a directory's children in line with one server enumeration.

    Matches the listing against the *agreed* server names (``bases``), so local changes
    not yet uploaded are left for sync: a clean node follows the server (its content is
    dropped if the version changed), a dirty one keeps its local state. New server names
    become placeholders; agreed names gone from the server vanish locally if clean.
    """
    ix = cache.index
    now = time.time_ns()
    seen: set[bytes] = set()
    with cache._txn(write=True) as txn:
        parent = nodes.get(ix, txn, dir_id)
        for entry in entries:
            seen.add(entry.name)
            bid = nodes.base_lookup_id(ix, txn, dir_id, entry.name)
            if bid is not None:
                node = nodes.get(ix, txn, bid)
                if node.matches_base(entry) or nodes.dirty_reasons(ix, txn, bid):
                    continue
                if node.is_dir != entry.is_dir:
                    _forget_subtree(cache, txn, node)
                else:
                    _follow_server(cache, txn, node, dir_id, entry)
                    continue
            if nodes.lookup_id(ix, txn, dir_id, entry.name) is not None:
                continue  # a local name not yet on the server: sync sorts it out
            node = Node(
                ix.allocate_id(txn), dir_id, entry.is_dir, Flag(0),
                DEFAULT_DIR_MODE if entry.is_dir else DEFAULT_FILE_MODE,
                0 if entry.is_dir else entry.size, entry.mtime_ns or now, entry.ctime_ns or now,
                0, 0, 0, 0, 0, entry.name, b"",
            )
            if not entry.is_dir and entry.size == 0:
                node.flags |= Flag.HYDRATED
            nodes.set_base(ix, txn, node, dir_id, entry)
            nodes.put(ix, txn, node)
            nodes.link(ix, txn, node)
            cache._publish(("entry", dir_id, entry.name))
        for name, bid in list(nodes.iter_base_children(ix, txn, dir_id)):
            if name in seen:
                continue
            node = nodes.get(ix, txn, bid)
            if _subtree_clean(cache, txn, node):
                _forget_subtree(cache, txn, node)
            else:
                _keep_local_changes(cache, txn, node)
        parent = nodes.get(ix, txn, dir_id)
        parent.flags |= Flag.LISTED
        nodes.put(ix, txn, parent)

def _follow_server(cache: Cache, txn, node: Node, dir_id: int, entry: RemoteEntry) -> None:
    ix = cache.index
    content_changed = not node.is_dir and (
        entry.file_id != node.base_file_id or entry.size != node.base_size or entry.mtime_ns != node.base_mtime_ns
    )
    nodes.set_base(ix, txn, node, dir_id, entry)
    if content_changed:
        node.size = entry.size
        node.flags &= ~Flag.HYDRATED
        if entry.size == 0:
            node.flags |= Flag.HYDRATED
        txn.delete(u64(node.id), db=ix.ranges)
        if cache.store.exists(node.id):
            cache.store.truncate(node.id, 0)
            cache.store.truncate(node.id, entry.size)
    node.mtime_ns = entry.mtime_ns or node.mtime_ns
    node.ctime_ns = entry.ctime_ns or node.ctime_ns
    nodes.put(ix, txn, node)
    cache._publish(("inode", node.id))

def _subtree_clean(cache: Cache, txn, node: Node) -> bool:
    if nodes.dirty_reasons(cache.index, txn, node.id):
        return False
    if node.is_dir:
        for cid, _ in nodes.iter_children(cache.index, txn, node.id):
            if not _subtree_clean(cache, txn, nodes.get(cache.index, txn, cid)):
                return False
    return True

def _forget_subtree(cache: Cache, txn, node: Node) -> None:
    ix = cache.index
    if node.is_dir:
        for cid, _ in list(nodes.iter_children(ix, txn, node.id)):
            _forget_subtree(cache, txn, nodes.get(ix, txn, cid))
    nodes.unlink(ix, txn, node)
    cache._publish(("entry", node.parent, node.name))
    if cache._open_count.get(node.id):
        node.flags |= Flag.TOMBSTONE
        nodes.clear_base(ix, txn, node)
        nodes.put(ix, txn, node)
    else:
        nodes.delete_record(ix, txn, node)
        cache.store.remove(node.id)



def _keep_local_changes(cache: Cache, txn, node: Node) -> None:
    """The server deleted ``node`` but something under it changed here: keep what changed.

    Clean parts of the subtree follow the server (they go); changed parts lose their base
    and become new local nodes, uploaded again by sync.
    """
    ix = cache.index
    nodes.clear_base(ix, txn, node)
    nodes.mark_dirty(ix, txn, node, DirtyReason.NAMESPACE | (DirtyReason(0) if node.is_dir else DirtyReason.CONTENT))
    nodes.put(ix, txn, node)
    if node.is_dir:
        for cid, _ in list(nodes.iter_children(ix, txn, node.id)):
            child = nodes.get(ix, txn, cid)
            if _subtree_clean(cache, txn, child):
                _forget_subtree(cache, txn, child)
            else:
                _keep_local_changes(cache, txn, child)

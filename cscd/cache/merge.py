"""Bringing server news into the index: one directory enumeration merged at a time.

Owns carrying out what a server listing changes locally; the rule itself is
``cscd.reconcile.decide``, the same one the push applies. The listing is matched against
the *agreed* server names (``bases``), so local changes not yet uploaded are left for sync:
a clean node follows the server (its content is dropped if the version changed), a dirty
one keeps its local state. New server names become placeholders; agreed names gone from
the server vanish locally if their subtree is clean, else lose their base and are uploaded
again as new — nothing local is lost. One write transaction per ``STEP`` entries, so the
mount answers in between, and per batch for the first listing of an empty directory as it
arrives (``fill``, ``mark_listed``); no network here.

It works through the cache's public transaction helpers (``txn``, ``publish``, ``is_open``);
nothing outside ``cscd.cache`` calls it directly.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import trio
import xxhash

from cscd.cache import attrs, newer, nodes, unrecorded
from cscd.cache.index import u64
from cscd.cache.nodes import DirtyReason, Flag, Node
from cscd.reconcile import Action, Local, Ours, Unrecorded, decide
from cscd.types import ROOT_ID, RemoteEntry
from cscd.xattrs import default_mode

if TYPE_CHECKING:
    from cscd.cache.core import CacheCore

log = logging.getLogger(__name__)

#: entries merged in one write transaction, between two checkpoints (~10-20 ms of the loop)
STEP = 1000
_NEW_ENTRY = Flag.HAS_BASE
_NEW_EMPTY_FILE = Flag.HAS_BASE | Flag.HYDRATED


def digest_input(entries: list[RemoteEntry]) -> bytes:
    """What a listing's digest hashes for a batch of it (names, kinds, sizes, times, ids, EAs):
    fed batch by batch to an ``xxhash.xxh3_128``, the digest of the whole listing (``digest_of``)."""
    return b"".join(b"%s\0%d\0%d\0%d\0%d\0%s\n" % (e.name, e.is_dir, e.size, e.mtime_ns, e.file_id,
                                                   b"%r" % (e.eas,) if e.eas else b"") for e in entries)


async def merge_listing(cache: CacheCore, dir_id: int, entries: list[RemoteEntry], digest: bytes = b"", *,
                        keep_complete: bool = False, still_current: Callable[[], bool] = lambda: True) -> bool:
    """Bring a directory's children in line with one server enumeration.

    Matches the listing against the *agreed* server names (``bases``), so local changes
    not yet uploaded are left for sync: a clean node follows the server (its content is
    dropped if the version changed), a dirty one keeps its local state. New server names
    become placeholders; agreed names gone from the server vanish locally if clean.
    ``digest`` (``digest_of`` the entries) is stored in ``listed`` with the result.
    ``keep_complete``: the folder serves cached files without asking the server, so a
    complete copy is not emptied for a newer version; it is noted (``newer``) for sync.

    In steps of ``STEP`` entries, one write transaction each, with a checkpoint between: the
    mount answers while a big directory is merged (100,000 entries at once held every request
    for ~0.9 s). Each entry is decided against the node's state in its own step. Before each
    step ``still_current()`` is asked; once it is false (sync changed the directory on the
    server meanwhile), the rest is not applied and False is returned: the directory keeps its
    last digest, and the next listing merges again. The caller keeps other merges of the same
    directory out meanwhile (``Listings`` holds its lock).
    """
    ix = cache.index
    now = time.time_ns()
    with cache.txn(write=True) as txn:
        empty = _is_empty(ix, txn, dir_id)
        # Until the last step, the last digest no longer describes the directory: a merge cut
        # short (a crash, sync's change) must not let the same old listing be skipped later.
        nodes.forget_listing(ix, txn, dir_id)
    if empty:
        for step in _steps(entries):
            if not still_current():
                return False
            fill(cache, dir_id, step)
            await trio.lowlevel.checkpoint()
    else:
        seen: set[bytes] = set()
        for step in _steps(entries):
            if not still_current():
                return False
            with cache.txn(write=True) as txn:
                _match(cache, txn, dir_id, step, now, keep_complete)
            seen.update(e.name for e in step)
            await trio.lowlevel.checkpoint()
        gone = await _agreed_names_not_in(cache, dir_id, seen)
        for step in _steps(gone):
            if not still_current():
                return False
            with cache.txn(write=True) as txn:
                _forget_gone(cache, txn, dir_id, step)
            await trio.lowlevel.checkpoint()
    with cache.txn(write=True) as txn:
        _mark_listed(ix, txn, dir_id, digest)
    return True


def _steps(items: list, step: int = STEP) -> Iterator[list]:
    for i in range(0, len(items), step):
        yield items[i:i + step]


async def digest_of(entries: list[RemoteEntry]) -> bytes:
    """XXH3-128 of everything a merge looks at in a listing, with checkpoints: the mount
    answers while a big listing is hashed."""
    digest = xxhash.xxh3_128()
    for step in _steps(entries, 10 * STEP):
        digest.update(digest_input(step))
        await trio.lowlevel.checkpoint()
    return digest.digest()


async def _agreed_names_not_in(cache: CacheCore, dir_id: int, seen: set[bytes]) -> list[tuple[bytes, int]]:
    """``(name, id)`` of the directory's agreed names that are not in ``seen``, read in
    steps of ``10 * STEP`` with checkpoints between."""
    out: list[tuple[bytes, int]] = []
    after: bytes | None = None
    while True:
        with cache.txn() as txn:
            step = list(itertools.islice(nodes.iter_base_children(cache.index, txn, dir_id, after), 10 * STEP))
        if not step:
            return out
        out.extend((name, bid) for name, bid in step if name not in seen)
        after = step[-1][0]
        await trio.lowlevel.checkpoint()


def is_empty(cache: CacheCore, dir_id: int) -> bool:
    """Whether a directory has no children, no agreed names and no upload of ours under way:
    its listing can then be added batch by batch (``fill``), every entry being new."""
    with cache.txn() as txn:
        return _is_empty(cache.index, txn, dir_id)


def fill(cache: CacheCore, dir_id: int, entries: list[RemoteEntry]) -> None:
    """One batch of the first listing of a directory that ``is_empty`` said was empty, or
    that only earlier batches of the same listing filled: added as new, not yet listed."""
    with cache.txn(write=True) as txn:
        _fill(cache, txn, nodes.get(cache.index, txn, dir_id), entries, time.time_ns())


def mark_listed(cache: CacheCore, dir_id: int, digest: bytes) -> None:
    """The last of ``fill``: the directory's children are all known now."""
    with cache.txn(write=True) as txn:
        _mark_listed(cache.index, txn, dir_id, digest)


def _is_empty(ix, txn, dir_id: int) -> bool:
    return not (nodes.has_children(ix, txn, dir_id) or next(nodes.iter_base_children(ix, txn, dir_id), None)
                or unrecorded.any_under(ix, txn, dir_id))


def _mark_listed(ix, txn, dir_id: int, digest: bytes) -> None:
    parent = nodes.get(ix, txn, dir_id)
    parent.flags |= Flag.LISTED
    nodes.put(ix, txn, parent)
    if dir_id != ROOT_ID and Flag.TOMBSTONE not in parent.flags:
        txn.put(u64(dir_id), ix.seal(digest), db=ix.listed)

def _match(cache: CacheCore, txn, dir_id: int, entries: list[RemoteEntry], now: int, keep_complete: bool) -> None:
    """Merge entries into a directory that has children or agreed names: ``reconcile.decide``
    for each (``_forget_gone`` does the agreed names the listing no longer shows). Only the
    server-side actions are carried out here; the others (push, delete there, conflict) are
    the push's."""
    ix = cache.index
    for entry in entries:
        bid = nodes.base_lookup_id(ix, txn, dir_id, entry.name)
        if bid is not None:
            node = nodes.get(ix, txn, bid)
            action = decide(node.base_entry(), _local(ix, txn, node), entry)
            if action is Action.FOLLOW:
                _follow_server(cache, txn, node, dir_id, entry, keep_complete)
                continue
            if action is not Action.REPLACE_KIND:
                if entry.eas is not None and (entry.eas or node.mode != default_mode(node.is_dir)
                                              or Flag.XATTRS in node.flags) \
                        and not node.is_deleted and attrs.take_server(ix, txn, node, entry.eas):
                    nodes.put(ix, txn, node)  # only the mode or the attributes changed there
                    cache.publish(("inode", node.id))
                continue  # nothing to do, or the push's to do
            _forget_subtree(cache, txn, node)
        lid = nodes.lookup_id(ix, txn, dir_id, entry.name)
        here = None if lid is None else _local(ix, txn, nodes.get(ix, txn, lid))
        if decide(None, here, entry) is Action.ADD and unrecorded.claims(ix, txn, dir_id, entry) is None:
            # (Our own unrecorded upload or rename is not someone else's new file: the push's
            # recovery gives it back to its node or deletes it.)
            log.debug("listing of %s: %r is new on the server", dir_id, entry.name)
            _add_placeholder(ix, txn, dir_id, ix.allocate_id(txn), entry, now)
            cache.publish(("entry", dir_id, entry.name))


def _forget_gone(cache: CacheCore, txn, dir_id: int, gone: list[tuple[bytes, int]]) -> None:
    """Agreed names of the directory that the listing no longer shows: a clean subtree goes,
    local changes are kept as new. A name whose agreed node changed since the listing's
    entries were merged (an earlier step) is left to the next listing."""
    ix = cache.index
    for name, bid in gone:
        if nodes.base_lookup_id(ix, txn, dir_id, name) != bid:
            continue
        node = nodes.get(ix, txn, bid)
        local = Local(exists=not node.is_deleted, changed=not _subtree_clean(cache, txn, node), is_dir=node.is_dir)
        if decide(node.base_entry(), local, None) is Action.KEEP_AS_NEW:
            log.debug("listing of %s: %r (node %s) is gone from the server; its changes are kept as new",
                      dir_id, name, node.id)
            _keep_local_changes(cache, txn, node)
        else:
            _forget_subtree(cache, txn, node)


def _local(ix, txn, node: Node) -> Local:
    return Local(exists=not node.is_deleted, changed=bool(nodes.dirty_reasons(ix, txn, node.id)),
                 is_dir=node.is_dir)


def _fill(cache: CacheCore, txn, parent: Node, entries: list[RemoteEntry], now: int) -> None:
    """Merge into a directory with no children and no agreed names (most often its first
    listing): every entry is new, so nothing is looked up (100,000 entries: ~1 s, not ~3 s).

    The kernel is told about each new name only if the directory was listed before: until
    then no lookup in it was answered, so the kernel holds no negative entry to drop.
    """
    ix = cache.index
    was_listed = Flag.LISTED in parent.flags
    next_id = ix.allocate_id(txn, len(entries))
    for entry in entries:
        _add_placeholder(ix, txn, parent.id, next_id, entry, now)
        next_id += 1
        if was_listed:
            cache.publish(("entry", parent.id, entry.name))


def _add_placeholder(ix, txn, dir_id: int, node_id: int, entry: RemoteEntry, now: int) -> None:
    """A new local node for a server entry, its content not here yet (empty files are).

    Built with its base already in place and ``bases`` written directly: what
    ``nodes.set_base`` does for a node that had none, without its enum arithmetic (this runs
    once per entry of every first listing).
    """
    empty_file = not entry.is_dir and entry.size == 0
    node = Node(
        node_id, dir_id, entry.is_dir, _NEW_EMPTY_FILE if empty_file else _NEW_ENTRY,
        default_mode(entry.is_dir),
        0 if entry.is_dir else entry.size, entry.mtime_ns or now, entry.ctime_ns or now,
        0, dir_id, entry.file_id, entry.size, entry.mtime_ns, entry.name, entry.name,
    )
    txn.put(ix.child_key(dir_id, entry.name), u64(node_id), db=ix.bases)
    if entry.eas:
        attrs.take_server(ix, txn, node, entry.eas)
    nodes.put(ix, txn, node)
    nodes.link(ix, txn, node)


def _follow_server(cache: CacheCore, txn, node: Node, dir_id: int, entry: RemoteEntry, keep_complete: bool) -> None:
    ix = cache.index
    content_changed = not node.is_dir and (
        entry.file_id != node.base_file_id or entry.size != node.base_size or entry.mtime_ns != node.base_mtime_ns
    )
    if content_changed and keep_complete and node.is_hydrated:
        # Offline Files keeps a complete copy readable: the old bytes and base stay until
        # sync has fetched this version whole and swaps it in (``newer``).
        log.debug("listing of %s: %r has a newer version on the server; kept until it is fetched",
                  dir_id, entry.name)
        newer.note(ix, txn, node, entry)
        return
    newer.drop(ix, txn, node.id)
    nodes.set_base(ix, txn, node, dir_id, entry)
    if content_changed:
        node.size = entry.size
        node.flags &= ~(Flag.HYDRATED | Flag.SYMLINK | Flag.LINK_CHECKED)  # a new version: ask again
        if entry.size == 0:
            node.flags |= Flag.HYDRATED
        txn.delete(u64(node.id), db=ix.ranges)
        cache.empty_content(node.id, entry.size)
    node.mtime_ns = entry.mtime_ns or node.mtime_ns
    node.ctime_ns = entry.ctime_ns or node.ctime_ns
    if entry.eas is not None:
        attrs.take_server(ix, txn, node, entry.eas)
    nodes.put(ix, txn, node)
    cache.publish(("inode", node.id))

def _subtree_clean(cache: CacheCore, txn, node: Node) -> bool:
    if nodes.dirty_reasons(cache.index, txn, node.id):
        return False
    if node.is_dir:
        for cid, _ in nodes.iter_children(cache.index, txn, node.id):
            if not _subtree_clean(cache, txn, nodes.get(cache.index, txn, cid)):
                return False
    return True

def _forget_subtree(cache: CacheCore, txn, node: Node) -> None:
    ix = cache.index
    if node.is_dir:
        for cid, _ in list(nodes.iter_children(ix, txn, node.id)):
            _forget_subtree(cache, txn, nodes.get(ix, txn, cid))
    nodes.unlink(ix, txn, node)
    cache.publish(("entry", node.parent, node.name))
    if cache.is_open(node.id):
        node.flags |= Flag.TOMBSTONE
        nodes.clear_base(ix, txn, node)
        nodes.put(ix, txn, node)
    else:
        nodes.delete_record(ix, txn, node)
        cache.discard_content(node.id)



def _keep_local_changes(cache: CacheCore, txn, node: Node) -> None:
    """The server deleted ``node`` but something under it changed here: keep what changed.

    Clean parts of the subtree follow the server (they go); changed parts lose their base
    and become new local nodes, uploaded again by sync.
    """
    ix = cache.index
    moved = node.has_base and (node.base_parent, node.base_name) != (node.parent, node.name)
    if node.has_base:
        # Most often the base is not gone but moved, by a rename of ours (of it or a folder
        # above it) whose answer never got recorded: then the server holds the base under
        # the node's present name, and that is ours to upload over, not a second writer's.
        unrecorded.add(ix, txn, Unrecorded(node.parent, node.name, node.id, Ours(
            node.base_size, node.base_mtime_ns, node.base_file_id, node.is_dir)))
    nodes.clear_base(ix, txn, node)
    nodes.mark_dirty(ix, txn, node, DirtyReason.NAMESPACE | (DirtyReason(0) if node.is_dir else DirtyReason.CONTENT))
    nodes.put(ix, txn, node)
    if node.is_dir and moved:
        # A folder moved here: its agreed name is gone because our rename went through, most
        # often, and the files under it are on the server in the moved folder. Their own
        # bases still say so; that folder's next listing settles them (they used to vanish
        # here, cached bytes and all, until then). Its digest goes, so a rescan merges it.
        nodes.forget_listing(ix, txn, node.id)
        return
    if node.is_dir:
        for cid, _ in list(nodes.iter_children(ix, txn, node.id)):
            child = nodes.get(ix, txn, cid)
            if _subtree_clean(cache, txn, child):
                _forget_subtree(cache, txn, child)
            else:
                _keep_local_changes(cache, txn, child)

"""What sync sees of the cache: server listings merged in, the dirty set, bases recorded.

Owns the methods the ``LocalSide`` protocol of ``cscd.sync.local`` names: recording what
sync did on the server (bases, unrecorded-change notes, conflict renames, chunk maps), the
dirty set, and the copies of content an upload sends. The rest of what sync reads is the
other parts' own, handed through as they are. The same transaction rules apply (one write
transaction per logical change, no await inside one).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import trio

from cscd.cache import attrs, conflicts, newer, nodes, ranges, unrecorded
from cscd.cache import chunks as chunkmaps
from cscd.cache.core import CacheCore
from cscd.cache.hydration import Hydration
from cscd.cache.listings import Listings
from cscd.cache.moved import adopt_moved_bases
from cscd.cache.namespace import Namespace
from cscd.cache.nodes import DirtyReason, Flag, Node
from cscd.cache.residency import Residency
from cscd.errors import CacheFull, CorruptContent, NotFound, SourceChanged
from cscd.reconcile import Ours, Unrecorded
from cscd.types import ROOT_ID, ContentSnapshot, RemoteEntry

log = logging.getLogger(__name__)

#: Files up to this size are copied for upload inline (~2 ms); larger ones in a thread.
SNAPSHOT_INLINE_BYTES = 8 << 20


class SyncSide:
    """The cache as sync sees it (``cscd.sync.local.LocalSide``)."""

    def __init__(self, core: CacheCore, listings: Listings, residency: Residency, hydration: Hydration,
                 namespace: Namespace) -> None:
        self.core = core
        self.listings = listings
        self.residency = residency
        self.hydration = hydration
        self.namespace = namespace
        #: one large upload copy at a time: they compete for the same disk
        self._snapshot_limiter = trio.CapacityLimiter(1)
        # What sync reads of the parts as they are (``LocalSide`` names them).
        self.recent_dirs = core.recent_dirs
        self.listing_cost = core.listing_cost
        self.child_mtimes = core.child_mtimes
        self.hydrated = hydration.hydrated
        self.node = core.node
        self.exists = core.exists
        self.remote_path = core.remote_path
        self.folder_of = core.folder_of
        self.is_open_for_write = core.is_open_for_write
        self.is_open = core.is_open
        self.wait_dirty = core.wait_dirty
        self.hydrate = hydration.hydrate
        self.listing_started = listings.started
        self.merge_listing = listings.merge
        self.listed_dirs = listings.listed_dirs
        self.pinned_missing = residency.pinned_missing

    # ---------------------------------------------------------------- for sync

    def dirty_nodes(self) -> list[tuple[Node, DirtyReason]]:
        out = []
        with self.core.txn() as txn:
            for nid, reasons in nodes.iter_dirty(self.core.index, txn):
                node = nodes.find(self.core.index, txn, nid)
                if node is not None:
                    out.append((node, reasons))
        return out

    def missing_ranges(self, node_id: int) -> list[ranges.Range]:
        with self.core.txn() as txn:
            node = nodes.get(self.core.index, txn, node_id)
            return ranges.missing(self.core.present(txn, node), 0, node.size)

    def server_eas(self, node_id: int) -> dict[bytes, bytes]:
        """The EAs the node carries on the server: its mode and ``user.*`` attributes."""
        with self.core.txn() as txn:
            node = nodes.get(self.core.index, txn, node_id)
            return {} if node.is_symlink else attrs.server_eas(self.core.index, txn, node)

    def attrs_unsent(self, node_id: int) -> None:
        """The server refused the node's EAs: its mode and attributes stay to be sent."""
        with self.core.txn(write=True) as txn:
            node = nodes.find(self.core.index, txn, node_id)
            if node is not None and not node.is_deleted:
                nodes.keep_dirty(self.core.index, txn, node_id, DirtyReason.ATTRS)

    def record_synced(self, node_id: int, version: int, base_parent: int, entry: RemoteEntry | None,
                      reasons: DirtyReason, chunks: list[chunkmaps.ChunkTriple] | None = None) -> bool:
        """After a successful server change: store the new base; clear dirty if unchanged since.

        Returns False if the node changed locally meanwhile (it stays dirty for another round).
        ``entry=None`` records a server delete. ``chunks`` is the chunk map of the uploaded
        content, stored as the new base's map in the same transaction (see ``chunkmaps.after_sync``).
        """
        ix = self.core.index
        with self.core.txn(write=True) as txn:
            node = nodes.find(ix, txn, node_id)
            if node is None:
                return True
            # Both the directory the base leaves and the one it enters changed on the server.
            self.listings.stamp(node.base_parent, base_parent)
            if entry is None:
                if node.has_base:
                    unrecorded.remove(ix, txn, node.base_parent, node.base_name, node_id)
                nodes.clear_base(ix, txn, node)
                # A deleted node has nothing left to push once its server copy is gone.
                nodes.clear_dirty(ix, txn, node_id, None if node.is_deleted else DirtyReason.DELETE)
                if Flag.TOMBSTONE in node.flags and not self.core.is_open(node_id):
                    nodes.delete_record(ix, txn, node)
                    self.core.discard_content(node_id)
                    return True
                nodes.put(ix, txn, node)
                return True
            old_base = (node.base_file_id, node.base_size, node.base_mtime_ns)
            # The server name holds this recorded version now: what was sent there before is gone.
            unrecorded.clear(ix, txn, base_parent, entry.name)
            nodes.set_base(ix, txn, node, base_parent, entry)
            clean = node.version == version
            if Flag.TOMBSTONE in node.flags:
                # Deleted here while its upload ran: the server file just made goes next round.
                nodes.mark_dirty(ix, txn, node, DirtyReason.DELETE)
                clean = False
            if clean:
                nodes.clear_dirty(ix, txn, node_id, reasons)
            chunkmaps.after_sync(ix, txn, node, old_base, reasons, chunks, clean=clean)
            nodes.put(ix, txn, node)
        if not clean:
            self.core.mark_changed()
        return clean

    def record_sending(self, node_id: int, parent: int, name: bytes, ours: Ours) -> list[Ours]:
        """Note an upload or rename of ``ours`` to the name ``name`` in directory ``parent``,
        about to start; returns the versions noted there before that never got recorded (a
        crash or a lost answer came between), newest first, whichever node sent them. Such a
        version may be on the server, and it is ours (``unrecorded``)."""
        with self.core.txn(write=True) as txn:
            before = unrecorded.add(self.core.index, txn, Unrecorded(parent, name, node_id, ours))
        return [n.ours for n in before]

    def unrecorded_at(self, parent: int, name: bytes) -> list[Unrecorded]:
        """The notes of versions this client sent to a name and never recorded, newest first."""
        with self.core.txn() as txn:
            return unrecorded.at(self.core.index, txn, parent, name)

    def unrecorded(self) -> list[Unrecorded]:
        """Every note of an unrecorded server change (a handful: they live for one upload)."""
        with self.core.txn() as txn:
            return list(unrecorded.iter_all(self.core.index, txn))

    def forget_unrecorded(self, note: Unrecorded) -> None:
        """The server does not hold that version (any more), or it was dealt with.

        A listing of the directory already under way may predate that (it may show the file
        sync just took back): it is dropped, as after any change sync makes there."""
        with self.core.txn(write=True) as txn:
            unrecorded.discard(self.core.index, txn, note)
            nodes.forget_listing(self.core.index, txn, note.parent)  # a merge may have skipped it
        self.listings.stamp(note.parent)

    def knows_server_name(self, parent: int, name: bytes) -> bool:
        """Whether the server name ``name`` in directory ``parent`` is one this client agreed on
        (a node's base, a deleted one's too) or sent there itself (an unrecorded note)."""
        ix = self.core.index
        with self.core.txn() as txn:
            return (nodes.base_lookup_id(ix, txn, parent, name) is not None
                    or bool(unrecorded.at(ix, txn, parent, name)))

    def name_in_use(self, parent: int, name: bytes) -> bool:
        """Whether a live node here has the name ``name`` in directory ``parent``, or has it as
        its agreed server name: that node's push meets whatever the server holds there."""
        ix = self.core.index
        with self.core.txn() as txn:
            holder = nodes.base_lookup_id(ix, txn, parent, name)
            if holder is not None and not nodes.get(ix, txn, holder).is_deleted:
                return True
            return nodes.lookup_id(ix, txn, parent, name) is not None

    def replaced_at(self, parent: int, name: bytes) -> Node | None:
        """The deleted node whose agreed server name is ``name`` in ``parent``, if any: a file
        renamed over it here (an atomic save) replaces that server version with its upload."""
        ix = self.core.index
        with self.core.txn() as txn:
            holder = nodes.base_lookup_id(ix, txn, parent, name)
            if holder is None:
                return None
            node = nodes.get(ix, txn, holder)
            return node if node.is_deleted and not node.is_dir else None

    def adopt_unrecorded(self, note: Unrecorded, entry: RemoteEntry) -> bool:
        """The server holds ``entry``, the node's own unrecorded version (``note``): make it the
        node's base, so its push carries on from there (renames it to where the node is now,
        deletes it if the node is deleted, uploads over it). Returns False, and changes
        nothing, if the node is gone or another node's base holds that name."""
        ix = self.core.index
        with self.core.txn(write=True) as txn:
            node = nodes.find(ix, txn, note.node_id)
            if node is None:
                return False
            holder_id = nodes.base_lookup_id(ix, txn, note.parent, entry.name)
            if holder_id not in (None, node.id):
                holder = nodes.get(ix, txn, holder_id)
                if not holder.is_deleted:
                    return False
                # A file deleted here whose server version ours replaced: its delete is done.
                nodes.clear_base(ix, txn, holder)
                nodes.clear_dirty(ix, txn, holder.id)
                if self.core.is_open(holder.id):
                    nodes.put(ix, txn, holder)
                else:
                    nodes.delete_record(ix, txn, holder)
                    self.core.discard_content(holder.id)
            unrecorded.discard(ix, txn, note)
            self.listings.stamp(node.base_parent, note.parent)
            nodes.set_base(ix, txn, node, note.parent, entry)
            nodes.mark_dirty(ix, txn, node, DirtyReason.DELETE if node.is_deleted else DirtyReason.NAMESPACE)
            nodes.put(ix, txn, node)
        self.core.mark_changed()
        return True

    def record_local_only(self, node_id: int, version: int) -> bool:
        """A file sync keeps out (an excluded name): no base, nothing to upload, kept here.

        Clears its base and dirty bits if it did not change since ``version``; returns False
        (still dirty, looked at again) if it did. Its content has no server copy, so
        ``residency`` never evicts it (eviction needs a base).
        """
        ix = self.core.index
        with self.core.txn(write=True) as txn:
            node = nodes.find(ix, txn, node_id)
            if node is None or node.version != version:
                return node is None
            if node.has_base:
                self.listings.stamp(node.base_parent)
            nodes.clear_base(ix, txn, node)
            nodes.clear_dirty(ix, txn, node_id)
            nodes.put(ix, txn, node)
        return True

    def rename_for_conflict(self, node_id: int, new_name: bytes) -> None:
        """Keep the local version of a conflicting node under ``new_name`` (see ``conflicts``)."""
        conflicts.rename_for_conflict(self.core, node_id, new_name)
        self.listings.stamp(self.core.node(node_id).parent)

    # ------------------------------------------------ newer server versions

    def newer_versions(self) -> list[tuple[Node, RemoteEntry]]:
        """Complete copies whose newer server version waits to be swapped in (``newer``)."""
        ix = self.core.index
        out = []
        with self.core.txn() as txn:
            for nid in newer.iter_ids(ix, txn):
                node = nodes.find(ix, txn, nid)
                entry = None if node is None else newer.get(ix, txn, node)
                if entry is not None:
                    out.append((node, entry))
        return out

    def newer_fetch_path(self, node_id: int) -> Path:
        """Where sync writes a newer version it fetches, before ``swap_in``; with
        ``write_content``: a sealed cache's file there must be sealed."""
        return newer.fetched_path(self.core.store.root, node_id)

    def write_content(self, node_id: int, fd: int, data: bytes, offset: int) -> int:
        """``os.pwrite`` into a content file of the node (sealed where the cache is, with its
        folder's key); ``CacheFull``."""
        return self.core.store.pwrite(fd, data, offset, node_id)

    def forget_newer(self, node_id: int) -> None:
        """The server no longer holds a newer version (it went back, or the file went)."""
        with self.core.txn(write=True) as txn:
            newer.drop(self.core.index, txn, node_id)

    def swap_in(self, node_id: int, entry: RemoteEntry) -> bool:
        """Put the fetched newer version (``newer_fetch_path``) in place of the node's copy.

        Refused (False; the fetched file is removed) unless the node is still clean, closed
        and waiting for exactly ``entry``: a local change made meanwhile is a change against
        the old base, and the push keeps both. Crash-safe (see ``cscd.cache.newer``).
        """
        ix = self.core.index
        fetched = self.newer_fetch_path(node_id)
        with self.core.txn(write=True) as txn:
            node = nodes.find(ix, txn, node_id)
            ok = (node is not None and not node.is_deleted and not self.core.is_open(node_id)
                  and not nodes.dirty_reasons(ix, txn, node_id) and newer.begin_swap(ix, txn, node, entry))
        if not ok:
            fetched.unlink(missing_ok=True)
            return False
        os.rename(fetched, self.core.store.path(node_id))
        with self.core.txn(write=True) as txn:
            node = nodes.get(ix, txn, node_id)
            newer.finish_swap(ix, txn, node, entry)
        self.core.publish(("inode", node_id))
        self.hydration.files_downloaded += 1
        try:
            self.hydration.hydrated_send.send_nowait(node_id)  # its chunk map, for the next delta
        except trio.WouldBlock:
            pass
        return True

    def list_conflicts(self) -> list[dict]:
        return conflicts.list_conflicts(self.core)

    async def resolve_conflict(self, node: Node, keep: str) -> dict:
        return await conflicts.resolve(self.core, self.namespace, node, keep)

    def base_chunks(self, node_id: int) -> list[chunkmaps.ChunkTriple] | None:
        """The chunk map of the node's base content; None if unknown or stale."""
        with self.core.txn() as txn:
            node = nodes.find(self.core.index, txn, node_id)
            return None if node is None else chunkmaps.get(self.core.index, txn, node)

    def record_base_chunks(self, node_id: int, version: int, base: RemoteEntry,
                           chunk_map: list[chunkmaps.ChunkTriple]) -> bool:
        """Store the map of a downloaded file if its version and base did not move meanwhile."""
        ix = self.core.index
        with self.core.txn(write=True) as txn:
            node = nodes.find(ix, txn, node_id)
            return node is not None and chunkmaps.record_for_base(
                ix, txn, node, version, base, chunk_map,
                is_dirty=bool(nodes.dirty_reasons(ix, txn, node_id)))

    def listed_dir_at(self, folder: bytes, parts: list[bytes]) -> int | None:
        """The listed directory whose listing shows a change at server path ``folder/parts``.

        Follows agreed server names (``bases``). The directory itself if it is listed; its
        deepest listed ancestor if a name on the way is new here (that listing reveals it);
        None if the way leads through something not listed (nothing cached to refresh).
        """
        ix = self.core.index
        with self.core.txn() as txn:
            nid = nodes.base_lookup_id(ix, txn, ROOT_ID, folder)
            found = None
            for name in [None, *parts]:
                if name is not None:
                    nid = nodes.base_lookup_id(ix, txn, found, name)
                    if nid is None:
                        return found
                node = None if nid is None else nodes.find(ix, txn, nid)
                if node is None or not node.is_dir or Flag.LISTED not in node.flags:
                    return None
                found = nid
            return found

    def content_path(self, node_id: int) -> Path:
        """Where the node's content lives on local disk (for hashing in another process).
        ``OSError`` in a sealed cache: its files are not the content (an upload's snapshot is)."""
        if self.core.store.sealer is not None:
            raise OSError(errno.EOPNOTSUPP, "a sealed cache's content files are hashed through their snapshots")
        return self.core.store.path(node_id)

    def adopt_moved_bases(self, folder: bytes, entries: Mapping[bytes, RemoteEntry]) -> int:
        """After a server-side copy of ``folder`` to a new target: re-point the bases that the
        copy reproduced (see ``moved``), so nothing is downloaded again. Returns the count."""
        return adopt_moved_bases(self.core, folder, entries)

    async def content_snapshot(self, node_id: int) -> ContentSnapshot:
        """A consistent copy of the node's content for one upload (see ``ContentSnapshot``).

        Local only, no network. Up to ``SNAPSHOT_INLINE_BYTES`` the copy is made at once on
        the trio thread, so no write can come between reading the node and copying it.
        Larger files are copied in a thread and the node is checked again afterwards.
        Raises ``NotFound`` if the node was deleted (or its content vanished), and
        ``SourceChanged`` if the content is not complete or changed during the copy: both
        mean "look again next round". A cache disk too full for a copy falls back to
        reading the live file; the version check after the upload still catches a change.
        """
        node = self._live_file(node_id)
        if node.size <= SNAPSHOT_INLINE_BYTES:
            fd = self._snapshot_fd(node)
        else:
            async with self._snapshot_limiter:
                try:
                    fd = await trio.to_thread.run_sync(self._snapshot_fd, node)
                except CorruptContent:
                    # A sealed file's block read while the trio thread rewrote it fails its tag:
                    # a change during the copy, unless the node is as it was.
                    if self._live_file(node_id).version != node.version:
                        raise SourceChanged(f"{node.name!r} changed while its upload was being prepared") from None
                    raise
            try:
                now = self._live_file(node_id)
            except NotFound:
                os.close(fd)
                raise
            if now.version != node.version:
                os.close(fd)
                raise SourceChanged(f"{node.name!r} changed while its upload was being prepared")
        try:
            key = self.core.store.snapshot_key(fd, node.size)
        except BaseException:
            os.close(fd)
            raise
        return ContentSnapshot(fd, node.version, node.size, node.mtime_ns, content_key=key)

    def _live_file(self, node_id: int) -> Node:
        with self.core.txn() as txn:
            node = nodes.find(self.core.index, txn, node_id)
            if node is None or Flag.TOMBSTONE in node.flags:
                raise NotFound(f"node {node_id} was deleted")
            if ranges.missing(self.core.present(txn, node), 0, node.size):
                raise SourceChanged(f"{node.name!r} is not completely here (it was extended meanwhile)")
            return node

    def _snapshot_fd(self, node: Node) -> int:
        try:
            return self.core.store.snapshot(node.id, node.size)
        except FileNotFoundError:
            if node.size == 0:
                return self.core.store.snapshot_empty()
            raise NotFound(f"the content of {node.name!r} vanished (deleted meanwhile)") from None
        except CacheFull:
            if self.core.store.sealer is not None:
                raise  # its live file is sealed: the upload waits for room
            log.info("no room for a copy of %r to upload; uploading from the live file", node.name)
            try:
                return self.core.store.open_readonly(node.id)
            except FileNotFoundError:
                raise NotFound(f"the content of {node.name!r} vanished (deleted meanwhile)") from None


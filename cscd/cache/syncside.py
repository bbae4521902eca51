"""What sync sees of the cache: server listings merged in, the dirty set, bases recorded.

Owns the methods the ``LocalSide`` protocol of ``cscd.sync.local`` names (and the listing
merge that server news goes through). A mixin of ``Cache``, split out for size: the same
transaction rules apply (one write transaction per logical change, no await inside one).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import trio

from cscd.cache import chunks as chunkmaps
from cscd.cache import conflicts, nodes, ranges, unrecorded
from cscd.cache.index import u64
from cscd.cache.merge import listing_digest, merge_listing
from cscd.cache.moved import adopt_moved_bases
from cscd.cache.nodes import DirtyReason, Flag, Node
from cscd.errors import CacheFull, NotFound, SourceChanged
from cscd.reconcile import Ours, Unrecorded
from cscd.types import ROOT_ID, ContentSnapshot, RemoteEntry

log = logging.getLogger(__name__)

#: Files up to this size are copied for upload inline (~2 ms); larger ones in a thread.
SNAPSHOT_INLINE_BYTES = 8 << 20


class SyncSide:
    """``Cache``'s face toward sync (mixed into ``Cache``; uses its index, store and helpers)."""

    # ---------------------------------------------------------------- remote news

    def listing_started(self) -> int:
        """Call before asking the server for a listing; pass the result to ``merge_listing``."""
        return self._base_generation

    def merge_listing(self, dir_id: int, entries: list[RemoteEntry], started: int | None = None) -> bool:
        """Bring a directory's children in line with one server enumeration (see ``merge``).

        ``started`` (from ``listing_started``): if sync changed this directory on the server
        while the listing was on its way, the listing may predate that change and is dropped;
        returns whether it was applied.
        """
        if started is not None and self._dir_stamp.get(dir_id, 0) > started:
            return False
        # An unchanged listing of a directory sync has not touched since changes nothing: skip
        # the write transaction (a rescan of 100,000 entries costs ~2 s on the trio thread).
        # The digest is kept in ``listed`` (cleared whenever an agreed name under the directory
        # changes, see ``nodes.forget_listing``), so this holds across restarts too.
        digest = listing_digest(entries)
        with self.txn() as txn:
            if txn.get(u64(dir_id), db=self.index.listed) == digest:
                return True
        merge_listing(self, dir_id, entries, digest)
        return True

    # ---------------------------------------------------------------- for sync

    def dirty_nodes(self) -> list[tuple[Node, DirtyReason]]:
        out = []
        with self.txn() as txn:
            for nid, reasons in nodes.iter_dirty(self.index, txn):
                node = nodes.find(self.index, txn, nid)
                if node is not None:
                    out.append((node, reasons))
        return out

    def missing_ranges(self, node_id: int) -> list[ranges.Range]:
        with self.txn() as txn:
            node = nodes.get(self.index, txn, node_id)
            return ranges.missing(self._ranges(txn, node), 0, node.size)

    def record_synced(self, node_id: int, version: int, base_parent: int, entry: RemoteEntry | None,
                      reasons: DirtyReason, chunks: list[chunkmaps.ChunkTriple] | None = None) -> bool:
        """After a successful server change: store the new base; clear dirty if unchanged since.

        Returns False if the node changed locally meanwhile (it stays dirty for another round).
        ``entry=None`` records a server delete. ``chunks`` is the chunk map of the uploaded
        content, stored as the new base's map in the same transaction (see ``chunkmaps.after_sync``).
        """
        ix = self.index
        self._base_generation += 1
        with self.txn(write=True) as txn:
            node = nodes.find(ix, txn, node_id)
            if node is None:
                return True
            # Both the directory the base leaves and the one it enters changed on the server.
            self._dir_stamp[node.base_parent] = self._dir_stamp[base_parent] = self._base_generation
            if entry is None:
                if node.has_base:
                    unrecorded.remove(ix, txn, node.base_parent, node.base_name, node_id)
                nodes.clear_base(ix, txn, node)
                # A deleted node has nothing left to push once its server copy is gone.
                nodes.clear_dirty(ix, txn, node_id, None if node.is_deleted else DirtyReason.DELETE)
                if Flag.TOMBSTONE in node.flags and not self.is_open(node_id):
                    nodes.delete_record(ix, txn, node)
                    self.discard_content(node_id)
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
            self._changed()
        return clean

    def record_sending(self, node_id: int, parent: int, name: bytes, ours: Ours) -> list[Ours]:
        """Note an upload or rename of ``ours`` to the name ``name`` in directory ``parent``,
        about to start; returns the versions noted there before that never got recorded (a
        crash or a lost answer came between), newest first, whichever node sent them. Such a
        version may be on the server, and it is ours (``unrecorded``)."""
        with self.txn(write=True) as txn:
            before = unrecorded.add(self.index, txn, Unrecorded(parent, name, node_id, ours))
        return [n.ours for n in before]

    def unrecorded_at(self, parent: int, name: bytes) -> list[Unrecorded]:
        """The notes of versions this client sent to a name and never recorded, newest first."""
        with self.txn() as txn:
            return unrecorded.at(self.index, txn, parent, name)

    def unrecorded(self) -> list[Unrecorded]:
        """Every note of an unrecorded server change (a handful: they live for one upload)."""
        with self.txn() as txn:
            return list(unrecorded.iter_all(self.index, txn))

    def forget_unrecorded(self, note: Unrecorded) -> None:
        """The server does not hold that version (any more), or it was dealt with."""
        with self.txn(write=True) as txn:
            unrecorded.discard(self.index, txn, note)
            nodes.forget_listing(self.index, txn, note.parent)  # a merge may have skipped it

    def name_in_use(self, parent: int, name: bytes) -> bool:
        """Whether a live node here has the name ``name`` in directory ``parent``, or has it as
        its agreed server name: that node's push meets whatever the server holds there."""
        ix = self.index
        with self.txn() as txn:
            holder = nodes.base_lookup_id(ix, txn, parent, name)
            if holder is not None and not nodes.get(ix, txn, holder).is_deleted:
                return True
            return nodes.lookup_id(ix, txn, parent, name) is not None

    def replaced_at(self, parent: int, name: bytes) -> Node | None:
        """The deleted node whose agreed server name is ``name`` in ``parent``, if any: a file
        renamed over it here (an atomic save) replaces that server version with its upload."""
        ix = self.index
        with self.txn() as txn:
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
        ix = self.index
        self._base_generation += 1
        with self.txn(write=True) as txn:
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
                if self.is_open(holder.id):
                    nodes.put(ix, txn, holder)
                else:
                    nodes.delete_record(ix, txn, holder)
                    self.discard_content(holder.id)
            unrecorded.discard(ix, txn, note)
            self._dir_stamp[node.base_parent] = self._dir_stamp[note.parent] = self._base_generation
            nodes.set_base(ix, txn, node, note.parent, entry)
            nodes.mark_dirty(ix, txn, node, DirtyReason.DELETE if node.is_deleted else DirtyReason.NAMESPACE)
            nodes.put(ix, txn, node)
        self._changed()
        return True

    def record_local_only(self, node_id: int, version: int) -> bool:
        """A file sync keeps out (an excluded name): no base, nothing to upload, kept here.

        Clears its base and dirty bits if it did not change since ``version``; returns False
        (still dirty, looked at again) if it did. Its content has no server copy, so
        ``residency`` never evicts it (eviction needs a base).
        """
        ix = self.index
        self._base_generation += 1
        with self.txn(write=True) as txn:
            node = nodes.find(ix, txn, node_id)
            if node is None or node.version != version:
                return node is None
            if node.has_base:
                self._dir_stamp[node.base_parent] = self._base_generation
            nodes.clear_base(ix, txn, node)
            nodes.clear_dirty(ix, txn, node_id)
            nodes.put(ix, txn, node)
        return True

    def rename_for_conflict(self, node_id: int, new_name: bytes) -> None:
        """Keep the local version of a conflicting node under ``new_name`` (see ``conflicts``)."""
        conflicts.rename_for_conflict(self, node_id, new_name)
        self._base_generation += 1
        self._dir_stamp[self.node(node_id).parent] = self._base_generation

    def list_conflicts(self) -> list[dict]:
        return conflicts.list_conflicts(self)

    async def resolve_conflict(self, node: Node, keep: str) -> dict:
        return await conflicts.resolve(self, node, keep)

    def listed_dirs(self) -> list[int]:
        """Every live directory whose children are known (not the root), for a full rescan.

        Reads the ``listed`` table: one short cursor walk, not a walk over every node.
        """
        with self.txn() as txn:
            return list(nodes.iter_listed(self.index, txn))

    def base_chunks(self, node_id: int) -> list[chunkmaps.ChunkTriple] | None:
        """The chunk map of the node's base content; None if unknown or stale."""
        with self.txn() as txn:
            node = nodes.find(self.index, txn, node_id)
            return None if node is None else chunkmaps.get(self.index, txn, node)

    def record_base_chunks(self, node_id: int, version: int, base: RemoteEntry,
                           chunk_map: list[chunkmaps.ChunkTriple]) -> bool:
        """Store the map of a downloaded file if its version and base did not move meanwhile."""
        ix = self.index
        with self.txn(write=True) as txn:
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
        ix = self.index
        with self.txn() as txn:
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
        """Where the node's content lives on local disk (for hashing in another process)."""
        return self.store.path(node_id)

    def adopt_moved_bases(self, folder: bytes, entries: Mapping[bytes, RemoteEntry]) -> int:
        """After a server-side copy of ``folder`` to a new target: re-point the bases that the
        copy reproduced (see ``moved``), so nothing is downloaded again. Returns the count."""
        return adopt_moved_bases(self, folder, entries)

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
                fd = await trio.to_thread.run_sync(self._snapshot_fd, node)
            try:
                now = self._live_file(node_id)
            except NotFound:
                os.close(fd)
                raise
            if now.version != node.version:
                os.close(fd)
                raise SourceChanged(f"{node.name!r} changed while its upload was being prepared")
        return ContentSnapshot(fd, node.version, node.size, node.mtime_ns)

    def _live_file(self, node_id: int) -> Node:
        with self.txn() as txn:
            node = nodes.find(self.index, txn, node_id)
            if node is None or Flag.TOMBSTONE in node.flags:
                raise NotFound(f"node {node_id} was deleted")
            if ranges.missing(self._ranges(txn, node), 0, node.size):
                raise SourceChanged(f"{node.name!r} is not completely here (it was extended meanwhile)")
            return node

    def _snapshot_fd(self, node: Node) -> int:
        try:
            return self.store.snapshot(node.id, node.size)
        except FileNotFoundError:
            if node.size == 0:
                return self.store.snapshot_empty()
            raise NotFound(f"the content of {node.name!r} vanished (deleted meanwhile)") from None
        except CacheFull:
            log.info("no room for a copy of %r to upload; uploading from the live file", node.name)
            try:
                return self.store.open_readonly(node.id)
            except FileNotFoundError:
                raise NotFound(f"the content of {node.name!r} vanished (deleted meanwhile)") from None


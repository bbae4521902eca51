"""Uploading one file's content: whole, as a delta, resumable, or only its write time.

Owns what happens between "this file's content goes up" (``push``'s decision) and the new
server entry: a snapshot of the content, never the live file, so a write, truncation,
rename or delete while the upload runs cannot tear it; the chunks (``hashing``, in a worker
process) that decide how it goes; and an upload that meets a changed server file, which
keeps both versions (the local one as a conflict copy). Recording the result in the cache is
``push``'s; nothing here touches the index but the snapshot and the conflict rename.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import trio
import trio_parallel

from cscd.errors import NotFound, SourceChanged
from cscd.names import join_path
from cscd.reconcile import Action, Local, Ours, decide
from cscd.sealed_files import SealedKey, SealedReader, Source
from cscd.sync.chunker import Chunk, same_chunks
from cscd.sync.conflicts import conflict_name
from cscd.sync.counters import PushCounters
from cscd.sync.delta import DeltaPlan, plan_delta, plan_full
from cscd.sync.hashing import Hasher
from cscd.sync.local import LocalSide
from cscd.types import ContentSnapshot, RemoteEntry
from cscd.upstream.base import Conflict, Upstream

log = logging.getLogger(__name__)

#: Below this a changed file is uploaded whole even when its base chunks are known: the
#: extra round trips of a delta (open the base, resume key) cost more than the bytes saved.
DELTA_MIN_BYTES = 1 << 20
#: Uploads from this size on name their temporary after the content and resume after a
#: lost link or a restart instead of starting over.
RESUME_MIN_BYTES = 16 << 20


def _source(snap: ContentSnapshot) -> Source:
    """What the upstream reads of a snapshot: its descriptor, or a sealed copy with its key."""
    return snap.fd if snap.content_key is None else SealedReader(snap.fd, SealedKey(*snap.content_key))


class ContentUploads:
    """A file's content put on the server (see the module doc); ``push`` holds one."""

    def __init__(self, local: LocalSide, hasher: Hasher, counters: PushCounters,
                 on_server_differs: Callable[[int], None]) -> None:
        self.local = local
        self.hasher = hasher
        self.counters = counters
        #: a conflict copy was made: the server's version comes down under the name
        self.on_server_differs = on_server_differs

    async def upload(self, node, parent_path: bytes, target: bytes,
                     up: Upstream, replaced: list | None = None
                     ) -> tuple[RemoteEntry, list[Chunk] | None, bool]:
        """Upload a file's content; returns the new server entry, the content's chunks, and
        whether the entry is a new server file of this upload's making (it has no EAs yet).

        Reads a snapshot of the content (``LocalSide.content_snapshot``), never the live file:
        a write, truncation, rename or delete while the upload runs cannot tear it, and the
        version the snapshot holds is the one recorded. The chunks (computed in a worker
        process) decide how: the same chunks as the base mean only the write time changed;
        known base chunks and a file of at least ``DELTA_MIN_BYTES`` make a delta upload
        (server-side copies of what the base has); anything else is a whole upload,
        resumable from ``RESUME_MIN_BYTES`` on. Without a base chunk map there is nothing to
        compare with, so the upload starts at once and the chunks (the next base's map) are
        computed meanwhile. Raises ``NotFound`` / ``SourceChanged`` if the file went away or
        changed before its snapshot was complete (the round looks again).
        """
        local = self.local
        for start, end in local.missing_ranges(node.id):
            await local.hydrate(node.id, start, end)
        base = local.base_chunks(node.id) if node.has_base else None
        snap = await local.content_snapshot(node.id)
        try:
            if base is None:
                return await self._upload_while_chunking(node, parent_path, target, up, snap, replaced)
            chunks = await self._chunks(node, snap)
            if chunks is not None and same_chunks(base, chunks):
                entry, _ = await self._send(node, parent_path, target, up, snap, None, times_only=True)
                self.counters.times_only += 1
                return entry, chunks, False
            plan = self._delta_plan(snap, base, chunks)
            entry, fresh = await self._send(node, parent_path, target, up, snap, plan)
            return entry, chunks, fresh
        finally:
            snap.close()

    async def _upload_while_chunking(self, node, parent_path: bytes, target: bytes, up: Upstream,
                                     snap: ContentSnapshot, replaced: list | None = None
                                     ) -> tuple[RemoteEntry, list[Chunk] | None, bool]:
        chunks: list[list[Chunk] | None] = [None]
        sent: list[tuple[RemoteEntry, bool]] = []
        failed: list[Exception] = []

        async def chunk() -> None:
            chunks[0] = await self._chunks(node, snap)

        async def send() -> None:
            try:
                sent.append(await self._send(node, parent_path, target, up, snap,
                                             self._delta_plan(snap, None, None), replaced=replaced))
            except Exception as exc:  # noqa: BLE001 - re-raised below as itself, not in a group
                failed.append(exc)
                nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(chunk, name="sync.chunk-upload")
            nursery.start_soon(send, name="sync.upload")
        if failed:
            raise failed[0]
        return sent[0][0], chunks[0], sent[0][1]

    async def _send(self, node, parent_path: bytes, target: bytes, up: Upstream, snap: ContentSnapshot,
                    plan: DeltaPlan | None, *, times_only: bool = False,
                    replaced: list | None = None) -> tuple[RemoteEntry, bool]:
        """Put the snapshot on the server (or only its time); a conflict keeps both versions.
        The bool: the entry is a new file this upload made under ``target`` (``upload``).

        ``replaced``: the tombstones of the synced files this new one was renamed over
        (``_replaced``); the server version of one of them is the one the upload may replace."""
        replaced = replaced or []
        expected = replaced[0].base_entry() if replaced and not node.has_base else node.base_entry()
        may_replace = node.has_base or bool(replaced)
        earlier = self.local.record_sending(node.id, node.parent, node.name, Ours(snap.size, snap.mtime_ns))
        try:
            if times_only and expected is not None:
                return await self._times_only(target, snap.mtime_ns, expected, up), False
            if plan is None:
                entry = await up.upload(target, _source(snap), snap.size, snap.mtime_ns,
                                        expected=expected, replace=may_replace)
            else:
                entry = await up.upload_delta(
                    target, _source(snap), snap.size, snap.mtime_ns, plan=plan.extents, expected=expected,
                    replace=may_replace, resume_token=_resume_token(node, snap))
                self.counters.delta_uploads += plan.copies_anything
        except Conflict:
            try:
                current = await up.stat(target)
            except NotFound:
                current = None
            here = Local(is_dir=False, changed=True)
            action = decide(expected, here, current, ours=Ours(snap.size, snap.mtime_ns))
            log.debug("upload of %r (node %s, %d bytes at %d) met %s; base %s; unrecorded before: %s: %s",
                      target, node.id, snap.size, snap.mtime_ns, current, expected, earlier, action.value)
            if action is Action.ADOPT:
                log.info("%r is already on the server (an earlier upload); recording it", target)
                return current, False
            if (any(decide(expected, here, current, ours=e) is Action.ADOPT for e in earlier)
                    or current is not None and any(r.matches_base(current) for r in replaced)):
                # An earlier upload of ours that was never recorded (the daemon was killed, or
                # its answer was lost), or the version of another file renamed over here: it is
                # what we build on. Whole, not as a delta: the delta's plan copies from the
                # base, which is not what the server holds.
                log.info("%r holds an earlier upload of ours; uploading the new version over it", target)
                entry = await up.upload(target, _source(snap), snap.size, snap.mtime_ns, expected=current, replace=True)
                self.counters.files_uploaded += 1
                self.counters.bytes_uploaded += snap.size
                return entry, False
            if action is not Action.CONFLICT:
                # The server moved between the check and now (back to the base, or the file
                # went away): no second writer is proven, so look again next round.
                raise SourceChanged(f"{target!r} changed on the server during the upload ({action.value})") from None
            # The local version takes its conflict name here first, and the upload to that
            # name is noted as ours: a listing merged while it runs (our own upload's change
            # notification) must not take the new server name for someone else's file and
            # give it a second node. A failed upload leaves a new local file, sent next round.
            name = conflict_name(node.name)
            self.local.rename_for_conflict(node.id, name)
            self.local.record_sending(node.id, node.parent, name, Ours(snap.size, snap.mtime_ns))
            entry = await up.upload(join_path(parent_path, name), _source(snap), snap.size, snap.mtime_ns,
                                    expected=None, replace=False)
            self.counters.conflicts += 1
            self.on_server_differs(node.parent)  # the server's version comes down under the name
            log.warning("conflict: %r changed on the server and here; the local version is "
                        "kept as %r", target, name)
            self.counters.files_uploaded += 1
            self.counters.bytes_uploaded += snap.size
            return entry, False
        self.counters.files_uploaded += 1
        self.counters.bytes_uploaded += snap.size
        return entry, True

    async def _chunks(self, node, snap: ContentSnapshot) -> list[Chunk] | None:
        """The chunks of the snapshot, or None if they cannot be computed (then the upload is
        a whole one and no chunk map is recorded)."""
        try:
            return await self.hasher.chunks_of(Path(snap.path), snap.size, content_key=snap.content_key)
        except (OSError, trio_parallel.BrokenWorkerError) as exc:
            log.info("cannot chunk %r, uploading it whole: %s", node.name, exc)
            return None

    @staticmethod
    def _delta_plan(snap: ContentSnapshot, base: list | None, chunks: list[Chunk] | None) -> DeltaPlan | None:
        if base is not None and chunks is not None and snap.size >= DELTA_MIN_BYTES:
            plan = plan_delta(base, chunks, snap.size)
            if plan.copies_anything:
                return plan
        if snap.size >= RESUME_MIN_BYTES:
            return plan_full(snap.size)
        return None

    @staticmethod
    async def _times_only(target: bytes, mtime_ns: int, expected: RemoteEntry,
                          up: Upstream) -> RemoteEntry:
        """Content unchanged: set the write time, if the server still has the base."""
        current = await up.stat(target)
        if not expected.same_version(current):
            raise Conflict(f"{target!r} changed on the server since the version this change is "
                           "based on")
        return await up.set_mtime(target, mtime_ns)



def _resume_token(node, snap: ContentSnapshot) -> str:
    """Names the upload temporary after the content: the same token means the same bytes."""
    base = node.base_entry()
    ident = (base.file_id, base.size, base.mtime_ns) if base is not None else ()
    return f"{node.id}:{snap.version}:{snap.size}:{snap.mtime_ns}:{ident}"

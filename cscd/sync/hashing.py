"""Chunking files off the event loop: worker processes for large files, inline for tiny ones.

Owns *where* ``cscd.sync.chunker`` runs. ``fastcdc`` holds the GIL for its whole scan, and a
CPU-bound thread in the daemon's process makes cached FUSE reads crawl (DESIGN.md,
"Processes"; FACTS.md, "The GIL"), so files above ``MIN_CHUNK`` are chunked in worker
processes through ``trio_parallel`` (cached, reused workers; a job is a path and two
offsets, the answer a list of ~1,000 chunks per GiB). A file of at least two
``PARALLEL_MIN`` parts is split into one segment per core and the segments are joined at a
shared cut (``chunker.merge_segments``), which gives exactly the sequential result. Files of
at most ``MIN_CHUNK`` bytes are one chunk: one ``pread`` and one hash, inline.

Also owns the task that records the chunk map of files whose download just completed
(``run_after_hydration``), so that a later edit of a downloaded file uploads a delta. It is
best effort: a file edited before its map is stored simply gets one plain upload.

Cancellation: a cancelled job kills its worker (``kill_on_cancel``), nothing is left behind.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import trio
import trio_parallel

from cscd.sealed_files import SealedKey
from cscd.sync import chunker
from cscd.sync.chunker import MIN_CHUNK, Chunk
from cscd.sync.local import LocalSide
from cscd.upstream.foreground import followed
from cscd.upstream.offload import run_in_background

log = logging.getLogger(__name__)

#: Smallest segment worth a process of its own.
PARALLEL_MIN = 64 << 20


def _chunk_in_worker(clock_path: str | None, path: str, start: int, end: int,
                     content_key: SealedKey | None) -> list[Chunk]:
    """In a worker process: ``chunker.chunk_segment``, pausing while the mount is busy."""
    clock = followed(clock_path) if clock_path else None
    return run_in_background(chunker.chunk_segment, path, start, end, clock.make_way if clock else None,
                             content_key)


class Hasher:
    """Chunks local content files; at most one job per core at a time."""

    def __init__(self, *, workers: int | None = None, foreground_clock: str | None = None) -> None:
        self.workers = max(1, workers or len(os.sched_getaffinity(0)))
        #: the daemon's ``ForegroundClock`` file: a worker pauses between chunks while the
        #: mount serves requests (None: never)
        self.foreground_clock = foreground_clock
        self._limiter = trio.CapacityLimiter(self.workers)
        self.files_chunked = 0
        self.bytes_chunked = 0

    async def chunks_of(self, path: Path, size: int, *, content_key: SealedKey | None = None) -> list[Chunk]:
        """The chunks of the first ``size`` bytes of ``path`` (the file must not be shorter);
        with ``content_key``, of the plain bytes of the sealed file at ``path``.

        Waits for a worker process; raises ``OSError`` if the file cannot be read.
        """
        self.files_chunked += 1
        self.bytes_chunked += size
        if size <= MIN_CHUNK and content_key is None:
            return chunker.hash_file_inline(path, size)
        splits = chunker.split_points(size, self.workers, min_part=PARALLEL_MIN)
        if not splits:
            return await self._run(content_key, str(path), 0, size)
        bounds = [0, *splits, size]
        parts: list[list[Chunk]] = [[] for _ in splits] + [[]]

        errors: list[Exception] = []

        async def one(i: int) -> None:
            end = bounds[i + 1] + (chunker.SEGMENT_OVERLAP if i + 1 < len(bounds) - 1 else 0)
            try:
                parts[i] = await self._run(content_key, str(path), bounds[i], min(end, size))
            except Exception as exc:  # noqa: BLE001 - re-raised below, unwrapped
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for i in range(len(parts)):
                nursery.start_soon(one, i, name=f"sync.chunk-{i}")
        if errors:
            raise errors[0]
        merged = parts[0]
        for nxt in parts[1:]:
            joined = chunker.merge_segments(merged, nxt)
            if joined is None:
                # No shared cut within the overlap (rare): chunk on from the last real cut.
                restart = merged[-1].offset
                rest = await self._run(content_key, str(path), restart, size)
                return [*merged[:-1], *rest]
            merged = joined
        return merged

    async def _run(self, content_key: SealedKey | None, path: str, start: int, end: int) -> list[Chunk]:
        # at the workers' lower priority, making way for the mount: chunking must not take
        # the CPU from cached reads
        return await trio_parallel.run_sync(_chunk_in_worker, self.foreground_clock, path, start, end,
                                            content_key, kill_on_cancel=True, limiter=self._limiter)

    async def _chunks_of_content(self, local: LocalSide, node_id: int, size: int) -> list[Chunk]:
        """The chunks of a cached file: its content file, or in a sealed cache (whose file is
        not the content) its snapshot (``LocalSide.content_snapshot``), read with its key."""
        try:
            return await self.chunks_of(local.content_path(node_id), size)
        except OSError as exc:
            if exc.errno != errno.EOPNOTSUPP:
                raise
        snap = await local.content_snapshot(node_id)
        try:
            return await self.chunks_of(Path(snap.path), snap.size, content_key=snap.content_key)
        finally:
            snap.close()

    async def run_after_hydration(self, local: LocalSide) -> None:
        """Record the chunk map of every file whose download completes (task ``sync.chunk``)."""
        async for node_id in local.hydrated:
            try:
                node = local.node(node_id)
                base = node.base_entry()
                if base is None or not node.is_hydrated or node.size != base.size:
                    continue
                version = node.version
                chunks = await self._chunks_of_content(local, node_id, node.size)
                if local.record_base_chunks(node_id, version, base, chunks):
                    log.debug("chunk map of downloaded node %s: %d chunks", node_id, len(chunks))
            except Exception as exc:  # noqa: BLE001 - best effort; the next upload is plain
                log.debug("no chunk map for downloaded node %s: %s", node_id, exc)

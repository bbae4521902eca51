"""Filling placeholders: reading content that may not be local yet, in ranges.

Owns on-demand hydration: which blocks a read needs (aligned to ``BLOCK_BYTES``, with a
read-ahead window that doubles while a reader stays sequential), one fetch at a time per
file, and writing fetched bytes only into holes (never over local writes made meanwhile)
and only if the file's base did not change during the fetch. The network is reached only
through the cache's ``RemoteSource``, which applies the folder's mode and deadline.
A mixin of ``Cache``, split out for size.
"""

from __future__ import annotations

import os

import trio

from cscd.cache import nodes, ranges
from cscd.errors import NotAvailableOffline

#: Hydration granularity: missing bytes are fetched in aligned blocks of this size.
BLOCK_BYTES = 1 << 20
#: A sequential reader gets up to this much read ahead per fetch.
READAHEAD_BYTES = 8 << 20


class Hydration:
    """``Cache``'s reads and on-demand fetches (mixed into ``Cache``)."""

    async def read(self, node_id: int, fd: int, offset: int, length: int) -> bytes:
        """Bytes of the node's content; waits on the network only for bytes not present."""
        node = self.node(node_id)
        end = min(offset + length, node.size)
        if offset >= end:
            return b""
        if node.is_hydrated:
            self.hits += 1
        else:
            await self.hydrate(node_id, offset, end)
        return os.pread(fd, end - offset, offset)

    async def hydrate(self, node_id: int, start: int, end: int) -> None:
        """Make ``[start, end)`` present, fetching missing blocks (plus read-ahead) from the source."""
        with self._txn() as txn:
            node = nodes.get(self.index, txn, node_id)
            need = ranges.missing(self._ranges(txn, node), start, min(end, node.size))
        if not need:
            self.hits += 1
            return
        self.misses += 1
        lock = self._hydrate_locks.setdefault(node_id, trio.Lock())
        async with lock:
            node = self.node(node_id)
            with self._txn() as txn:
                need = ranges.missing(self._ranges(txn, node), start, min(end, node.size))
            if not need:
                return
            folder, path = self.remote_path(node)
            if not self.source.may_fetch(folder):
                raise NotAvailableOffline(
                    f"{path.decode(errors='replace')} is not available offline (not cached)"
                )
            lo = need[0][0] // BLOCK_BYTES * BLOCK_BYTES
            # Read ahead only for a sequential reader: double the window while reads follow on.
            last_end, window = self._readahead.get(node_id, (-1, BLOCK_BYTES))
            window = min(window * 2, READAHEAD_BYTES) if lo <= last_end <= need[0][1] else BLOCK_BYTES
            hi = min(node.size, max(-(-need[-1][1] // BLOCK_BYTES) * BLOCK_BYTES, lo + window))
            self._readahead[node_id] = (hi, window)
            pos = lo
            while pos < hi:
                n = min(hi - pos, READAHEAD_BYTES)
                base_before = (node.base_file_id, node.base_size, node.base_mtime_ns)
                data = await self.source.read(folder, path, pos, n)
                self._fill(node_id, base_before, pos, data)
                if len(data) < n:
                    break
                pos += n

    def _fill(self, node_id: int, base_before: tuple, offset: int, data: bytes) -> None:
        """Write fetched bytes into the holes they cover, unless the base changed meanwhile."""
        ix = self.index
        with self._txn(write=True) as txn:
            node = nodes.find(ix, txn, node_id)
            if node is None or (node.base_file_id, node.base_size, node.base_mtime_ns) != base_before:
                return
            have = self._ranges(txn, node)
            end = min(offset + len(data), node.size)
            holes = ranges.missing(have, offset, end)
            if not holes:
                return
            fd = self.store.open(node_id)
            try:
                for s, e in holes:
                    self.store.pwrite(fd, data[s - offset : e - offset], s)
                    have = ranges.add(have, s, e)
            finally:
                os.close(fd)
            self._store_ranges(txn, node, have, node.size)
            nodes.put(ix, txn, node)
        if node.is_hydrated:
            try:
                self.hydrated_send.send_nowait(node_id)
            except trio.WouldBlock:
                pass  # the map is then computed at the next upload's full chunking


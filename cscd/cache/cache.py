"""``Cache``: the parts of the local truth, built over one ``CacheCore`` and wired once.

Every operation on cached data is synchronous and local. Only two things can wait on the
network, and only through the ``RemoteSource`` that ``daemon.py`` passes in (sync implements
it; this package never imports sync): listing a directory never listed before, and reading
bytes of a file that are not present yet. Both obey the folder's mode and the source's
deadline.

The parts, each the owner of one thing, and what they are built on::

    core        CacheCore   index + content store, transactions, handles, news, paths
    listings    Listings    server listings fetched and merged in            (core, source)
    residency   Residency   pins, size limit, eviction, folders not cached   (core)
    namespace   Namespace   names and directories                            (core, listings)
    content     Content     local reads/writes of bytes and attributes       (core, residency)
    hydration   Hydration   reads that fetch what is missing                 (core, source, residency, listings)
    sync        SyncSide    what sync sees and records                       (all of the above)

``fs`` uses namespace, content, hydration and residency; sync gets ``sync``; the control
handlers use ``sync`` and ``residency``. No part calls another's private state.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import trio

from cscd.cache.content import Content
from cscd.cache.core import CacheCore
from cscd.cache.hydration import Hydration
from cscd.cache.listings import Listings, RemoteSource
from cscd.cache.namespace import Namespace
from cscd.cache.protection import CacheProtection
from cscd.cache.residency import Residency
from cscd.cache.sealing import Sealer
from cscd.cache.syncside import SyncSide


#: The content store's use of the disk is measured this often (the size limit is kept then) ...
USAGE_EVERY_S = 5.0
#: ... or less often for a big store: measuring takes at most this share of the time (a
#: million cached files take ``du`` about 2 s: measured every 100 s).
USAGE_SHARE = 0.02


class Cache:
    """Namespace, attributes and content of every redirected folder, served locally."""

    def __init__(self, cache_dir: Path, folders: Iterable[bytes], source: RemoteSource, *,
                 limit_bytes: int | None = None, uncached: Iterable[bytes] = (),
                 max_file_bytes: int | None = None, sealer: Sealer | None = None) -> None:
        cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(cache_dir, 0o700)
        self.core = CacheCore(cache_dir, folders, sealer)
        self.listings = Listings(self.core, source)
        self.residency = Residency(self.core, limit_bytes, uncached=uncached, max_file_bytes=max_file_bytes)
        self.namespace = Namespace(self.core, self.listings)
        self.content = Content(self.core, self.residency)
        self.hydration = Hydration(self.core, source, self.residency, self.listings)
        self.sync = SyncSide(self.core, self.listings, self.residency, self.hydration, self.namespace)
        #: bytes the content store holds, as last measured by ``run``
        #: how the cache is kept at rest (the daemon sets it; shown by ``cscd status``)
        self.protection = CacheProtection()
        self.used_bytes = 0

    def close(self) -> None:
        self.residency.flush_touches()
        self.core.close()

    def pin(self, node_id: int, pinned: bool) -> None:
        """"Always available offline" on or off; sync hydrates what a pin covers."""
        self.residency.set_pinned(node_id, pinned)
        self.core.mark_changed()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Flush the index to disk every second; measure the content store and keep it within
        its size limit (``USAGE_EVERY_S``, ``USAGE_SHARE``); host the background read-ahead of
        sequential readers."""
        async with trio.open_nursery() as nursery:
            self.hydration.background = nursery
            self.listings.background = nursery
            task_status.started()
            try:
                measure_at = trio.current_time() + USAGE_EVERY_S
                while True:
                    await trio.sleep(1.0)
                    self.residency.flush_touches()
                    await trio.to_thread.run_sync(self.core.index.sync)
                    if trio.current_time() >= measure_at:
                        started = trio.current_time()
                        self.used_bytes = await self.residency.measure_used_bytes()
                        took = trio.current_time() - started
                        measure_at = trio.current_time() + max(USAGE_EVERY_S, took / USAGE_SHARE)
                        if self.residency.limit_bytes is not None and self.used_bytes > self.residency.limit_bytes:
                            self.used_bytes -= self.residency.evict(self.used_bytes)
            finally:
                self.hydration.background = None
                self.listings.background = None

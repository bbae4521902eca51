"""``Listings``: server enumerations of directories, fetched on demand and merged in.

Owns the only path by which a server listing changes the namespace (``merge.py`` decides
what each entry means), one listing at a time per directory, and the guard that keeps a
listing from undoing sync's own change: ``record_synced`` and its kin ``stamp`` the
directories they changed on the server, and a listing that started before such a stamp is
dropped (the next one is fresh).

The first listing of an empty directory is added batch by batch as the server sends it, in
a task of ``background`` (``ensure_listing``): ``readdir`` shows the first entries while the
rest is on its way (100,000 entries: the first after one batch, not after all and their
merge). Lookups still wait for the whole listing, since a name not there yet may come.

The network is reached only through the ``RemoteSource`` the daemon passes in (sync
implements it; this package never imports sync), and only as the folder's mode allows.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio
import xxhash

from cscd.cache import merge, nodes
from cscd.cache.core import CacheCore
from cscd.cache.index import u64
from cscd.cache.merge import merge_listing
from cscd.cache.nodes import Flag
from cscd.errors import NotAvailableOffline, NotDir, NotFound
from cscd.types import RemoteEntry

#: A listing that keeps meeting sync's own changes is retried this often before giving up
#: for now (the directory stays unlisted; the next lookup tries again).
LIST_ATTEMPTS = 5

log = logging.getLogger(__name__)


@dataclass
class _FirstListing:
    """A first listing being added batch by batch: readers of the directory wait on ``grew``."""

    grew: trio.Event = field(default_factory=trio.Event)

    def grow(self) -> None:
        self.grew.set()
        self.grew = trio.Event()


class RemoteSource(Protocol):
    """What the cache needs from sync to fill what is missing. Implemented in ``cscd.sync``."""

    def may_fetch(self, folder: bytes) -> bool:
        """Whether the folder's mode allows fetching uncached content now."""

    def may_list(self, folder: bytes) -> bool:
        """Whether the folder's mode allows listing a directory never listed before."""

    def mode_of(self, folder: bytes) -> str:
        """The folder's mode by name, for messages and events."""

    def serves_cached(self, folder: bytes) -> bool:
        """Whether the folder's mode serves cached files without asking the server (every
        mode but online): a newer server version then waits for sync to swap it in whole."""

    async def read(self, folder: bytes, path: bytes, offset: int, length: int) -> bytes:
        """Bytes of the server file, within the source's deadline."""

    async def list_dir(self, folder: bytes, path: bytes) -> list[RemoteEntry]:
        """One enumeration of a server directory, within the source's deadline."""

    async def list_dir_in_pages(self, folder: bytes, path: bytes,
                                on_page: Callable[[list[RemoteEntry]], Awaitable[None]]) -> None:
        """``list_dir`` handed to ``on_page`` batch by batch as it arrives (a big folder)."""

    async def before_first_listing(self, folder: bytes, dir_id: int) -> None:
        """Set up, before a directory's first listing, what must see the server's changes
        from then on (its change notification); bounded in time, never raises."""


class _Stale(Exception):
    """Sync changed the directory on the server while its first listing came in."""


class Listings:
    """Directories listed on the server when first needed, and listings merged in."""

    def __init__(self, core: CacheCore, source: RemoteSource) -> None:
        self.core = core
        self.source = source
        self._locks: dict[int, trio.Lock] = {}
        self._generation = 0
        self._dir_stamp: dict[int, int] = {}
        #: directory id → trio time of its last ``refresh``
        self._refreshed_at: dict[int, float] = {}
        #: where first listings run batch by batch (``Cache.run`` sets it); None: whole
        self.background: trio.Nursery | None = None
        #: directory id → its first listing, while batches are still coming in
        self._first: dict[int, _FirstListing] = {}

    def started(self) -> int:
        """Call before asking the server for a listing; pass the result to ``merge``."""
        return self._generation

    def stamp(self, *dir_ids: int) -> None:
        """Sync changed these directories on the server: listings already under way are stale."""
        self._generation += 1
        for dir_id in dir_ids:
            self._dir_stamp[dir_id] = self._generation

    async def merge(self, dir_id: int, entries: list[RemoteEntry], started: int | None = None) -> bool:
        """Bring a directory's children in line with one server enumeration (see ``merge``).

        ``started`` (from ``started()``): if sync changed this directory on the server while
        the listing was on its way, the listing may predate that change and is dropped (also
        half-way through a big merge); returns whether it was applied. One merge of a
        directory at a time: it holds the directory's lock, as listing it does.
        """
        async with self._locks.setdefault(dir_id, trio.Lock()):
            return await self._merge(dir_id, entries, started)

    async def _merge(self, dir_id: int, entries: list[RemoteEntry], started: int | None = None) -> bool:
        """``merge`` under the directory's lock, which the caller holds."""

        def still_current() -> bool:
            return started is None or self._dir_stamp.get(dir_id, 0) <= started

        if not still_current():
            return False
        # An unchanged listing of a directory sync has not touched since changes nothing: skip
        # the write transaction (a rescan of 100,000 entries costs ~2 s on the trio thread).
        # The digest is kept in ``listed`` (cleared whenever an agreed name under the directory
        # changes, see ``nodes.forget_listing``), so this holds across restarts too.
        digest = await merge.digest_of(entries)
        with self.core.txn() as txn:
            stored = txn.get(u64(dir_id), db=self.core.index.listed)
            if stored and self.core.index.unseal(stored) == digest:
                return True
        try:
            keep = self.source.serves_cached(self.core.folder_of(self.core.node(dir_id))[0])
        except NotFound:
            keep = False  # the root, or a directory gone meanwhile
        return await merge_listing(self.core, dir_id, entries, digest, keep_complete=keep,
                                   still_current=still_current)

    def growing(self, dir_id: int) -> bool:
        """Whether a first listing of the directory is still adding batches."""
        return dir_id in self._first

    async def wait_to_grow(self, dir_id: int) -> None:
        """Until the directory's first listing adds a batch or ends (at once if none runs)."""
        first = self._first.get(dir_id)
        if first is not None:
            await first.grew.wait()

    async def ensure_listing(self, dir_id: int) -> None:
        """Like ``ensure_listed``, but return once the first listing of an empty directory is
        under way: its children then arrive batch by batch (``growing``, ``wait_to_grow``),
        and a reader shows the first ones while the server still sends the rest (``readdir``;
        a lookup must see them all and calls ``ensure_listed``)."""
        if dir_id in self._first:
            self.core.recent_dirs[dir_id] = trio.current_time()
            return
        node = self.core.node(dir_id)
        if self.background is None or not node.is_dir or Flag.LISTED in node.flags:
            await self.ensure_listed(dir_id)
            return
        self.core.recent_dirs[dir_id] = trio.current_time()
        if not await self.background.start(self._list_first_in_batches, dir_id):
            await self.ensure_listed(dir_id)

    async def _list_first_in_batches(self, dir_id: int, *,
                                     task_status: trio.TaskStatus[bool] = trio.TASK_STATUS_IGNORED) -> None:
        """The first listing of an empty directory, each batch added as it arrives.

        Reports (``task_status``) False without listing when the directory is not empty or
        was listed meanwhile; errors before the listing starts (offline) go to the caller.
        After that nothing is raised: a listing that fails or meets sync's own change leaves
        the directory unlisted with the batches added so far, and the next ``ensure_listed``
        lists it whole and merges (nothing is lost: every added entry is the server's).
        """
        core = self.core
        async with self._locks.setdefault(dir_id, trio.Lock()):
            node = core.node(dir_id)
            if Flag.LISTED in node.flags or not merge.is_empty(core, dir_id):
                task_status.started(False)
                return
            folder, path = core.remote_path(node)
            self._check_may_list(folder, path)
            await self.source.before_first_listing(folder, dir_id)
            first = self._first[dir_id] = _FirstListing()
            task_status.started(True)
            started, t0 = self.started(), trio.current_time()
            digest = xxhash.xxh3_128()
            dir_mtimes: dict[bytes, int] = {}

            async def add(entries: list[RemoteEntry]) -> None:
                if self._dir_stamp.get(dir_id, 0) > started:
                    raise _Stale
                merge.fill(core, dir_id, entries)
                digest.update(merge.digest_input(entries))
                dir_mtimes.update((e.name, e.mtime_ns) for e in entries if e.is_dir)
                first.grow()

            try:
                await self.source.list_dir_in_pages(folder, path, add)
                if self._dir_stamp.get(dir_id, 0) > started:
                    raise _Stale
                merge.mark_listed(core, dir_id, digest.digest())
                t1 = trio.current_time()
                core.listing_cost[dir_id] = (t1, t1 - t0)
                core.child_mtimes[dir_id] = dir_mtimes
            except _Stale:
                log.debug("first listing of %s met sync's own change; listed again whole", dir_id)
            except Exception as exc:  # noqa: BLE001 - the next ensure_listed lists it whole
                log.debug("first listing of %s broke off: %s", dir_id, exc)
            finally:
                del self._first[dir_id]
                first.grow()

    def _check_may_list(self, folder: bytes, path: bytes) -> None:
        if not self.source.may_list(folder):
            raise NotAvailableOffline(
                f"{folder.decode(errors='replace')}/{path.decode(errors='replace')} was never "
                "listed and the server is not reachable in this mode"
            )

    async def ensure_listed(self, dir_id: int) -> None:
        """Make sure a directory's children are known, listing it on the server if needed."""
        core = self.core
        core.recent_dirs[dir_id] = trio.current_time()
        node = core.node(dir_id)
        if not node.is_dir:
            raise NotDir(f"{node.name!r} is not a directory")
        if Flag.LISTED in node.flags:
            return
        async with self._locks.setdefault(dir_id, trio.Lock()):
            node = core.node(dir_id)
            if Flag.LISTED in node.flags:
                return
            folder, path = core.remote_path(node)
            self._check_may_list(folder, path)
            await self.source.before_first_listing(folder, dir_id)
            for _ in range(LIST_ATTEMPTS):
                started = self.started()
                t0 = trio.current_time()
                entries = await self.source.list_dir(folder, path)
                if await self._merge(dir_id, entries, started):
                    t1 = trio.current_time()
                    core.listing_cost[dir_id] = (t1, t1 - t0)
                    core.child_mtimes[dir_id] = {e.name: e.mtime_ns for e in entries if e.is_dir}
                    return

    async def refresh(self, dir_id: int, max_age_s: float) -> None:
        """List a directory on the server again unless that was done in the last
        ``max_age_s`` seconds (a folder that is not cached shows the server's names)."""
        if trio.current_time() - self._refreshed_at.get(dir_id, -max_age_s - 1) < max_age_s:
            return
        node = self.core.node(dir_id)
        if not node.has_base:
            return  # a new directory (not on the server yet): nothing to ask
        async with self._locks.setdefault(dir_id, trio.Lock()):
            started_at = trio.current_time()
            if started_at - self._refreshed_at.get(dir_id, -max_age_s - 1) < max_age_s:
                return
            folder, path = self.core.remote_path(node)
            started = self.started()
            entries = await self.source.list_dir(folder, path)
            if await self._merge(dir_id, entries, started):
                self.core.child_mtimes[dir_id] = {e.name: e.mtime_ns for e in entries if e.is_dir}
            self._refreshed_at[dir_id] = started_at

    def listed_dirs(self) -> list[int]:
        """Every live directory whose children are known (not the root), for a full rescan.

        Reads the ``listed`` table: one short cursor walk, not a walk over every node.
        """
        with self.core.txn() as txn:
            return list(nodes.iter_listed(self.core.index, txn))

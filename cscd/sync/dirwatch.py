"""``DirectoryWatches``: change notifications on a folder's recently used directories.

A tree watch on the folder root sees creates, deletes and renames at any depth, but Samba
reports writes to a file (MODIFIED), and changes made on the server's disk behind smbd's
back, only to a watch on the file's own directory (FACTS.md). So each folder keeps one more
watch open on each of its most recently used directories — the ones a lookup or readdir
touched (``LocalSide.recent_dirs``) — up to ``limit``, the least recently used dropped
first. An open watch costs the server one handle (Samba: one inotify watch) and no request
until something changes; it replaces the rescans every few seconds that made an idle client
cost the server ~2,700 requests a minute (issue 16).

Each watch is a task of its own; a change in its directory, or a lost track of changes, asks
for a rescan of that one directory (``on_change``), and so does arming it, since what
happened between the directory's last listing and the watch is unknown — except where the
watch comes first: a directory's first listing waits (``arm_before_listing``, up to
``ARM_BEFORE_LISTING_S``) for its watch, so that listing sees everything before the watch
and needs no second one (a 100,000-entry directory used to be listed twice at once). A watch that fails
to open is tried again after ``RETRY_S``; one that ends (the directory was deleted, or the
upstream closed it to rename a folder above it) is opened again at the next tick under the
directory's current name. Runs only while the folder's tree watch is up (``active``):
without it the folder is polled (``revalidate``) and holds no handles.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Callable

import trio

from cscd.errors import CscdError, NotFound
from cscd.sync.local import LocalSide
from cscd.upstream.base import Upstream

log = logging.getLogger(__name__)

#: How often the set of watched directories follows what was used.
TICK_S = 1.0
#: Pause before a watch asks for the next changes: they queue on the server's handle
#: meanwhile and come as one reply. Writing 1,000 small files, our own uploads' replies
#: and re-arms came one by one, about 9% of the serving process's time.
REARM_GAP_S = 0.05
#: A directory whose watch failed to open waits this long before the next try.
RETRY_S = 60.0
#: ... and one not on the server (yet) this long.
NOT_FOUND_RETRY_S = 5.0
#: A watch stays open at least this long before a more recently used directory may take its
#: place. A walk over more directories than there are watches (``du`` or ``grep -r`` of a big
#: tree, again and again) otherwise closed and opened watches every tick, each opening
#: costing a listing of its directory: the directories that find no free watch wait, and are
#: left to the slow revalidation meanwhile, as any directory beyond the limit is.
KEEP_OPEN_S = 60.0
#: Longest a directory's first listing waits for its watch to be armed (one round trip);
#: on a server slower than that it is listed at once and listed again when the watch is up.
ARM_BEFORE_LISTING_S = 0.5


class DirectoryWatches:
    """The bounded set of single-directory watches of one folder."""

    def __init__(self, folder: str, upstream: Upstream, local: LocalSide, limit: int, *,
                 active: Callable[[], bool], on_change: Callable[[int], None]) -> None:
        self.folder = folder
        self.upstream = upstream
        self.local = local
        self.limit = limit
        self.active = active
        self.on_change = on_change
        #: directory id → last use, least recently used first
        self._used: collections.OrderedDict[int, float] = collections.OrderedDict()
        self._horizon = -math.inf  # the newest use taken in so far
        self._member: dict[int, bool] = {}  # directory id → in this folder (not its top)?
        self._tasks: dict[int, trio.CancelScope] = {}
        self._opened_at: dict[int, float] = {}  # directory → when its watch task started
        self._failed: dict[int, float] = {}
        #: directories whose watch is armed right now
        self.armed: set[int] = set()
        self.opened = 0
        #: directory → its first listing, waiting for the watch to be armed
        self._listing_follows: dict[int, trio.Event] = {}
        self._nursery: trio.Nursery | None = None

    def _follow_use(self) -> None:
        """Take in the uses since the last tick, oldest first. Only uses newer than any seen
        before count: a directory dropped from the history is still in ``recent_dirs`` with
        its old time, and taking it in again would reorder the LRU every tick — with more
        used directories than watches, 256 watches closed and opened again each second (the
        bench measured 45,000 requests a minute after 5,000 directories were touched)."""
        fresh = [(used, dir_id) for dir_id, used in self.local.recent_dirs.items()
                 if used > self._horizon or (used == self._horizon and dir_id not in self._used)]
        for used, dir_id in sorted(fresh):
            if self._belongs(dir_id):
                self._used[dir_id] = used
                self._used.move_to_end(dir_id)
            self._horizon = max(self._horizon, used)
        while len(self._used) > max(self.limit, 1) * 4:  # enough history for the LRU order
            old, _ = self._used.popitem(last=False)
            self._member.pop(old, None)

    def _belongs(self, dir_id: int) -> bool:
        known = self._member.get(dir_id)
        if known is None:
            try:
                folder, parts = self.local.folder_of(self.local.node(dir_id))
                known = folder == self.folder.encode() and bool(parts)  # the top has the tree watch
            except (NotFound, CscdError):
                known = False
            self._member[dir_id] = known
        return known

    def wanted(self) -> list[int]:
        """The directories that should be watched now: the most recently used, listed ones."""
        out: list[int] = []
        for dir_id in reversed(self._used):
            if len(out) >= self.limit:
                break
            if self.local.exists(dir_id):
                out.append(dir_id)
        return out

    async def arm_before_listing(self, dir_id: int) -> None:
        """Before a directory's first listing: open its watch now rather than at the next
        tick, and wait (``ARM_BEFORE_LISTING_S`` at most) until it is armed. Returns at once
        where no watch would be opened (folder not watched, directory watches off, a watch
        already there or recently failed)."""
        if (not self.active() or self.limit <= 0 or self._nursery is None or dir_id in self._tasks
                or trio.current_time() < self._failed.get(dir_id, 0.0)):
            return
        self._follow_use()  # takes in this use: the directory is now the most recently used
        if not self._used or next(reversed(self._used)) != dir_id:
            return  # not one of this folder's directories (its top has the tree watch)
        if self._open_watches() >= self.limit and not self._close_least_recently_used():
            return  # every watch is young: this directory waits for one, as at a tick
        armed = self._listing_follows[dir_id] = trio.Event()
        self._start(self._nursery, dir_id)
        with trio.move_on_after(ARM_BEFORE_LISTING_S):
            await armed.wait()
        self._listing_follows.pop(dir_id, None)  # too slow: arming will ask for a rescan

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._keep_watches(nursery)
        finally:
            self._nursery = None  # closed: a first listing no longer waits for a watch

    async def _keep_watches(self, nursery: trio.Nursery) -> None:
        """Each tick: the most recently used directories watched, the rest closed — except
        that a watch younger than ``KEEP_OPEN_S`` keeps its place, and a newcomer then waits
        for a free one."""
        while True:
            if not self.active() or self.limit <= 0:
                for scope in self._tasks.values():
                    scope.cancel()
            else:
                self._follow_use()
                wanted = self.wanted()  # the most recently used first
                keep = set(wanted)
                now = trio.current_time()
                for dir_id, scope in list(self._tasks.items()):
                    if dir_id not in keep and (not self._young(dir_id, now) or not self.local.exists(dir_id)):
                        scope.cancel()  # least recently used: its handle is closed
                room = self.limit - self._open_watches()
                for dir_id in wanted:
                    if room <= 0:
                        break
                    if dir_id not in self._tasks and now >= self._failed.get(dir_id, 0.0):
                        self._start(nursery, dir_id)
                        room -= 1
            await trio.sleep(TICK_S)

    def _start(self, nursery: trio.Nursery, dir_id: int) -> None:
        scope = self._tasks[dir_id] = trio.CancelScope()
        self._opened_at[dir_id] = trio.current_time()
        nursery.start_soon(self._watch_one, dir_id, scope)

    def _young(self, dir_id: int, now: float) -> bool:
        return now - self._opened_at.get(dir_id, -math.inf) < KEEP_OPEN_S

    def _open_watches(self) -> int:
        """Watch tasks not told to close (a closing one leaves ``_tasks`` once its handle is)."""
        return sum(1 for scope in self._tasks.values() if not scope.cancel_called)

    def _close_least_recently_used(self) -> bool:
        """Close the least recently used watch that is not young; False if there is none."""
        now = trio.current_time()
        order = {dir_id: i for i, dir_id in enumerate(self._used)}  # dropped from history: first
        old = [d for d, scope in self._tasks.items() if not scope.cancel_called and not self._young(d, now)]
        if not old:
            return False
        self._tasks[min(old, key=lambda d: order.get(d, -1))].cancel()
        return True

    async def _watch_one(self, dir_id: int, scope: trio.CancelScope) -> None:
        try:
            with scope:
                _, path = self.local.remote_path(self.local.node(dir_id))
                async with self.upstream.watch(path, tree=False) as changes:
                    self.armed.add(dir_id)
                    self.opened += 1
                    self._failed.pop(dir_id, None)
                    follows = self._listing_follows.pop(dir_id, None)
                    if follows is not None:
                        follows.set()  # the first listing starts now and sees what came before
                    else:
                        self.on_change(dir_id)  # what changed before the watch is unknown
                    async for _batch in changes:
                        self.on_change(dir_id)
                        await trio.sleep(REARM_GAP_S)
        except NotFound:  # not on the server yet (new here), or gone: look again soon
            self._failed[dir_id] = trio.current_time() + NOT_FOUND_RETRY_S
        except CscdError as exc:
            log.debug("no watch on directory %s of %s: %s", dir_id, self.folder, exc)
            self._failed[dir_id] = trio.current_time() + RETRY_S
        finally:
            follows = self._listing_follows.pop(dir_id, None)
            if follows is not None:
                follows.set()  # no watch after all: the listing need not wait
            self.armed.discard(dir_id)
            if self._tasks.get(dir_id) is scope:
                del self._tasks[dir_id]
                del self._opened_at[dir_id]

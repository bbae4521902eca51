"""``Revalidator``: re-listing what no notification speaks for, at a cost a fleet can carry.

Owns the task ``sync.revalidate``: every listing of an online folder that nobody asked for.
Change notifications (``notify``, ``dirwatch``) carry the news where they can; this covers the
rest, paced so that an idle client costs the server almost nothing (issue 16):

- **Slow revalidation**, in every online folder: one directory per ``revalidate_interval_s``
  (default one a minute), the one listed longest ago, of those no watch covers (the folder
  top has the tree watch; the recently used ones their own). It is what finds a write to a
  file in a directory without a watch, which Samba does not report. With one listing (a
  single frame) a minute the server sees no other request from an idle client: the link
  monitor sends its echo only after a silent minute (``link``).
- **Polling**, in a folder whose server does not notify or whose watch is down while the
  link is up: each recently used directory (used in the last ``POLL_RECENT_S``) is re-listed
  after ``scan_interval_s``; each listing that shows no change doubles its period up to
  ``poll_max_s``, a change or a new use sets it back. With the defaults: 3, 6, 12, 24, 48, 96,
  192, 300, 300… s, so a directory last used ten minutes ago has cost ~8 listings and is then
  left to the slow revalidation. A directory expensive to list waits in proportion to its
  cost as well (``scan.rescan_due``).
- **Catch-up**, after a watch was (re)armed, the server lost track of changes, or a reconnect
  of a polled folder: top-down from the folder's top, a directory's subdirectories are
  re-listed only if their change time in its fresh listing moved (a create, delete or rename
  in them changes it; a write to a file in them does not, which the slow revalidation then
  finds). One listing per ``CATCHUP_GAP_S``. After a restart no change time is known, so
  the first catch-up lists every directory once, paced.

No LMDB or wire work here: the cache through ``LocalSide``, listings through ``Scanner``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import trio

from cscd.errors import CscdError, NotFound, UpstreamTimeout, UpstreamUnavailable
from cscd.sync.local import LocalSide
from cscd.sync.scan import Scanner, rescan_due
from cscd.types import FolderLink, Mode

log = logging.getLogger(__name__)

#: How often the task looks at what is due (no network unless something is).
TICK_S = 0.5
#: A directory is polled (server without notifications) for this long after its last use.
POLL_RECENT_S = 600.0
#: At most this many polled directories are re-listed per tick.
POLL_MAX_PER_TICK = 32
#: Pause between two listings of a catch-up (20 a second).
CATCHUP_GAP_S = 0.05
#: directories looked at between two checkpoints of the slow revalidation's choice
REVALIDATE_STEP = 4096


@dataclass
class _Poll:
    period_s: float
    due: float
    used: float  # the use (``recent_dirs`` time) the period was last set back for


class Revalidator:
    def __init__(self, local: LocalSide, links: dict[str, FolderLink], scanner: Scanner, *,
                 scan_interval_s: float, poll_max_s: float, revalidate_interval_s: float,
                 mode: Callable[[str], str], watched: Callable[[str], set[int]],
                 on_link_error: Callable[[str], None]) -> None:
        self.local = local
        self.links = links
        self.scanner = scanner
        self.scan_interval_s = scan_interval_s
        self.poll_max_s = max(poll_max_s, scan_interval_s)
        self.revalidate_interval_s = revalidate_interval_s
        self.mode = mode  # Notifier.mode
        self.watched = watched  # Notifier.watched_dirs
        self.on_link_error = on_link_error
        self._catch_up: set[str] = set()
        self._soon: set[int] = set()
        self._wake = trio.Event()
        self._polls: dict[int, _Poll] = {}
        self._next_revalidation: dict[str, float] = {}
        self._folder: dict[int, str | None] = {}
        self.revalidated = 0
        self.polled = 0
        self.caught_up = 0

    def rescan_soon(self, dir_id: int) -> None:
        """Sync knows the server's listing of ``dir_id`` differs from the cache: list it at
        the next tick (a push that kept a folder on the server, for instance)."""
        self._soon.add(dir_id)
        self._wake.set()

    def catch_up(self, folder: str) -> None:
        """Ask for a paced catch-up of ``folder`` (see the module docstring)."""
        self._catch_up.add(folder)
        self._wake.set()

    def poll_period(self, dir_id: int) -> float | None:
        """The current polling period of a directory (None: not polled)."""
        poll = self._polls.get(dir_id)
        return None if poll is None else poll.period_s

    def polled_in(self, folder: str) -> int:
        """How many directories of ``folder`` are being polled."""
        return sum(1 for d in self._polls if self._folder.get(d) == folder)

    async def run(self) -> None:
        generations = {name: link.generation for name, link in self.links.items()}
        while True:
            with trio.move_on_after(TICK_S):
                await self._wake.wait()
            self._wake = trio.Event()
            for name, link in self.links.items():
                if link.generation != generations[name]:
                    generations[name] = link.generation
                    if link.mode is Mode.ONLINE and self.mode(name) == "polling":
                        self._catch_up.add(name)  # a notifying folder catches up when re-armed
            soon, self._soon = self._soon, set()
            for dir_id in sorted(soon):
                folder = self._folder_of(dir_id)
                if self._online(folder):
                    await self._scan(folder, dir_id)  # type: ignore[arg-type]
            for name in sorted(self._catch_up):
                self._catch_up.discard(name)
                await self._run_catch_up(name)
            await self._poll(trio.current_time())
            await self._revalidate(trio.current_time())

    # -- which folder a directory is in -----------------------------------------------------

    def _folder_of(self, dir_id: int) -> str | None:
        if dir_id not in self._folder:
            try:
                self._folder[dir_id] = self.local.folder_of(self.local.node(dir_id))[0].decode()
            except (NotFound, CscdError):
                return None  # gone, or not placed yet: ask again next time
        return self._folder[dir_id]

    def _online(self, folder: str | None) -> bool:
        link = self.links.get(folder) if folder is not None else None
        return link is not None and link.mode is Mode.ONLINE

    async def _scan(self, folder: str, dir_id: int) -> bool | None:
        """List one directory; whether it changed, None if it could not be listed."""
        try:
            return await self.scanner.scan_dir(dir_id)
        except (UpstreamUnavailable, UpstreamTimeout):
            self.on_link_error(folder)
        except NotFound:
            self.scanner.forget(dir_id)
            self._polls.pop(dir_id, None)
            self._folder.pop(dir_id, None)
        except CscdError as exc:
            log.info("revalidation of directory %s skipped: %s", dir_id, exc)
        return None

    # -- slow revalidation -------------------------------------------------------------------

    async def _revalidate(self, now: float) -> None:
        for name in self.links:
            if not self._online(name) or now < self._next_revalidation.get(name, 0.0):
                continue
            self._next_revalidation[name] = now + self.revalidate_interval_s
            skip = self.watched(name) | set(self._polls) if self.mode(name) == "notify" else set(self._polls)
            best, oldest = None, math.inf
            cost = self.local.listing_cost
            notify = self.mode(name) == "notify"
            for i, dir_id in enumerate(self.local.listed_dirs()):
                if i % REVALIDATE_STEP == REVALIDATE_STEP - 1:
                    await trio.lowlevel.checkpoint()  # a million directories: not one long stall
                if dir_id in skip or self._folder_of(dir_id) != name:
                    continue
                listed_at = cost[dir_id][0] if dir_id in cost else -math.inf
                # whether it is the folder's top (a few index reads) only for a better candidate
                if listed_at < oldest and not (notify and self._is_top(dir_id)):
                    best, oldest = dir_id, listed_at
            if best is not None:
                self.revalidated += 1
                await self._scan(name, best)

    def _is_top(self, dir_id: int) -> bool:
        try:
            return not self.local.folder_of(self.local.node(dir_id))[1]
        except (NotFound, CscdError):
            return False

    # -- polling -----------------------------------------------------------------------------

    async def _poll(self, now: float) -> None:
        recent = self.local.recent_dirs
        for dir_id in [d for d, used in recent.items() if now - used > POLL_RECENT_S]:
            del recent[dir_id]
        for dir_id in [d for d in self._polls if d not in recent]:
            del self._polls[dir_id]
        due: list[tuple[float, int, str]] = []
        for dir_id, used in recent.items():
            folder = self._folder_of(dir_id)
            if not self._online(folder) or self.mode(folder) != "polling":
                self._polls.pop(dir_id, None)
                continue
            poll = self._polls.get(dir_id)
            if poll is None or used > poll.used:  # new, or used again: start from the bottom
                start = poll.due - poll.period_s if poll is not None else used
                poll = self._polls[dir_id] = _Poll(self.scan_interval_s, start + self.scan_interval_s, used)
            cost = self.local.listing_cost.get(dir_id)
            if now >= poll.due and (cost is None or rescan_due(now, *cost)):
                due.append((poll.due, dir_id, folder))  # type: ignore[arg-type]
        for _, dir_id, folder in sorted(due)[:POLL_MAX_PER_TICK]:
            changed = await self._scan(folder, dir_id)
            poll = self._polls.get(dir_id)
            if poll is None or changed is None:
                continue
            self.polled += 1
            poll.period_s = self.scan_interval_s if changed else min(self.poll_max_s, poll.period_s * 2)
            poll.due = trio.current_time() + poll.period_s

    # -- catch-up ----------------------------------------------------------------------------

    async def _run_catch_up(self, folder: str) -> None:
        top = self.local.listed_dir_at(folder.encode(), [])
        if top is None or not self._online(folder):
            return
        self.caught_up += 1
        queue: list[tuple[int, list[bytes]]] = [(top, [])]
        listed = 0
        while queue and self._online(folder):
            dir_id, parts = queue.pop(0)
            before = self.local.child_mtimes.get(dir_id)
            if await self._scan(folder, dir_id) is None:
                continue
            listed += 1
            after = self.local.child_mtimes.get(dir_id, {})
            for name, mtime in after.items():
                if before is not None and before.get(name) == mtime:
                    continue  # nothing created, deleted or renamed in it since
                child = self.local.listed_dir_at(folder.encode(), [*parts, name])
                if child is not None and child != dir_id:
                    queue.append((child, [*parts, name]))
            await trio.sleep(CATCHUP_GAP_S)
        log.debug("caught up with %s: %d directories listed", folder, listed)

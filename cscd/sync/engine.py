"""The sync engine: the tasks that push local changes and pull server changes, per mode.

``sync.push`` wakes on a new dirty mark (after a short settle time) and once a second.
Which folders it may push depends on their mode (DESIGN.md, Modes):

- online: at once;
- slow_link and always_offline: in a background session every interval, plus a random
  offset so a fleet does not hit the server at the same moment;
- offline, working_offline, metered: not at all (a manual ``cscd sync`` still works on a
  metered network; the per-user override turns metered back into online in ``link``).

After each push round the same folders get the newer server versions of their complete
cached copies, fetched whole and swapped in (``refresh``).

``sync.notify:<folder>`` re-lists what the server's change notifications name (``notify``,
``dirwatch``); ``sync.revalidate`` re-lists what nothing speaks for, paced for a fleet
(``revalidate``); every background session lists every listed directory of its folder; and
``sync.chunk`` records the chunk map of each file whose download completes (``hashing``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import lmdb
import trio

from cscd.errors import CacheLost, CscdError
from cscd.sync.exclusions import ExclusionMatcher
from cscd.sync.hashing import Hasher
from cscd.sync.local import LocalSide
from cscd.sync.notify import Notifier
from cscd.sync.push import Pusher
from cscd.sync.refresh import Refresher
from cscd.sync.revalidate import Revalidator
from cscd.sync.scan import Scanner
from cscd.sync.space import SPACE_INTERVAL_S, SpaceWatch
from cscd.types import FolderLink, Mode, OfflinePolicy
from cscd.upstream.base import Upstream
from cscd.upstream.foreground import ForegroundClock, wait_for_a_pause

log = logging.getLogger(__name__)


class Progress(Protocol):
    """Counts of a long piece of work someone follows (``cscd.operations.jobs.Job``)."""

    phase: str

    def add_total(self, files: int = 0, nbytes: int = 0) -> None: ...

    def done(self, files: int = 0, nbytes: int = 0) -> None: ...

BACKGROUND_MODES = (Mode.SLOW_LINK, Mode.ALWAYS_OFFLINE)
MANUAL_MODES = (Mode.ONLINE, Mode.SLOW_LINK, Mode.ALWAYS_OFFLINE, Mode.METERED)
#: the longest a push round waits for a pause in the mount's requests
PUSH_YIELD_MAX_S = 2.0


@dataclass(frozen=True)
class SyncStatistics:
    files_uploaded: int
    bytes_uploaded: int
    deletes: int
    renames: int
    conflicts: int
    dirs_scanned: int
    pending: int
    last_success: float | None
    delta_uploads: int = 0  # uploads that copied part of the old version on the server
    times_only: int = 0  # rewritten with the same content: only the write time was sent
    notify_batches: int = 0  # change notifications received
    bytes_chunked: int = 0  # content cut into chunks and hashed (worker processes)
    sync_problems: int = 0  # files that failed to sync SHOW_AFTER times or more (a gauge)
    #: those files, for ``cscd status``: folder, path, reason, failures, retry_in_s
    problems: tuple = ()


def next_background_s(policy: OfflinePolicy, rng: random.Random) -> float:
    """Seconds to a folder's next background session on a slow link or in Always Offline:
    the interval plus a random offset in ``[0, background_sync_max_offset_s]`` (Windows: 120
    and 60 minutes), drawn afresh each time so a fleet that started together spreads out."""
    return policy.background_sync_interval_s + rng.uniform(0, policy.background_sync_max_offset_s)


#: A restarted sync task waits this long after its first failure, doubling to the maximum.
RESTART_FIRST_S = 1.0
RESTART_MAX_S = 60.0


async def supervised(name: str, fn: Callable[..., Awaitable[object]], *args: object) -> None:
    """Run a sync task for ever: a failure is logged (its traceback once) and the task is
    restarted after a backoff, so no bug in syncing one file, listing or notification ends
    the daemon (DESIGN.md invariant 7). Only the loss of the cache itself goes up: an LMDB
    error means the index is unreadable, and serving on would be worse than stopping."""
    failures = 0
    while True:
        try:
            await fn(*args)
            return
        except lmdb.Error as exc:
            raise CacheLost(f"the cache index failed in {name}: {exc}; the daemon stops (the "
                            "changes it holds stay in the cache for the next start)") from exc
        except Exception as exc:  # noqa: BLE001 - the point of this function
            failures += 1
            delay = min(RESTART_MAX_S, RESTART_FIRST_S * 2 ** (failures - 1))
            if failures == 1:
                log.error("task %s failed and restarts in %g s: %s", name, delay, exc, exc_info=exc)
            else:
                log.info("task %s failed again (%d times), restarts in %g s: %s", name, failures, delay, exc)
            await trio.sleep(delay)


class SyncEngine:
    def __init__(self, local: LocalSide, upstreams: dict[str, Upstream], links: dict[str, FolderLink], *,
                 upload_delay_s: float, scan_interval_s: float, on_link_error: Callable[[str], None],
                 poll_max_s: float = 300.0, revalidate_interval_s: float = 60.0,
                 space_interval_s: float = SPACE_INTERVAL_S, directory_watches: int = 256,
                 policies: dict[str, OfflinePolicy] | None = None,
                 matcher: ExclusionMatcher | None = None, foreground: ForegroundClock | None = None) -> None:
        self.local = local
        self.links = links
        self.policies = policies or {}
        #: the mount's request clock: a push round waits for a pause in the user's requests
        self.foreground = foreground
        self.hasher = Hasher(foreground_clock=str(foreground.path) if foreground else None)
        self.pusher = Pusher(local, upstreams, links, on_link_error, hasher=self.hasher, policies=self.policies,
                             matcher=matcher)
        self.scanner = Scanner(local, upstreams, links, on_link_error, matcher=matcher)
        self.refresher = Refresher(local, upstreams, on_link_error)
        self.notifier = Notifier(local, upstreams, links, self.scanner, on_link_error,
                                 directory_watches=directory_watches)
        self.revalidator = Revalidator(local, links, self.scanner, scan_interval_s=scan_interval_s,
                                       poll_max_s=poll_max_s, revalidate_interval_s=revalidate_interval_s,
                                       mode=self.notifier.mode, watched=self.notifier.watched_dirs,
                                       on_link_error=on_link_error)
        self.space = SpaceWatch(upstreams, links, interval_s=space_interval_s)
        self.notifier.on_catch_up = self.revalidator.catch_up
        self.pusher.on_server_differs = self.revalidator.rescan_soon
        self.upload_delay_s = upload_delay_s
        self.scan_interval_s = scan_interval_s
        self.pending = 0
        self.hydrated_files = 0
        self._next_background: dict[str, float] = {}
        self._rng = random.Random()
        self._push_lock = trio.Lock()
        #: called with (folder, kind, fields) when a background session starts or ends
        self.on_session: Callable[[str, str, dict], None] | None = None

    def _policy(self, folder: str) -> OfflinePolicy:
        return self.policies.get(folder) or OfflinePolicy()

    def _schedule_background(self, folder: str, now: float) -> None:
        self._next_background[folder] = now + next_background_s(self._policy(folder), self._rng)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        now = trio.current_time()
        for folder in self.links:
            self._schedule_background(folder, now)
        async with trio.open_nursery() as nursery:
            for name, fn, args in [("sync.push", self._push_loop, ()), ("sync.revalidate", self.revalidator.run, ()),
                                   ("sync.pins", self._pin_loop, ()), ("sync.space", self.space.run, ()),
                                   ("sync.chunk", self.hasher.run_after_hydration, (self.local,)),
                                   *((f"sync.notify:{folder}", self.notifier.run_folder, (folder,))
                                     for folder in self.links)]:
                nursery.start_soon(supervised, name, fn, *args, name=name)
            task_status.started()

    async def sync_now(self, folder: str | None = None) -> int:
        """A manual sync of one folder or all that can reach their server; returns what is pending."""
        allowed = {n for n, link in self.links.items() if link.mode in MANUAL_MODES and folder in (None, n)}
        # Every mode a manual sync may use lists its folders too (it used to list only online
        # ones: in Always Offline a manual sync then never saw a server change).
        await self.scanner.scan(self.local.listed_dirs(), modes=MANUAL_MODES, folders=allowed)
        return await self._push(allowed)

    async def _push(self, allowed: set[str]) -> int:
        async with self._push_lock:
            self.pending = await self.pusher.push_round(allowed)
            # Then the newer server versions of complete copies (``refresh``): in these same
            # sessions, so Always Offline keeps its copies current in both directions.
            await self.refresher.refresh(allowed)
        return self.pending

    async def _push_loop(self) -> None:
        while True:
            with trio.move_on_after(1.0):
                await self.local.wait_dirty()
                await trio.sleep(self.upload_delay_s)
            await self._after_a_pause_of_the_mount()
            now = trio.current_time()
            allowed = set()
            for name, link in self.links.items():
                if link.mode is Mode.ONLINE:
                    allowed.add(name)
                elif link.mode in BACKGROUND_MODES and now >= self._next_background[name]:
                    await self._background_session(name, now)
            if allowed:
                await self._push(allowed)

    async def _after_a_pause_of_the_mount(self) -> None:
        """Let a burst of the user's requests pass before a push round, ``PUSH_YIELD_MAX_S`` at
        most: a round's bookkeeping runs in the FUSE loop's thread (1,000 small files were
        written at ~560 files/s with sync beside them, ~930 without; bench "small")."""
        if self.foreground is not None:
            await wait_for_a_pause(self.foreground, PUSH_YIELD_MAX_S)

    async def _background_session(self, folder: str, now: float) -> None:
        self._schedule_background(folder, now)
        if self.on_session:
            self.on_session(folder, "started", {})
        await self.scanner.scan(self.local.listed_dirs(), modes=BACKGROUND_MODES, folders={folder})
        left = await self._push({folder})
        if self.on_session:
            self.on_session(folder, "finished", {"pending": left})

    async def _pin_loop(self) -> None:
        """Keep pinned ("always available offline") content complete while online."""
        while True:
            await trio.sleep(self.scan_interval_s)
            await self.hydrate_pinned()

    async def hydrate_pinned(self, job: Progress | None = None) -> int:
        """List pinned directories and fetch pinned files that are not complete; returns how
        many files are still missing (their folder is not online, or a fetch failed).
        ``job`` counts the files found and fetched (its bytes come from the fetch counter)."""
        left = 0
        counted: set[int] = set()
        for _ in range(64):  # each pass may reveal new directories under a pin
            dirs, files = self.local.pinned_missing()
            if not dirs and not files:
                return 0
            if job is not None:
                new = [f for f in files if f not in counted]
                counted.update(new)
                job.add_total(len(new), sum(self.local.node(f).size for f in new))
                job.phase = "listing" if dirs else "fetching"
            progress = False
            for dir_id in dirs:
                if self._online(dir_id):
                    try:
                        await self.scanner.scan_dir(dir_id)
                        progress = True
                    except CscdError as exc:
                        log.info("pinned directory %s not listed: %s", dir_id, exc)
            left = 0
            for node_id in files:
                if not self._online(node_id):
                    left += 1
                    continue
                try:
                    size = self.local.node(node_id).size
                    await self.local.hydrate(node_id, 0, size)
                    self.hydrated_files += 1
                    progress = True
                    if job is not None:
                        job.done(files=1)
                except CscdError as exc:
                    left += 1
                    log.info("pinned file %s not fetched: %s", node_id, exc)
            if not progress:
                break
        return left

    def _online(self, node_id: int) -> bool:
        try:
            folder = self.local.folder_of(self.local.node(node_id))[0].decode()
        except CscdError:
            return False
        link = self.links.get(folder)
        return link is not None and link.mode is Mode.ONLINE

    def change_tracking(self, folder: str) -> dict:
        """How server changes reach ``folder`` now, for ``cscd status`` (issue 16): ``notify``
        (a tree watch, plus watches on recently used directories), ``polling`` (the server
        does not notify, or its watch is down) or ``none`` (the folder is not online)."""
        link = self.links.get(folder)
        mode = self.notifier.mode(folder) if link is not None and link.mode is Mode.ONLINE else "none"
        return {"mode": mode, "directory_watches": len(self.notifier.watched_dirs(folder)),
                "polled_directories": self.revalidator.polled_in(folder)}

    def statistics(self) -> SyncStatistics:
        c = self.pusher.counters
        return SyncStatistics(c.files_uploaded, c.bytes_uploaded, c.deletes, c.renames, c.conflicts,
                              self.scanner.dirs_scanned, self.pending, c.last_success,
                              c.delta_uploads, c.times_only, self.notifier.batches,
                              self.hasher.bytes_chunked, self.pusher.problems.count,
                              tuple(self.pusher.problems.shown(trio.current_time())))

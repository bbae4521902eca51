"""Change notification: one task per folder keeps a tree watch on its target, directory
watches on its recently used directories (``dirwatch``), and rescans exactly the
directories the server says changed.

Owns the watch loop (``Notifier.run_folder``, task ``sync.notify:<folder>``): while the
folder is online, hold ``Upstream.watch`` on the target; for each batch, map every changed
server path to the cached directory whose listing shows it (``LocalSide.listed_dir_at``
follows the agreed server names) and hand those to the folder's rescan task, which re-lists
them with ``Scanner.scan``. The watch loop never waits for a rescan, so the server's queue is
drained within ``REARM_GAP_S`` (an overflowing queue, ~400 changes, costs a rescan of
everything; the gap gathers what comes meanwhile into one reply), and a directory is
re-listed at once after a quiet spell but at most every ``RESCAN_GAP_S`` while changes keep
coming: writing 1,000 files into one directory made our own uploads' notifications re-list
it about 1,200 times in 16 s. When in doubt —
an empty batch (the server lost track), a re-armed watch after a lost link — it asks
``revalidate`` for a paced catch-up of the folder (``on_catch_up``). Writes to files in
directories without a watch of their own, which Samba does not report (FACTS.md), are left
to the slow revalidation. A server that does not notify (``change notify = no``:
``Unsupported``) ends the task quietly: the folder is polled (``mode`` says which).

No LMDB or wire work here: cache access goes through ``LocalSide``, the network through
``Upstream`` and ``Scanner``. Cancellation-safe: leaving the ``watch`` block closes the
handle on the server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from cscd.errors import CscdError, Unsupported, UpstreamTimeout, UpstreamUnavailable
from cscd.sync.dirwatch import REARM_GAP_S, DirectoryWatches
from cscd.sync.local import LocalSide
from cscd.sync.scan import Scanner
from cscd.types import FolderLink, Mode
from cscd.upstream.base import Change, Upstream

log = logging.getLogger(__name__)

#: How often a folder that is not online is looked at again.
ONLINE_POLL_S = 0.25
#: Pause after a failed watch, doubled up to ``RETRY_MAX_S`` while it keeps failing.
RETRY_MIN_S = 0.5
RETRY_MAX_S = 30.0
#: A directory named by notifications is re-listed at most this often (the first one after a
#: quiet spell goes at once; later ones are gathered into one rescan).
RESCAN_GAP_S = 0.5
#: A folder whose watch keeps failing this long while the link is up is polled meanwhile.
WATCH_GRACE_S = 30.0


class Notifier:
    """The change-notification tasks of every folder; ``batches`` counts what arrived."""

    def __init__(self, local: LocalSide, upstreams: dict[str, Upstream],
                 links: dict[str, FolderLink], scanner: Scanner,
                 on_link_error: Callable[[str], None], *, directory_watches: int = 256) -> None:
        self.local = local
        self.upstreams = upstreams
        self.links = links
        self.scanner = scanner
        self.on_link_error = on_link_error
        #: asked for a paced catch-up of a folder (``Revalidator.catch_up``)
        self.on_catch_up: Callable[[str], None] = lambda folder: None
        self.directories = {
            name: DirectoryWatches(name, up, local, directory_watches,
                                   active=lambda name=name: name in self.watching,
                                   on_change=lambda dir_id, name=name: self._changed(name, {dir_id}))
            for name, up in upstreams.items()
        }
        self.watching: set[str] = set()
        self.unsupported: set[str] = set()
        self._lost_at: dict[str, float] = {}  # folder → when its watch failed, until re-armed
        self.batches = 0
        self.rescans = 0
        #: folder → directories named by notifications, not yet re-listed
        self._pending: dict[str, set[int]] = {}
        self._wake: dict[str, trio.Event] = {}

    async def run_folder(self, folder: str) -> None:
        """Watch ``folder`` while it is online; returns only if the server cannot notify."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._rescan_pending, folder)
            nursery.start_soon(self.directories[folder].run)
            await self._watch(folder)
            nursery.cancel_scope.cancel()

    def mode(self, folder: str) -> str:
        """How server changes reach this folder: ``notify`` (a tree watch is up, or being set
        up again: its catch-up covers the gap), ``polling`` (the server does not notify, or
        the watch has failed for ``WATCH_GRACE_S`` while the link is up)."""
        if folder in self.watching:
            return "notify"
        if folder in self.unsupported:
            return "polling"
        lost = self._lost_at.get(folder)
        return "notify" if lost is None or trio.current_time() - lost < WATCH_GRACE_S else "polling"

    async def arm_before_listing(self, folder: str, dir_id: int) -> None:
        """A directory of ``folder`` is about to be listed for the first time: arm its own
        watch first (``DirectoryWatches.arm_before_listing``)."""
        watches = self.directories.get(folder)
        if watches is not None:
            await watches.arm_before_listing(dir_id)

    def watched_dirs(self, folder: str) -> set[int]:
        """The directories of ``folder`` with a watch of their own armed right now."""
        return self.directories[folder].armed

    async def _watch(self, folder: str) -> None:
        up, link = self.upstreams[folder], self.links[folder]
        retry_s = RETRY_MIN_S
        while True:
            # FolderLink is plain data written by link.py (news travels up as data): poll it.
            while link.mode is not Mode.ONLINE:  # noqa: ASYNC110
                self._lost_at.pop(folder, None)  # back online, the watch gets its grace again
                await trio.sleep(ONLINE_POLL_S)
            try:
                async with up.watch(b"") as changes:
                    self.watching.add(folder)
                    self._lost_at.pop(folder, None)
                    retry_s = RETRY_MIN_S
                    log.info("watching %s for changes", up.description)
                    # Armed: from here the server queues every change. What happened
                    # before is unknown, so look at everything once, paced.
                    self.rescans += 1
                    self.on_catch_up(folder)
                    async for batch in changes:
                        self.batches += 1
                        await self._apply(folder, batch)
                        if link.mode is not Mode.ONLINE:
                            break
                        await trio.sleep(REARM_GAP_S)
            except Unsupported as exc:
                self.unsupported.add(folder)
                log.info("%s: %s; periodic scans only", up.description, exc)
                return
            except (UpstreamUnavailable, UpstreamTimeout) as exc:
                log.debug("watch on %s lost: %s", up.description, exc)
                self.on_link_error(folder)
            except CscdError as exc:
                log.info("cannot watch %s for changes: %s", up.description, exc)
            finally:
                if folder in self.watching:
                    self.watching.discard(folder)
                self._lost_at.setdefault(folder, trio.current_time())
            await trio.sleep(retry_s)
            retry_s = min(retry_s * 2, RETRY_MAX_S)

    async def _apply(self, folder: str, batch: list[Change]) -> None:
        if not batch:
            log.debug("%s: the server lost track of changes; catching up", folder)
            self.rescans += 1
            self.on_catch_up(folder)
            return
        dirs: set[int] = set()
        for change in batch:
            parts = change.path.split(b"/")
            dir_id = self.local.listed_dir_at(folder.encode(), parts[:-1])
            if dir_id is not None:
                dirs.add(dir_id)
        if dirs:
            log.debug("%s: %d changes in %d directories", folder, len(batch), len(dirs))
            self._changed(folder, dirs)

    def _changed(self, folder: str, dirs: set[int]) -> None:
        self._pending.setdefault(folder, set()).update(dirs)
        self._wake.setdefault(folder, trio.Event()).set()

    async def _rescan_pending(self, folder: str) -> None:
        """Re-list the directories notifications named, at most every ``RESCAN_GAP_S``."""
        while True:
            wake = self._wake.setdefault(folder, trio.Event())
            await wake.wait()
            self._wake[folder] = trio.Event()
            dirs = self._pending.pop(folder, set())
            if dirs:
                await self.scanner.scan(sorted(dirs))
                await trio.sleep(RESCAN_GAP_S)  # what arrives meanwhile goes in one rescan

"""The sync engine: the tasks that push local changes and pull server changes.

Runs ``sync.push`` (wakes on a new dirty mark, after a short settle time, and once a second
to retry) and ``sync.scan`` (re-lists directories; a full pass after each reconnection).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from cscd.sync.local import LocalSide
from cscd.sync.push import Pusher
from cscd.sync.scan import Scanner
from cscd.types import FolderLink, Mode
from cscd.upstream.base import Upstream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncStatistics:
    files_uploaded: int
    bytes_uploaded: int
    conflicts: int
    dirs_scanned: int
    pending: int


class SyncEngine:
    def __init__(self, local: LocalSide, upstreams: dict[str, Upstream], links: dict[str, FolderLink], *,
                 upload_delay_s: float, scan_interval_s: float, full_scan_interval_s: float,
                 on_link_error: Callable[[str], None]) -> None:
        self.local = local
        self.links = links
        self.pusher = Pusher(local, upstreams, links, on_link_error)
        self.scanner = Scanner(local, upstreams, links, on_link_error)
        self.upload_delay_s = upload_delay_s
        self.scan_interval_s = scan_interval_s
        self.full_scan_interval_s = full_scan_interval_s
        self.pending = 0

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._push_loop, name="sync.push")
            nursery.start_soon(self._scan_loop, name="sync.scan")
            task_status.started()

    async def sync_now(self) -> int:
        """A manual sync: push everything the modes allow; returns what is still pending."""
        self.pending = await self.pusher.push_round(manual=True)
        return self.pending

    async def _push_loop(self) -> None:
        while True:
            with trio.move_on_after(1.0):
                await self.local.wait_dirty()
                await trio.sleep(self.upload_delay_s)
            self.pending = await self.pusher.push_round()

    async def _scan_loop(self) -> None:
        generations = {name: link.generation for name, link in self.links.items()}
        last_full = trio.current_time()
        while True:
            await trio.sleep(self.scan_interval_s)
            now = trio.current_time()
            reconnected = False
            for name, link in self.links.items():
                if link.generation != generations[name]:
                    generations[name] = link.generation
                    reconnected |= link.mode is Mode.ONLINE
            if reconnected or now - last_full >= self.full_scan_interval_s:
                last_full = now
                await self.scanner.scan(self.local.listed_dirs())
            else:
                await self.scanner.scan(self.scanner.recent(now))

    def statistics(self) -> SyncStatistics:
        c = self.pusher.counters
        return SyncStatistics(c.files_uploaded, c.bytes_uploaded, c.conflicts, self.scanner.dirs_scanned, self.pending)

"""Learning about server changes by re-listing directories (one enumeration each).

Recently used directories are re-listed every ``scan_interval_s``, every listed directory
every ``full_scan_interval_s`` and after each return to online; change notification
(``notify``) triggers the same ``scan_dir`` for the directory it names.

The recent-directory rescans are paced by what they cost: a directory whose last listing
(a rescan here or its first listing by the cache, ``LocalSide.listing_cost``) took ``d``
seconds (fetch and merge) is re-listed as "recent" at most every ``d / RECENT_COST_SHARE``
seconds, so a 100,000-entry directory that takes 3 s to list is not fetched again every 3 s
while a small one still is. Full scans and notifications are not paced: they answer a known
or possible change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from cscd.errors import CscdError, NotFound, UpstreamTimeout, UpstreamUnavailable
from cscd.sync.exclusions import ExclusionMatcher, visible
from cscd.sync.local import LocalSide
from cscd.types import FolderLink, Mode
from cscd.upstream.base import Upstream

log = logging.getLogger(__name__)

#: A directory counts as recently used for this long after its last lookup or readdir …
RECENT_S = 60.0
#: … and at most this many of the most recently used are rescanned per tick (the rest wait
#: for the full scan or a change notification).
RECENT_MAX = 32
#: At most this share of the time goes to re-listing any one recent directory (see above).
RECENT_COST_SHARE = 0.05


class Scanner:
    def __init__(self, local: LocalSide, upstreams: dict[str, Upstream], links: dict[str, FolderLink],
                 on_link_error: Callable[[str], None], matcher: ExclusionMatcher | None = None) -> None:
        self.local = local
        self.matcher = matcher or ExclusionMatcher()
        self.upstreams = upstreams
        self.links = links
        self.on_link_error = on_link_error
        self.dirs_scanned = 0

    async def scan_dir(self, dir_id: int) -> None:
        """Re-list one directory on the server and merge the result (network, deadline)."""
        t0 = trio.current_time()
        node = self.local.node(dir_id)
        folder, path = self.local.remote_path(node)
        started = self.local.listing_started()
        entries = visible(await self.upstreams[folder.decode()].list_dir(path), self.matcher)
        self.local.merge_listing(dir_id, entries, started)
        self.dirs_scanned += 1
        t1 = trio.current_time()
        self.local.listing_cost[dir_id] = (t1, t1 - t0)
        log.debug("rescanned %s:%r (%d entries, %.3f s)", folder, path, len(entries), t1 - t0)

    async def scan(self, dir_ids: list[int], *, modes: tuple[Mode, ...] = (Mode.ONLINE,),
                   folders: set[str] | None = None) -> None:
        """Re-list each directory whose folder is in one of ``modes`` (and in ``folders``, if
        given); a folder stops at its first link error."""
        down: set[str] = set()
        for dir_id in dir_ids:
            try:
                node = self.local.node(dir_id)
                folder = self.local.remote_path(node)[0].decode()
                link = self.links.get(folder)
                if folder in down or link is None or link.mode not in modes or (
                        folders is not None and folder not in folders):
                    continue
                await self.scan_dir(dir_id)
            except (UpstreamUnavailable, UpstreamTimeout):
                self.on_link_error(folder)
                down.add(folder)
            except NotFound:
                continue  # gone locally or on the server; the parent's listing settles it
            except CscdError as exc:
                log.info("scan of directory %s skipped: %s", dir_id, exc)
            await trio.lowlevel.checkpoint()

    def recent(self, now: float) -> list[int]:
        """The recently used directories due for a rescan at ``now``, most recent first."""
        recent = self.local.recent_dirs
        for d in [d for d, t in recent.items() if now - t > RECENT_S]:
            del recent[d]
        cost = self.local.listing_cost  # also the first listings, which the cache makes
        for d in [d for d in cost if d not in recent]:
            del cost[d]
        due = [d for d in recent if d not in cost or rescan_due(now, *cost[d])]
        return sorted(due, key=recent.__getitem__, reverse=True)[:RECENT_MAX]


def rescan_due(now: float, ended: float, took_s: float) -> bool:
    """Whether a recent directory whose last listing ended at ``ended`` after ``took_s``
    seconds may be re-listed at ``now`` (at most ``RECENT_COST_SHARE`` of the time on it)."""
    return now - ended >= took_s / RECENT_COST_SHARE

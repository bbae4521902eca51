"""Learning about server changes by re-listing directories (one enumeration each).

``Scanner.scan_dir`` is the one way sync re-lists a directory; who calls it and when is
``revalidate`` (no notification said anything: slow revalidation, polling, catch-up) and
``notify`` (a notification named the directory). Each listing also leaves what the next
decisions need: whether it differed from the one before (``changed``: a polled directory
backs off while it does not), and the change times of the subdirectories it shows
(``LocalSide.child_mtimes``, which the cache's own listings fill too: a catch-up re-lists
only the subdirectories whose change time moved). Both are in memory: after a restart every
directory counts as changed once.
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

#: At most this share of the time goes to re-listing any one polled directory: a directory
#: whose last listing took ``d`` seconds is polled at most every ``d / RECENT_COST_SHARE``
#: seconds, so a 100,000-entry directory that takes 3 s to list is not fetched every 3 s.
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
        self._digests: dict[int, int] = {}

    async def scan_dir(self, dir_id: int) -> bool:
        """Re-list one directory on the server and merge the result (network, deadline);
        returns whether the listing differs from this directory's previous one."""
        t0 = trio.current_time()
        node = self.local.node(dir_id)
        folder, path = self.local.remote_path(node)
        started = self.local.listing_started()
        entries = visible(await self.upstreams[folder.decode()].list_dir(path), self.matcher)
        applied = await self.local.merge_listing(dir_id, entries, started)
        self.dirs_scanned += 1
        t1 = trio.current_time()
        self.local.listing_cost[dir_id] = (t1, t1 - t0)
        digest = hash(tuple(entries))
        changed = self._digests.get(dir_id) != digest
        self._digests[dir_id] = digest
        if applied:
            self.local.child_mtimes[dir_id] = {e.name: e.mtime_ns for e in entries if e.is_dir}
        log.debug("rescanned %s:%r (%d entries, %.3f s)", folder, path, len(entries), t1 - t0)
        return changed

    def forget(self, dir_id: int) -> None:
        """A directory left the cache: drop what its listings left here."""
        self.local.child_mtimes.pop(dir_id, None)
        self._digests.pop(dir_id, None)
        self.local.listing_cost.pop(dir_id, None)

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


def rescan_due(now: float, ended: float, took_s: float) -> bool:
    """Whether a polled directory whose last listing ended at ``ended`` after ``took_s``
    seconds may be re-listed at ``now`` (at most ``RECENT_COST_SHARE`` of the time on it)."""
    return now - ended >= took_s / RECENT_COST_SHARE

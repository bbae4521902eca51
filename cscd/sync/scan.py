"""Learning about server changes by re-listing directories (one enumeration each).

Recently used directories are re-listed every ``scan_interval_s``, every listed directory
every ``full_scan_interval_s`` and after each return to online. Change notification (issue 5)
will trigger the same ``scan_dir`` for the directory it names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from cscd.errors import CscdError, NotFound, UpstreamTimeout, UpstreamUnavailable
from cscd.sync.local import LocalSide
from cscd.types import FolderLink, Mode
from cscd.upstream.base import Upstream

log = logging.getLogger(__name__)

#: A directory counts as recently used for this long after its last lookup or readdir …
RECENT_S = 60.0
#: … and at most this many of the most recently used are rescanned per tick (the rest wait
#: for the full scan or a change notification).
RECENT_MAX = 32


class Scanner:
    def __init__(self, local: LocalSide, upstreams: dict[str, Upstream], links: dict[str, FolderLink],
                 on_link_error: Callable[[str], None]) -> None:
        self.local = local
        self.upstreams = upstreams
        self.links = links
        self.on_link_error = on_link_error
        self.dirs_scanned = 0

    async def scan_dir(self, dir_id: int) -> None:
        node = self.local.node(dir_id)
        folder, path = self.local.remote_path(node)
        started = self.local.listing_started()
        entries = await self.upstreams[folder.decode()].list_dir(path)
        self.local.merge_listing(dir_id, entries, started)
        self.dirs_scanned += 1
        log.debug("rescanned %s:%r (%d entries)", folder, path, len(entries))

    async def scan(self, dir_ids: list[int], *, modes: tuple[Mode, ...] = (Mode.ONLINE,)) -> None:
        """Re-list each directory whose folder is in one of ``modes``; a folder stops at its
        first link error."""
        down: set[str] = set()
        for dir_id in dir_ids:
            try:
                node = self.local.node(dir_id)
                folder = self.local.remote_path(node)[0].decode()
                link = self.links.get(folder)
                if folder in down or link is None or link.mode not in modes:
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
        recent = self.local.recent_dirs
        for d in [d for d, t in recent.items() if now - t > RECENT_S]:
            del recent[d]
        return sorted(recent, key=recent.__getitem__, reverse=True)[:RECENT_MAX]

"""Change notification: one task per folder keeps a tree watch on its target and rescans
exactly the directories the server says changed.

Owns the watch loop (``Notifier.run_folder``, task ``sync.notify:<folder>``): while the
folder is online, hold ``Upstream.watch`` on the target; for each batch, map every changed
server path to the cached directory whose listing shows it (``LocalSide.listed_dir_at``
follows the agreed server names) and re-list those with ``Scanner.scan``. When in doubt —
an empty batch (the server lost track), a re-armed watch after a lost link, a change under
a name this client never saw — it rescans every listed directory of the folder. The
periodic scan in ``engine`` keeps running as the fallback; it also covers what Samba does
not report (writes to files in subfolders of the watched one, FACTS.md). A server that
does not notify (``change notify = no``: ``Unsupported``) ends the task quietly.

No LMDB or wire work here: cache access goes through ``LocalSide``, the network through
``Upstream`` and ``Scanner``. Cancellation-safe: leaving the ``watch`` block closes the
handle on the server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from cscd.errors import CscdError, NotFound, Unsupported, UpstreamTimeout, UpstreamUnavailable
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


class Notifier:
    """The change-notification tasks of every folder; ``batches`` counts what arrived."""

    def __init__(self, local: LocalSide, upstreams: dict[str, Upstream],
                 links: dict[str, FolderLink], scanner: Scanner,
                 on_link_error: Callable[[str], None]) -> None:
        self.local = local
        self.upstreams = upstreams
        self.links = links
        self.scanner = scanner
        self.on_link_error = on_link_error
        self.watching: set[str] = set()
        self.unsupported: set[str] = set()
        self.batches = 0
        self.rescans = 0

    async def run_folder(self, folder: str) -> None:
        """Watch ``folder`` while it is online; returns only if the server cannot notify."""
        up, link = self.upstreams[folder], self.links[folder]
        retry_s = RETRY_MIN_S
        while True:
            # FolderLink is plain data written by link.py (news travels up as data): poll it.
            while link.mode is not Mode.ONLINE:  # noqa: ASYNC110
                await trio.sleep(ONLINE_POLL_S)
            try:
                async with up.watch(b"") as changes:
                    self.watching.add(folder)
                    retry_s = RETRY_MIN_S
                    log.info("watching %s for changes", up.description)
                    # Armed: from here the server queues every change. What happened
                    # before is unknown, so look at everything once.
                    await self._rescan_folder(folder)
                    async for batch in changes:
                        self.batches += 1
                        await self._apply(folder, batch)
                        if link.mode is not Mode.ONLINE:
                            break
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
                self.watching.discard(folder)
            await trio.sleep(retry_s)
            retry_s = min(retry_s * 2, RETRY_MAX_S)

    async def _apply(self, folder: str, batch: list[Change]) -> None:
        if not batch:
            log.debug("%s: the server lost track of changes; rescanning", folder)
            await self._rescan_folder(folder)
            return
        dirs: set[int] = set()
        for change in batch:
            parts = change.path.split(b"/")
            dir_id = self.local.listed_dir_at(folder.encode(), parts[:-1])
            if dir_id is not None:
                dirs.add(dir_id)
        if dirs:
            log.debug("%s: %d changes, rescanning %d directories", folder, len(batch), len(dirs))
            await self.scanner.scan(sorted(dirs))

    async def _rescan_folder(self, folder: str) -> None:
        """Re-list every listed directory of ``folder``."""
        name = folder.encode()
        mine = []
        for dir_id in self.local.listed_dirs():
            try:
                if self.local.folder_of(self.local.node(dir_id))[0] == name:
                    mine.append(dir_id)
            except NotFound:
                continue
        if mine:
            self.rescans += 1
            await self.scanner.scan(mine)

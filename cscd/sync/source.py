"""``FolderSource``: what the cache may fetch from the server, per folder, under its mode.

Implements the cache's ``RemoteSource``. Every call has a deadline (``fetch_timeout_s``);
a lost server is reported to the link monitor at once, so the folder turns offline and the
next uncached read fails immediately instead of waiting again.

Server listings are filtered here, before the cache sees them: names that
``offline_files.exclude_patterns`` keeps out of sync are not shown (``exclusions.visible``;
sync's scanner applies the same filter, so a listing looks the same whichever way it came).
``WriteThroughPusher`` is the write-through path of
folders that are not cached (``offline: false``): ``fs`` calls it at close and fsync, and it
runs the sync pusher on that one node now, under the source's mode rules.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from cscd.errors import NotAvailableOffline, UpstreamTimeout, UpstreamUnavailable
from cscd.sync.exclusions import ExclusionMatcher, visible
from cscd.types import FolderLink, Mode, OfflinePolicy, RemoteEntry
from cscd.upstream.base import Upstream

log = logging.getLogger(__name__)


class NodePusher(Protocol):
    """The one method of ``sync.push.Pusher`` the write-through path needs."""

    async def push_node(self, node_id: int) -> None: ...


class FolderSource:
    def __init__(self, upstreams: dict[str, Upstream], links: dict[str, FolderLink], *,
                 fetch_timeout_s: float, on_link_error: Callable[[str], None],
                 policies: dict[str, OfflinePolicy] | None = None,
                 matcher: ExclusionMatcher | None = None) -> None:
        self.policies = policies or {}
        self.upstreams = upstreams
        self.links = links
        self.fetch_timeout_s = fetch_timeout_s
        self.on_link_error = on_link_error
        self.matcher = matcher or ExclusionMatcher()
        self.bytes_fetched = 0
        #: arms a directory's watch before its first listing (``Notifier.arm_before_listing``;
        #: wired by the daemon once sync's engine exists)
        self.arm_watch: Callable[[str, int], Awaitable[None]] | None = None

    def may_list(self, folder: bytes) -> bool:
        """Listing a never-listed directory costs little: allowed whenever the server is
        reachable and the user has not chosen to work offline (metered included)."""
        link = self.links.get(folder.decode())
        return link is not None and (link.mode.may_fetch or link.mode is Mode.METERED)

    def mode_of(self, folder: bytes) -> str:
        link = self.links.get(folder.decode())
        return "unknown" if link is None else link.mode.value

    def serves_cached(self, folder: bytes) -> bool:
        """Every mode but online serves cached files without asking the server (slow link,
        always offline, metered, offline, working offline): newer versions are swapped in by
        sync (``cscd.sync.refresh``), never left as placeholders."""
        link = self.links.get(folder.decode())
        return link is not None and link.mode is not Mode.ONLINE

    def may_fetch(self, folder: bytes) -> bool:
        name = folder.decode()
        link = self.links.get(name)
        if link is None or not link.mode.may_fetch:
            return False
        if link.mode in (Mode.SLOW_LINK, Mode.ALWAYS_OFFLINE):
            return (self.policies.get(name) or OfflinePolicy()).fetch_uncached_on_slow_link
        return True

    async def _call(self, folder: bytes, fn, *args, timeout_s: float | None = None):
        name = folder.decode()
        timeout_s = self.fetch_timeout_s if timeout_s is None else timeout_s
        try:
            with trio.fail_after(timeout_s):
                return await fn(*args)
        except trio.TooSlowError:
            self.on_link_error(name)
            raise UpstreamTimeout(f"the server did not answer within {timeout_s:g} s") from None
        except (UpstreamUnavailable, UpstreamTimeout):
            self.on_link_error(name)
            raise
        except OSError as exc:
            self.on_link_error(name)
            raise NotAvailableOffline(f"server unreachable: {exc}") from None

    async def read(self, folder: bytes, path: bytes, offset: int, length: int) -> bytes:
        data = await self._call(folder, self.upstreams[folder.decode()].read, path, offset, length)
        self.bytes_fetched += len(data)
        return data

    async def list_dir(self, folder: bytes, path: bytes) -> list[RemoteEntry]:
        entries = await self._call(folder, self.upstreams[folder.decode()].list_dir, path)
        return visible(entries, self.matcher)

    async def list_dir_in_pages(self, folder: bytes, path: bytes,
                                on_page: Callable[[list[RemoteEntry]], Awaitable[None]]) -> None:
        async def visible_page(entries: list[RemoteEntry]) -> None:
            shown = visible(entries, self.matcher)
            if shown:
                await on_page(shown)

        await self._call(folder, self.upstreams[folder.decode()].list_dir_in_pages, path, visible_page)

    async def before_first_listing(self, folder: bytes, dir_id: int) -> None:
        if self.arm_watch is not None:
            await self.arm_watch(folder.decode(), dir_id)


class WriteThroughPusher:
    """The filesystem's ``WriteThrough``: one node's change pushed now, within the source's
    rules (the daemon builds it from the source and sync's pusher, after both exist)."""

    def __init__(self, source: FolderSource, pusher: NodePusher) -> None:
        self.source = source
        self.pusher = pusher

    async def push(self, folder: bytes, node_id: int) -> None:
        """Put one node's local change on the server now.

        Waits on the network. Raises ``UpstreamUnavailable`` / ``UpstreamTimeout`` /
        ``NotAvailableOffline`` (the link monitor hears of it) or another ``CscdError`` when
        the server refused; ``fs`` reports it to the application.
        """
        if not self.source.may_list(folder):
            raise NotAvailableOffline(f"{folder.decode(errors='replace')} cannot reach its server now")
        # No overall deadline: a large upload may take long; each request has its own timeout.
        await self.source._call(folder, self.pusher.push_node, node_id, timeout_s=float("inf"))

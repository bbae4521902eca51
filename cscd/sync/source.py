"""``FolderSource``: what the cache may fetch from the server, per folder, under its mode.

Implements the cache's ``RemoteSource``. Every call has a deadline (``fetch_timeout_s``);
a lost server is reported to the link monitor at once, so the folder turns offline and the
next uncached read fails immediately instead of waiting again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from cscd.errors import NotAvailableOffline, UpstreamTimeout, UpstreamUnavailable
from cscd.types import FolderLink, Mode, OfflinePolicy, RemoteEntry
from cscd.upstream.base import Upstream

log = logging.getLogger(__name__)


class FolderSource:
    def __init__(self, upstreams: dict[str, Upstream], links: dict[str, FolderLink], *,
                 fetch_timeout_s: float, on_link_error: Callable[[str], None],
                 policies: dict[str, OfflinePolicy] | None = None) -> None:
        self.policies = policies or {}
        self.upstreams = upstreams
        self.links = links
        self.fetch_timeout_s = fetch_timeout_s
        self.on_link_error = on_link_error
        self.bytes_fetched = 0

    def may_list(self, folder: bytes) -> bool:
        """Listing a never-listed directory costs little: allowed whenever the server is
        reachable and the user has not chosen to work offline (metered included)."""
        link = self.links.get(folder.decode())
        return link is not None and (link.mode.may_fetch or link.mode is Mode.METERED)

    def may_fetch(self, folder: bytes) -> bool:
        name = folder.decode()
        link = self.links.get(name)
        if link is None or not link.mode.may_fetch:
            return False
        if link.mode in (Mode.SLOW_LINK, Mode.ALWAYS_OFFLINE):
            return (self.policies.get(name) or OfflinePolicy()).fetch_uncached_on_slow_link
        return True

    async def _call(self, folder: bytes, fn, *args):
        name = folder.decode()
        try:
            with trio.fail_after(self.fetch_timeout_s):
                return await fn(*args)
        except trio.TooSlowError:
            self.on_link_error(name)
            raise UpstreamTimeout(f"the server did not answer within {self.fetch_timeout_s:g} s") from None
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
        return await self._call(folder, self.upstreams[folder.decode()].list_dir, path)

"""``Refresher``: newer server versions of complete cached copies, fetched whole and swapped in.

In every mode but online a listing that shows a newer version of a complete copy leaves the
copy alone and notes the version (``cscd.cache.newer``): Offline Files serves such a folder
from the cache, and a file the user made available offline must never turn back into a
placeholder there. This is the other half: when the folder's mode lets sync reach the server
(online, a slow-link or always-offline background session, a manual ``cscd sync``, also on a
metered network), each noted version is fetched into a side file and swapped in at once, so
a reader sees the old version or the new one, never a mix. Runs after each push round
(``SyncEngine._push``); a file open, or changed here meanwhile, waits (a local change makes
the push keep both versions).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

import trio

from cscd.errors import CacheFull, CscdError, NotFound, UpstreamTimeout, UpstreamUnavailable
from cscd.sync.local import LocalSide
from cscd.types import RemoteEntry
from cscd.upstream.base import Upstream

log = logging.getLogger(__name__)

#: Bytes asked of the server per read while fetching a newer version.
READ_BYTES = 4 << 20
#: Fetched versions up to this size are synced to disk inline; larger ones in a thread.
FSYNC_INLINE_BYTES = 1 << 20


class Refresher:
    def __init__(self, local: LocalSide, upstreams: dict[str, Upstream],
                 on_link_error: Callable[[str], None]) -> None:
        self.local = local
        self.upstreams = upstreams
        self.on_link_error = on_link_error
        self.files_refreshed = 0
        self.bytes_refreshed = 0

    async def refresh(self, allowed: set[str]) -> int:
        """Swap in the noted newer versions of the ``allowed`` folders; returns how many wait on."""
        left = 0
        down: set[str] = set()
        for node, noted in self.local.newer_versions():
            try:
                folder, path = self.local.remote_path(node)
            except CscdError:
                continue  # not on the server any more: the next listing settles it
            name = folder.decode()
            if name not in allowed or name in down or name not in self.upstreams:
                left += 1
                continue
            if self.local.is_open(node.id):
                left += 1  # swapped after the last close
                continue
            try:
                if not await self._refresh_one(node, noted, path, self.upstreams[name]):
                    left += 1
            except (UpstreamUnavailable, UpstreamTimeout) as exc:
                log.info("newer versions in %s not fetched: %s", name, exc)
                self.on_link_error(name)
                down.add(name)
                left += 1
            except CacheFull as exc:
                log.warning("the newer server version of %r is not fetched: %s", path, exc)
                left += 1
            except CscdError as exc:
                log.info("the newer server version of %r is not fetched yet: %s", path, exc)
                left += 1
        return left

    async def _refresh_one(self, node, noted: RemoteEntry, path: bytes, up: Upstream) -> bool:
        try:
            current = await up.stat(path)
        except NotFound:
            self.local.forget_newer(node.id)  # gone from the server: the next listing says so
            return True
        if node.matches_base(current):
            self.local.forget_newer(node.id)  # the server went back to our version
            return True
        if not current.same_version(noted):
            return False  # changed again: the next listing notes the newest
        fetched = self.local.newer_fetch_path(node.id)
        await self._fetch(up, path, noted.size, fetched, functools.partial(self.local.write_content, node.id))
        try:
            after = await up.stat(path)
        except NotFound:
            after = None
        if not noted.same_version(after) or not self.local.swap_in(node.id, noted):
            fetched.unlink(missing_ok=True)
            return False
        self.files_refreshed += 1
        self.bytes_refreshed += noted.size
        log.info("%r: the newer server version (%d bytes) replaced the cached copy", path, noted.size)
        return True

    @staticmethod
    async def _fetch(up: Upstream, path: bytes, size: int, fetched, write: Callable[[int, bytes, int], int]) -> None:
        """The server's ``path`` into the file ``fetched``, written with ``write`` (the cache's
        ``pwrite``: sealed where the cache is); ``CacheFull`` when the disk is full."""
        fd = os.open(fetched, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            done = 0
            while done < size:
                data = await up.read(path, done, min(READ_BYTES, size - done))
                if not data:
                    raise NotFound(f"{path!r} ended at {done} of {size} bytes while it was fetched")
                try:
                    write(fd, data, done)
                except CacheFull:
                    raise
                except OSError as exc:
                    raise CacheFull(f"the cache's filesystem cannot hold it: {exc.strerror}") from None
                done += len(data)
            if size > FSYNC_INLINE_BYTES:
                await trio.to_thread.run_sync(os.fsync, fd)
            else:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            fetched.unlink(missing_ok=True)
            raise
        os.close(fd)

"""Filling placeholders: reading content that may not be local yet, in ranges.

Owns on-demand hydration: which blocks a read needs (aligned to ``BLOCK_BYTES``, with a
read-ahead window that doubles while a reader stays sequential), one fetch at a time per
file for readers, a background read-ahead of several windows at once ahead of a sequential
reader (each window a pipelined read of its own, so a link with a long round trip stays
full: bench/ "first read over a 40 ms round trip"), and writing fetched bytes only into holes
(never over local writes made meanwhile) and only if the file's base did not change during
the fetch. The network is reached only
through the cache's ``RemoteSource``, which applies the folder's mode and deadline.

Also the traffic of content this machine does not keep (``residency.py`` decides what that
is): a file larger than ``offline_files.max_file_size`` is read straight from the server,
never stored; in a folder that is not cached (``offline: false``) every operation first
passes ``guard`` — it fails with EHOSTDOWN when the server cannot be reached (nothing is
served from what happens to be local) and re-lists the directory so names and attributes
are the server's —, and ``write_through_folder`` names the changes that must reach the server before ``close`` or
``fsync`` returns, dropping it if that fails.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import trio

from cscd import symlinks
from cscd.cache import nodes, ranges
from cscd.cache.core import CacheCore
from cscd.cache.listings import Listings, RemoteSource
from cscd.cache.nodes import Flag, Node
from cscd.cache.residency import Residency
from cscd.errors import AccessDenied, CorruptContent, CscdError, NotAvailableOffline, NotFound, Unsupported
from cscd.events import EventId, emit
from cscd.types import ROOT_ID

log = logging.getLogger(__name__)

#: Hydration granularity: missing bytes are fetched in aligned blocks of this size.
BLOCK_BYTES = 1 << 20
#: A sequential reader gets up to this much read ahead per fetch.
READAHEAD_BYTES = 8 << 20
#: Read-ahead fetches of ``READAHEAD_BYTES`` in flight at once, per sequential reader and in
#: all: each is a pipelined read of its own, so a link with a long round trip carries several
#: windows at a time instead of one (at 40 ms, one window at a time is 41 MB/s).
READAHEAD_WINDOWS = 4
#: … and in all, so that half of a connection's threads (``SmbUpstream``: 8) stay free for
#: listings and other readers' first fetches
READAHEAD_WINDOWS_IN_ALL = 4
#: In a folder that is not cached, a directory is re-listed on lookup and readdir when its
#: last listing is older than this (the kernel's own entry timeout is 1 s); ``open`` always
#: re-lists, so a read sees the server's current version.
FRESH_S = 1.0


@dataclasses.dataclass(eq=False)
class _Flight:
    """A background read-ahead of ``[lo, hi)`` of one file; ``done`` is set when it ends."""

    lo: int
    hi: int
    done: trio.Event = dataclasses.field(default_factory=trio.Event)


class Hydration:
    """Reads of cached files, and the fetches that fill what is missing."""

    def __init__(self, core: CacheCore, source: RemoteSource, residency: Residency, listings: Listings) -> None:
        self.core = core
        self.source = source
        self.residency = residency
        self.listings = listings
        #: why the cache serves nothing offline now (the device does not comply), or None
        self.offline_refused: str | None = None
        #: folders revoked by the device policy (``device.wipe``) → why: nothing of them is served
        self.revoked: dict[bytes, str] = {}
        #: ids of files whose download just completed; sync chunks them (news upward as data)
        self.hydrated_send, self.hydrated = trio.open_memory_channel[int](1_000)
        self._locks: dict[int, trio.Lock] = {}
        self._readahead: dict[int, tuple[int, int]] = {}
        #: where background read-ahead runs (``Cache.run`` sets it); None: a reader's fetches
        #: are its own, one window at a time
        self.background: trio.Nursery | None = None
        #: background read-aheads in flight, per file
        self._flights: dict[int, list[_Flight]] = {}
        self._flights_in_all = 0
        #: files whose "not available offline" (event 2020) was told since they were last fetched
        self._told_unavailable: set[int] = set()
        self.hits = 0
        self.misses = 0
        #: bytes fetched from the server into the cache, in all (a pin's progress counts them)
        self.bytes_fetched = 0
        #: files whose content a fetch (or a swap of a newer version) made complete here
        self.files_downloaded = 0

    async def read(self, node_id: int, fd: int, offset: int, length: int) -> bytes | bytearray:
        """Bytes of the node's content, for a FUSE reply (any buffer); waits on the network
        only for bytes not present."""
        node = self.core.node(node_id)
        end = min(offset + length, node.size)
        if offset >= end:
            return b""
        if node.is_hydrated:
            self.hits += 1
        elif self.residency.is_too_large(node) and not self.core.is_open_for_write(node_id):
            return await self._read_through(node, offset, end)
        else:
            await self.hydrate(node_id, offset, end)
            self._read_ahead(node, end)
        return self.core.store.read_reply(fd, end - offset, offset)

    def _read_ahead(self, node: Node, end: int) -> None:
        """Keep up to ``READAHEAD_WINDOWS`` windows fetching ahead of a sequential reader, in the
        background: the reader then finds its next bytes here or in flight, and never waits
        for a window to be asked for after it has read the last one."""
        last_end, window = self._readahead.get(node.id, (-1, 0))
        if self.background is None or window < READAHEAD_BYTES:
            return  # not (yet) a sequential reader: its own fetches grow the window first
        if not self.residency.keeps_content(node):
            return  # a folder not cached drops content at the last close: none may land after
        flights = self._flights.setdefault(node.id, [])
        ahead = READAHEAD_WINDOWS * READAHEAD_BYTES
        while (last_end < node.size and last_end - end < ahead and len(flights) < READAHEAD_WINDOWS
               and self._flights_in_all < READAHEAD_WINDOWS_IN_ALL):
            flight = _Flight(last_end, min(node.size, last_end + READAHEAD_BYTES))
            flights.append(flight)
            self._flights_in_all += 1
            self.background.start_soon(self._fetch_ahead, node.id, flight)
            last_end = flight.hi
        self._readahead[node.id] = (last_end, window)
        if not flights:
            del self._flights[node.id]

    async def _fetch_ahead(self, node_id: int, flight: _Flight) -> None:
        """One read-ahead window: best effort; a reader fetches for itself what this misses.
        Runs beside the file's other fetches (they cover other bytes, and ``_fill`` only fills
        holes), not under its lock."""
        try:
            node = self.core.node(node_id)
            with self.core.txn() as txn:
                need = ranges.missing(self.core.present(txn, node), flight.lo, min(flight.hi, node.size))
            folder, path = self.core.remote_path(node)
            if need and self.source.may_fetch(folder):
                await self._fetch(node, folder, path, need[0][0] // BLOCK_BYTES * BLOCK_BYTES, flight.hi)
        except (CscdError, OSError) as exc:
            log.debug("read-ahead of node %d [%d, %d) dropped: %s", node_id, flight.lo, flight.hi, exc)
        except Exception:  # a bug here must not end the daemon: the reader fetches for itself
            log.exception("read-ahead of node %d [%d, %d) failed", node_id, flight.lo, flight.hi)
        finally:
            self._flights_in_all -= 1
            flights = self._flights.get(node_id, [])
            if flight in flights:
                flights.remove(flight)
                if not flights:
                    del self._flights[node_id]
            flight.done.set()

    async def _wait_for_flights(self, node_id: int, start: int, end: int) -> None:
        """Wait for the read-aheads in flight that cover ``[start, end)`` (not fetching it twice)."""
        for flight in list(self._flights.get(node_id, ())):
            if flight.lo < end and start < flight.hi:
                await flight.done.wait()

    # ------------------------------------------------------------ symbolic links

    @staticmethod
    def may_be_link(node: Node) -> bool:
        """Whether ``recognize_link`` may still find this file to be a link (not checked yet)."""
        return (not node.is_dir and node.size == symlinks.SIZE and node.has_base
                and not node.flags & (Flag.SYMLINK | Flag.LINK_CHECKED))

    async def recognize_link(self, node: Node) -> Node:
        """A 1067-byte file from the server may be a Minshall-French link another client made:
        read it once (fetching it if the folder's mode allows) and remember the answer in the
        node's flags. Returns the node as it is now. A file that cannot be read now stays a
        regular file until a later lookup can; a changed one here is never a link."""
        if not self.may_be_link(node):
            return node
        ix = self.core.index
        with self.core.txn() as txn:
            if nodes.dirty_reasons(ix, txn, node.id):
                return node
        try:
            await self.hydrate(node.id, 0, node.size)
            target = symlinks.decode(self._content(node.id, symlinks.SIZE))
        except (CscdError, OSError) as exc:
            log.debug("%r: not checked for a link yet: %s", node.name, exc)
            return node
        with self.core.txn(write=True) as txn:
            now = nodes.find(ix, txn, node.id)
            if now is None or now.version != node.version or now.base_file_id != node.base_file_id:
                return now or node  # changed meanwhile: the next lookup asks again
            now.flags |= Flag.SYMLINK if target is not None else Flag.LINK_CHECKED
            nodes.put(ix, txn, now)
        if target is not None:
            self.core.publish(("inode", node.id))
        return now

    async def link_target(self, node_id: int) -> bytes:
        """What a symbolic link points to (``readlink``); fetches its 1067 bytes if they are not
        here. Never follows the link."""
        node = self.core.node(node_id)
        if not node.is_symlink:
            raise Unsupported(f"{node.name!r} is not a symbolic link")
        await self.hydrate(node_id, 0, node.size)
        target = symlinks.decode(self._content(node_id, node.size))
        if target is None:
            raise CorruptContent(f"{node.name!r}: its Minshall-French link form is damaged")
        return target

    def link_length(self, node: Node) -> int:
        """``st_size`` of a link: its target's length, from the header (0 if not here)."""
        try:
            head = self._content(node.id, 9)
        except OSError:
            return 0
        return int(head[5:9]) if head[5:9].isdigit() else 0

    def _content(self, node_id: int, length: int) -> bytes:
        fd = self.core.store.open_readonly(node_id)
        try:
            return self.core.store.read(fd, length, 0)
        finally:
            os.close(fd)

    async def _read_through(self, node: Node, offset: int, end: int) -> bytes:
        """Bytes straight from the server, not stored (a file too large to cache)."""
        self.misses += 1
        folder, path = self.core.remote_path(node)
        if not self.source.may_fetch(folder):
            raise NotAvailableOffline(f"{path.decode(errors='replace')} is larger than "
                                      "offline_files.max_file_size, so never cached, and the server "
                                      "cannot be reached in this mode")
        return await self.source.read(folder, path, offset, end - offset)

    async def guard(self, node_id: int, *, fresh: bool = False, now: bool = False) -> Node:
        """Check a node before an operation; returns it. Fast and local for cached folders.

        In a folder that is not cached: raises ``NotAvailableOffline`` (EHOSTDOWN) while its
        server cannot be reached (the folder's own node is still shown in the mount's root),
        and with ``fresh`` re-lists the node's directory (its parent for a file) if the last
        listing is older than ``FRESH_S`` — with ``now``, always. Waits on the network then,
        within the source's deadline.
        """
        node = self.core.node(node_id)
        if self.revoked and node.id != ROOT_ID:
            folder = self.core.folder_of(node)[0] if node.parent != ROOT_ID else node.name
            if folder in self.revoked:
                raise AccessDenied(f"{folder.decode(errors='replace')}: {self.revoked[folder]}")
        if self.offline_refused is not None and node.id != ROOT_ID:
            self._refuse_offline(node, fresh)
        folder = self.residency.uncached_folder_of(node)
        if folder is None:
            return node
        if not self.source.may_list(folder):
            if node.parent == ROOT_ID and not fresh:
                return node  # the folder's entry in the mount's root (ls -l of the mount)
            raise NotAvailableOffline(f"{folder.decode(errors='replace')} is not cached on this machine "
                                      "and its server cannot be reached now")
        if fresh:
            await self.listings.refresh(node.id if node.is_dir else node.parent, 0.0 if now else FRESH_S)
            node = self.core.node(node_id)
        return node

    def _refuse_offline(self, node: Node, fresh: bool) -> None:
        """With the device out of compliance (``offline_refused``), a folder whose server does
        not answer serves nothing from its cache (its own entry in the mount's root excepted,
        as for a folder that is not cached)."""
        folder = self.core.folder_of(node)[0]
        if (node.parent != ROOT_ID or fresh) and not self.source.may_list(folder):
            raise NotAvailableOffline(f"{folder.decode(errors='replace')} is offline and its cache is shut: "
                                      f"{self.offline_refused}")

    def write_through_folder(self, node_id: int) -> bytes | None:
        """The uncached folder whose change to ``node_id`` must reach the server before the
        syscall returns (``close``, ``fsync``, namespace changes), or None (a cached folder,
        or a new file removed again). Local only: ``fs`` then calls the ``WriteThrough``
        the daemon wired to sync's pusher."""
        if not self.residency.uncached_folders:
            return None
        try:
            node = self.core.node(node_id)
        except NotFound:
            return None
        return self.residency.uncached_folder_of(node)

    def write_through_failed(self, node_id: int, folder: bytes, exc: CscdError, *, discard: bool) -> None:
        """A write-through of ``node_id`` failed (the application hears of it): report it, and
        with ``discard`` drop the content change (``residency.discard_change``) so nothing
        waits in a queue. A namespace change (``discard=False``: mkdir, rename, unlink) that
        failed stays pending and is pushed when the folder is back online."""
        try:
            path = b"/".join(self.core.path_of(self.core.node(node_id))[1:]).decode(errors="replace")
        except NotFound:
            path = f"node {node_id}"
        emit(EventId.UPLOAD_FAILED_WRITE_THROUGH, folder=folder.decode(errors="replace"), path=path,
             reason=str(exc) or type(exc).__name__, kept="pending" if not discard else "dropped")
        if discard:
            self.residency.discard_change(node_id)

    async def hydrate(self, node_id: int, start: int, end: int) -> None:
        """Make ``[start, end)`` present, fetching missing blocks (plus read-ahead) from the source."""
        with self.core.txn() as txn:
            node = nodes.get(self.core.index, txn, node_id)
            need = ranges.missing(self.core.present(txn, node), start, min(end, node.size))
        if not need:
            self.hits += 1
            return
        self.misses += 1
        await self._wait_for_flights(node_id, need[0][0], need[-1][1])
        lock = self._locks.setdefault(node_id, trio.Lock())
        async with lock:
            node = self.core.node(node_id)
            with self.core.txn() as txn:
                need = ranges.missing(self.core.present(txn, node), start, min(end, node.size))
            if not need:
                return
            folder, path = self.core.remote_path(node)
            if not self.source.may_fetch(folder):
                if node_id not in self._told_unavailable:  # once per file until it is fetched
                    self._told_unavailable.add(node_id)
                    emit(EventId.NOT_AVAILABLE_OFFLINE, folder=folder.decode(errors="replace"),
                         path=path.decode(errors="replace"), mode=self.source.mode_of(folder))
                raise NotAvailableOffline(
                    f"{path.decode(errors='replace')} is not available offline (not cached)"
                )
            lo = need[0][0] // BLOCK_BYTES * BLOCK_BYTES
            # Read ahead only for a sequential reader: double the window while reads follow on.
            last_end, window = self._readahead.get(node_id, (-1, BLOCK_BYTES))
            window = min(window * 2, READAHEAD_BYTES) if lo <= last_end <= need[0][1] else BLOCK_BYTES
            hi = min(node.size, max(-(-need[-1][1] // BLOCK_BYTES) * BLOCK_BYTES, lo + window))
            self._readahead[node_id] = (hi, window)
            await self._fetch(node, folder, path, lo, hi)

    async def _fetch(self, node: Node, folder: bytes, path: bytes, lo: int, hi: int) -> None:
        """Fetch ``[lo, hi)`` into the holes it covers (the caller holds the file's lock, or is
        a read-ahead of bytes nobody else fetches)."""
        pos = lo
        while pos < hi:
            n = min(hi - pos, READAHEAD_BYTES)
            base_before = (node.base_file_id, node.base_size, node.base_mtime_ns)
            data = await self.source.read(folder, path, pos, n)
            self._fill(node.id, base_before, pos, data)
            if len(data) < n:
                break
            pos += n

    def _fill(self, node_id: int, base_before: tuple, offset: int, data: bytes) -> None:
        """Write fetched bytes into the holes they cover, unless the base changed meanwhile."""
        ix = self.core.index
        with self.core.txn(write=True) as txn:
            node = nodes.find(ix, txn, node_id)
            if node is None or (node.base_file_id, node.base_size, node.base_mtime_ns) != base_before:
                return
            have = self.core.present(txn, node)
            end = min(offset + len(data), node.size)
            holes = ranges.missing(have, offset, end)
            if not holes:
                return
            fd = self.core.store.open(node_id)
            try:
                for s, e in holes:
                    self.core.store.pwrite(fd, data[s - offset : e - offset], s, node.parent)
                    have = ranges.add(have, s, e)
                    self.bytes_fetched += e - s
            finally:
                os.close(fd)
            self.core.set_present(txn, node, have, node.size)
            nodes.put(ix, txn, node)
        if node.is_hydrated:
            self.files_downloaded += 1
            self._told_unavailable.discard(node_id)
            try:
                self.hydrated_send.send_nowait(node_id)
            except trio.WouldBlock:
                pass  # the map is then computed at the next upload's full chunking


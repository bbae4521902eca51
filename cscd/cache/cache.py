"""The cache: the one object ``fs`` talks to, over the LMDB index and the content store.

Owns the local truth: namespace operations, attributes, content and the dirty set. Every
operation on cached data is synchronous and local. Only two things can wait on the network,
and only through the ``RemoteSource`` that ``daemon.py`` passes in (sync implements it; this
package never imports sync): listing a directory never listed before, and reading bytes of a
file that are not present yet. Both obey the folder's mode and the source's deadline.

Each logical change is one LMDB write transaction (node + namespace entries + dirty mark).
No await happens inside a transaction. News for the kernel (a node or a name changed under
it) goes out as data on ``invalidations``, drained by a task in ``fs.py``.

Parts live in their own modules, each a piece of ``Cache``: ``hydration.py`` (reads that
fetch missing ranges), ``syncside.py`` (what sync sees: listings merged in, the dirty set,
bases recorded), ``merge.py``, ``residency.py`` (pins, eviction) and ``conflicts.py``.

Not supported: hard links and symbolic links (EPERM / ENOTSUP from ``fs``), renames across
redirected folders (EXDEV, so ``mv`` copies), special files.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import lmdb
import trio

from cscd.cache import nodes, ranges
from cscd.cache.hydration import Hydration
from cscd.cache.index import Index, u64
from cscd.cache.nodes import DirtyReason, Flag, Node
from cscd.cache.residency import Residency
from cscd.cache.store import ContentStore
from cscd.cache.syncside import SyncSide
from cscd.errors import (
    AccessDenied,
    CscdError,
    Exists,
    IsDir,
    NotAvailableOffline,
    NotDir,
    NotEmpty,
    NotFound,
    Unsupported,
)
from cscd.names import check_name
from cscd.types import ROOT_ID, RemoteEntry

log = logging.getLogger(__name__)

DEFAULT_FILE_MODE = 0o644
DEFAULT_DIR_MODE = 0o755


class CrossFolder(CscdError):
    """Rename between two redirected folders (different servers): ``mv`` must copy."""

    errno = 18  # EXDEV


class RemoteSource(Protocol):
    """What the cache needs from sync to fill what is missing. Implemented in ``cscd.sync``."""

    def may_fetch(self, folder: bytes) -> bool:
        """Whether the folder's mode allows fetching uncached content now."""

    def may_list(self, folder: bytes) -> bool:
        """Whether the folder's mode allows listing a directory never listed before."""

    async def read(self, folder: bytes, path: bytes, offset: int, length: int) -> bytes:
        """Bytes of the server file, within the source's deadline."""

    async def list_dir(self, folder: bytes, path: bytes) -> list[RemoteEntry]:
        """One enumeration of a server directory, within the source's deadline."""


class Cache(Hydration, SyncSide):
    """Namespace, attributes and content of every redirected folder, served locally."""

    def __init__(self, cache_dir: Path, folders: Iterable[bytes], source: RemoteSource, *,
                 limit_bytes: int | None = None, uncached: Iterable[bytes] = (),
                 max_file_bytes: int | None = None) -> None:
        self.dir = cache_dir
        cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(cache_dir, 0o700)
        self.index = Index(cache_dir / "index")
        self.store = ContentStore(cache_dir / "content")
        self.source = source
        self.folders = list(folders)
        self.invalidations_send, self.invalidations = trio.open_memory_channel[tuple](10_000)
        #: ids of files whose download just completed; sync chunks them (news upward as data)
        self.hydrated_send, self.hydrated = trio.open_memory_channel[int](1_000)
        self._dirty_event = trio.Event()
        self._open_count: dict[int, int] = {}
        self._writers: dict[int, int] = {}
        self._hydrate_locks: dict[int, trio.Lock] = {}
        self._list_locks: dict[int, trio.Lock] = {}
        #: one large upload copy at a time: they compete for the same disk
        self._snapshot_limiter = trio.CapacityLimiter(1)
        self._readahead: dict[int, tuple[int, int]] = {}
        # A listing taken before sync changed the server must not undo that change:
        # record_synced stamps the directories involved, and a listing of a directory stamped
        # after the listing started is discarded (the next one is fresh).
        self._base_generation = 0
        self._dir_stamp: dict[int, int] = {}
        #: directory id → trio time of the last lookup/readdir; sync rescans these first.
        self.recent_dirs: dict[int, float] = {}
        #: directory id → (trio time its last listing ended, seconds it took); sync paces the
        #: rescans of big directories by it (``cscd.sync.scan``) and adds its own listings.
        self.listing_cost: dict[int, tuple[float, float]] = {}
        #: content-file changes that wait for the write transaction under way to commit
        #: (``discard_content``, ``cut_content``, ``empty_content``)
        self._after_commit: list[tuple[str, int, int]] = []
        self.hits = 0
        self.misses = 0
        self.residency = Residency(self, limit_bytes, uncached=uncached, max_file_bytes=max_file_bytes)
        self.used_bytes = 0
        self._setup_tree()

    # ---------------------------------------------------------------- set-up

    def _setup_tree(self) -> None:
        ix = self.index
        now = time.time_ns()
        with ix.env.begin(write=True) as txn:
            root = nodes.find(ix, txn, ROOT_ID)
            if root is None:
                root = Node(ROOT_ID, 0, True, Flag.LISTED, 0o755, 0, now, now, 0, 0, 0, 0, 0, b"", b"")
                nodes.put(ix, txn, root)
            present = dict((name, cid) for cid, name in nodes.iter_children(ix, txn, ROOT_ID))
            for name in self.folders:
                if name in present:
                    continue
                fid = ix.allocate_id(txn)
                folder = Node(fid, ROOT_ID, True, Flag(0), DEFAULT_DIR_MODE, 0, now, now, 0, 0, 0, 0, 0, name, b"")
                nodes.set_base(ix, txn, folder, ROOT_ID, RemoteEntry(name, True, 0, 0, 0, 0))
                nodes.put(ix, txn, folder)
                nodes.link(ix, txn, folder)
            for name, cid in present.items():
                if name not in self.folders:
                    log.warning("folder %r is no longer configured; its cache is kept but hidden", name)
                    nodes.unlink(ix, txn, nodes.get(ix, txn, cid))
            # Tombstones whose server delete is done and that nobody holds any more (read from
            # their own table: a walk over every node took seconds at a million files).
            for nid in list(nodes.iter_tombstones(ix, txn)):
                node = nodes.find(ix, txn, nid)
                if node is None:
                    txn.delete(u64(nid), db=ix.tombstones)
                elif not nodes.dirty_reasons(ix, txn, nid):
                    nodes.delete_record(ix, txn, node)
                    self.store.remove(nid)
        ix.sync()

    def close(self) -> None:
        self.index.close()

    def has_content(self, folder: bytes) -> bool:
        """True if the folder was ever listed here: there is a cache to start offline from."""
        with self.txn() as txn:
            fid = nodes.lookup_id(self.index, txn, ROOT_ID, folder)
            return fid is not None and Flag.LISTED in nodes.get(self.index, txn, fid).flags

    # ---------------------------------------------------------------- helpers

    def txn(self, write: bool = False):
        """A transaction on the index (the caller's ``with`` commits it); never await inside a write one.

        A write one applies the content-file changes ``discard_content``, ``cut_content`` and
        ``empty_content`` asked for once it has committed, and none if it aborts."""
        if not write:
            return self.index.env.begin()
        return self._write_txn()

    @contextmanager
    def _write_txn(self) -> Iterator[lmdb.Transaction]:
        self._after_commit = []
        try:
            with self.index.env.begin(write=True) as txn:
                yield txn
        except BaseException:
            self._after_commit = []
            raise
        todo, self._after_commit = self._after_commit, []
        for change, node_id, size in todo:
            if change == "discard":
                self.store.remove(node_id)
            elif change == "cut":
                self.store.truncate(node_id, size)
            elif self.store.exists(node_id):  # "empty"; open handles keep their fd: keep the file
                self.store.truncate(node_id, 0)
                self.store.truncate(node_id, size)

    def discard_content(self, node_id: int) -> None:
        """Remove the node's content file when the write transaction under way commits.

        Never before: a daemon killed in between would leave a live node in the index whose
        content is gone (a hydrated file reading as zeros)."""
        self._after_commit.append(("discard", node_id, 0))

    def cut_content(self, node_id: int, size: int) -> None:
        """Shorten the node's content file to ``size`` bytes once the transaction commits.

        A kill before then leaves the file longer than the node, which the cache allows (the
        tail past the node's size is never read); cutting first would leave a node whose bytes
        are gone (an O_TRUNC open the kill interrupted read back as zeros)."""
        self._after_commit.append(("cut", node_id, size))

    def empty_content(self, node_id: int, size: int) -> None:
        """Replace the node's cached bytes by ``size`` bytes of zeros once the transaction
        commits: the index, which no longer counts them as present, must say so first."""
        self._after_commit.append(("empty", node_id, size))

    def node(self, node_id: int) -> Node:
        with self.txn() as txn:
            return nodes.get(self.index, txn, node_id)

    def exists(self, node_id: int) -> bool:
        """Whether the index still has a record of the node (a tombstone counts)."""
        with self.txn() as txn:
            return nodes.find(self.index, txn, node_id) is not None

    def folder_of(self, node: Node) -> tuple[bytes, list[bytes]]:
        """The folder name a node belongs to and its local path components below it."""
        parts: list[bytes] = []
        with self.txn() as txn:
            while node.parent != ROOT_ID:
                if node.id == ROOT_ID:
                    raise NotFound("the root belongs to no folder")
                parts.append(node.name)
                node = nodes.get(self.index, txn, node.parent)
        parts.reverse()
        return node.name, parts

    def remote_path(self, node: Node) -> tuple[bytes, bytes]:
        """(folder, server path) of a node's agreed server location, following base names."""
        parts: list[bytes] = []
        with self.txn() as txn:
            while True:
                if not node.has_base:
                    raise NotFound(f"{node.name!r} is not on the server yet")
                if node.base_parent == ROOT_ID:
                    return node.base_name, b"/".join(reversed(parts))
                parts.append(node.base_name)
                node = nodes.get(self.index, txn, node.base_parent)

    def is_open(self, node_id: int) -> bool:
        """Whether a file handle (or an upload's hold) keeps the node's content alive."""
        return bool(self._open_count.get(node_id))

    def publish(self, item: tuple) -> None:
        """Tell the kernel, through ``fs``'s invalidation task, that a node or a name changed."""
        try:
            self.invalidations_send.send_nowait(item)
        except trio.WouldBlock:
            pass  # the kernel's own attribute timeouts catch up

    def _changed(self) -> None:
        self._dirty_event.set()

    async def wait_dirty(self) -> None:
        """Return once something was marked dirty since the last call."""
        await self._dirty_event.wait()
        self._dirty_event = trio.Event()

    def _check_parent(self, txn, parent_id: int) -> Node:
        parent = nodes.get(self.index, txn, parent_id)
        if not parent.is_dir:
            raise NotDir(f"{parent.name!r} is not a directory")
        if parent_id == ROOT_ID:
            raise AccessDenied("the top level holds only the redirected folders")
        return parent

    # ---------------------------------------------------------------- namespace

    async def lookup(self, parent_id: int, name: bytes) -> Node:
        """Find ``name`` in a directory; may list the directory once (network, deadline)."""
        await self.ensure_listed(parent_id)
        with self.txn() as txn:
            cid = nodes.lookup_id(self.index, txn, parent_id, name)
            if cid is None:
                raise NotFound(f"{name!r} not found")
            return nodes.get(self.index, txn, cid)

    async def ensure_listed(self, dir_id: int) -> None:
        """Make sure a directory's children are known, listing it on the server if needed."""
        self.recent_dirs[dir_id] = trio.current_time()
        node = self.node(dir_id)
        if not node.is_dir:
            raise NotDir(f"{node.name!r} is not a directory")
        if Flag.LISTED in node.flags:
            return
        lock = self._list_locks.setdefault(dir_id, trio.Lock())
        async with lock:
            node = self.node(dir_id)
            if Flag.LISTED in node.flags:
                return
            folder, path = self.remote_path(node)
            if not self.source.may_list(folder):
                raise NotAvailableOffline(
                    f"{folder.decode(errors='replace')}/{path.decode(errors='replace')} was never "
                    "listed and the server is not reachable in this mode"
                )
            for _ in range(5):
                started = self.listing_started()
                t0 = trio.current_time()
                entries = await self.source.list_dir(folder, path)
                if self.merge_listing(dir_id, entries, started):
                    t1 = trio.current_time()
                    self.listing_cost[dir_id] = (t1, t1 - t0)
                    return

    async def readdir(self, dir_id: int, after_id: int) -> list[tuple[bytes, Node]]:
        """Children after ``after_id`` (the readdir offset), in stable id order."""
        await self.ensure_listed(dir_id)
        out = []
        with self.txn() as txn:
            for cid, name in nodes.iter_children(self.index, txn, dir_id, after_id):
                out.append((name, nodes.get(self.index, txn, cid)))
                if len(out) >= 512:
                    break
        return out

    def _new_node(self, txn, parent: Node, name: bytes, is_dir: bool, mode: int) -> Node:
        ix = self.index
        check_name(name)
        if nodes.lookup_id(ix, txn, parent.id, name) is not None:
            raise Exists(f"{name!r} exists")
        now = time.time_ns()
        flags = Flag.HYDRATED | (Flag.LISTED if is_dir else Flag(0))
        node = Node(ix.allocate_id(txn), parent.id, is_dir, flags, mode & 0o7777, 0, now, now, 0, 0, 0, 0, 0, name, b"")
        nodes.mark_dirty(ix, txn, node, DirtyReason.NAMESPACE | (DirtyReason(0) if is_dir else DirtyReason.CONTENT))
        nodes.put(ix, txn, node)
        nodes.link(ix, txn, node)
        parent.mtime_ns = parent.ctime_ns = now
        nodes.put(ix, txn, parent)
        return node

    def mkdir(self, parent_id: int, name: bytes, mode: int) -> Node:
        with self.txn(write=True) as txn:
            node = self._new_node(txn, self._check_parent(txn, parent_id), name, True, mode)
        self._changed()
        return node

    def create(self, parent_id: int, name: bytes, mode: int) -> Node:
        """A new empty file. Its content file is made by the ``open`` that follows at once
        (``fs.create``); making it here too cost three more syscalls per file."""
        with self.txn(write=True) as txn:
            node = self._new_node(txn, self._check_parent(txn, parent_id), name, False, mode)
        self._changed()
        return node

    def drop(self, txn, node: Node) -> None:
        """Take ``node`` out of the namespace inside the caller's write transaction; keep what
        sync or an open handle still needs."""
        ix = self.index
        nodes.unlink(ix, txn, node)
        node.flags |= Flag.TOMBSTONE
        if node.has_base:
            nodes.clear_dirty(ix, txn, node.id)
            nodes.mark_dirty(ix, txn, node, DirtyReason.DELETE)
            nodes.put(ix, txn, node)
        elif self.is_open(node.id):
            nodes.clear_dirty(ix, txn, node.id)
            nodes.put(ix, txn, node)
        else:
            nodes.delete_record(ix, txn, node)
            self.discard_content(node.id)

    def _remove(self, parent_id: int, name: bytes, want_dir: bool) -> Node:
        ix = self.index
        with self.txn(write=True) as txn:
            parent = self._check_parent(txn, parent_id)
            cid = nodes.lookup_id(ix, txn, parent_id, name)
            if cid is None:
                raise NotFound(f"{name!r} not found")
            node = nodes.get(ix, txn, cid)
            if want_dir and not node.is_dir:
                raise NotDir(f"{name!r} is not a directory")
            if not want_dir and node.is_dir:
                raise IsDir(f"{name!r} is a directory")
            if node.is_dir and (nodes.has_children(ix, txn, cid) or Flag.LISTED not in node.flags):
                if Flag.LISTED not in node.flags:
                    raise NotAvailableOffline(f"{name!r} was never listed; cannot tell whether it is empty")
                raise NotEmpty(f"{name!r} is not empty")
            self.drop(txn, node)
            parent.mtime_ns = parent.ctime_ns = time.time_ns()
            nodes.put(ix, txn, parent)
        self._changed()
        return node

    async def unlink(self, parent_id: int, name: bytes) -> Node:
        await self.ensure_listed(parent_id)
        return self._remove(parent_id, name, want_dir=False)

    async def rmdir(self, parent_id: int, name: bytes) -> Node:
        await self.ensure_listed(parent_id)
        node = await self.lookup(parent_id, name)
        if node.is_dir:
            await self.ensure_listed(node.id)
        return self._remove(parent_id, name, want_dir=True)

    async def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, *,
                     noreplace: bool = False) -> tuple[Node, Node | None]:
        """Move a name; returns (moved node, replaced node or None)."""
        await self.ensure_listed(old_parent)
        await self.ensure_listed(new_parent)
        ix = self.index
        check_name(new_name)
        with self.txn(write=True) as txn:
            src_parent = self._check_parent(txn, old_parent)
            dst_parent = self._check_parent(txn, new_parent)
            cid = nodes.lookup_id(ix, txn, old_parent, old_name)
            if cid is None:
                raise NotFound(f"{old_name!r} not found")
            node = nodes.get(ix, txn, cid)
            if self._folder_id(txn, src_parent) != self._folder_id(txn, dst_parent):
                raise CrossFolder("cannot rename across redirected folders")
            if node.is_dir and self._is_ancestor(txn, node.id, dst_parent):
                raise Unsupported("cannot move a directory into itself")
            replaced = None
            tid = nodes.lookup_id(ix, txn, new_parent, new_name)
            if tid == cid:
                return node, None
            if tid is not None:
                if noreplace:
                    raise Exists(f"{new_name!r} exists")
                target = nodes.get(ix, txn, tid)
                if target.is_dir and not node.is_dir:
                    raise IsDir(f"{new_name!r} is a directory")
                if node.is_dir and not target.is_dir:
                    raise NotDir(f"{new_name!r} is not a directory")
                if target.is_dir and (nodes.has_children(ix, txn, tid) or Flag.LISTED not in target.flags):
                    raise NotEmpty(f"{new_name!r} is not empty")
                self.drop(txn, target)
                replaced = target
            nodes.unlink(ix, txn, node)
            node.parent, node.name = new_parent, new_name
            node.ctime_ns = now = time.time_ns()
            nodes.mark_dirty(ix, txn, node, DirtyReason.NAMESPACE)
            nodes.put(ix, txn, node)
            nodes.link(ix, txn, node)
            for p in {src_parent.id: src_parent, dst_parent.id: dst_parent}.values():
                p = nodes.get(ix, txn, p.id)
                p.mtime_ns = p.ctime_ns = now
                nodes.put(ix, txn, p)
        self._changed()
        return node, replaced

    def _folder_id(self, txn, node: Node) -> int:
        while node.parent != ROOT_ID:
            node = nodes.get(self.index, txn, node.parent)
        return node.id

    def _is_ancestor(self, txn, ancestor: int, node: Node) -> bool:
        while True:
            if node.id == ancestor:
                return True
            if node.parent in (0, ROOT_ID):
                return False
            node = nodes.get(self.index, txn, node.parent)

    def setattr(self, node_id: int, *, size: int | None = None, mode: int | None = None,
                mtime_ns: int | None = None) -> Node:
        ix = self.index
        with self.txn(write=True) as txn:
            node = nodes.get(ix, txn, node_id)
            now = time.time_ns()
            reason = DirtyReason(0)
            if size is not None and not node.is_dir and size != node.size:
                self._set_size(txn, node, size)
                node.mtime_ns = now
                reason |= DirtyReason.CONTENT
            if mode is not None:
                node.mode = mode & 0o7777
            if mtime_ns is not None and mtime_ns != node.mtime_ns:
                node.mtime_ns = mtime_ns
                reason |= DirtyReason.META
            node.ctime_ns = now
            if reason and node.is_deleted:
                node.version += 1  # see ``write``: a deleted file has nothing to upload
            elif reason and node.id != ROOT_ID and node.parent != ROOT_ID:
                nodes.mark_dirty(ix, txn, node, reason)
            nodes.put(ix, txn, node)
        if reason:
            self._changed()
        return node

    def _set_size(self, txn, node: Node, size: int) -> None:
        """Truncate or extend; the new tail is zeros and therefore present."""
        if not node.is_hydrated:
            have = self._ranges(txn, node)
            have = ranges.clip(have, size)
            if size > node.size:
                have = ranges.add(have, node.size, size)
            self._store_ranges(txn, node, have, size)
        if size > node.size:
            self.store.truncate(node.id, node.size)  # the new tail is zeros: see ``write``
            self.store.truncate(node.id, size)
        else:
            self.cut_content(node.id, size)
        node.size = size

    def _ranges(self, txn, node: Node) -> list[ranges.Range]:
        if node.is_hydrated:
            return [(0, node.size)] if node.size else []
        data = txn.get(u64(node.id), db=self.index.ranges)
        return ranges.unpack(data) if data else []

    def _store_ranges(self, txn, node: Node, have: list[ranges.Range], size: int) -> None:
        if ranges.covers(have, 0, size):
            node.flags |= Flag.HYDRATED
            txn.delete(u64(node.id), db=self.index.ranges)
        else:
            node.flags &= ~Flag.HYDRATED
            txn.put(u64(node.id), ranges.pack(have), db=self.index.ranges)

    # ---------------------------------------------------------------- content

    def open(self, node_id: int, *, truncate: bool, write: bool) -> int:
        """Open the node's content file; returns a local fd. Counts handles for ``forget``."""
        node = self.node(node_id)
        if node.is_dir:
            raise IsDir(f"{node.name!r} is a directory")
        if truncate and node.size:
            node = self.setattr(node_id, size=0)
        fd = self.store.open(node_id, None if self.store.exists(node_id) else node.size)
        self.residency.touch(node_id)
        self._open_count[node_id] = self._open_count.get(node_id, 0) + 1
        if write:
            self._writers[node_id] = self._writers.get(node_id, 0) + 1
        return fd

    def is_open_for_write(self, node_id: int) -> bool:
        return self._writers.get(node_id, 0) > 0

    def write(self, node_id: int, fd: int, offset: int, data: bytes) -> int:
        """Write into the cache and mark the node dirty, in one transaction."""
        ix = self.index
        with self.txn(write=True) as txn:
            node = nodes.get(ix, txn, node_id)
            if offset > node.size:
                # The hole must read as zeros: cut what a write the daemon was killed in left
                # past the end (its bytes reached the file, its size never the index).
                os.ftruncate(fd, node.size)
            n = self.store.pwrite(fd, data, offset)
            end = offset + n
            if not node.is_hydrated:
                have = ranges.add(self._ranges(txn, node), offset, end)
                if end > node.size:
                    have = ranges.add(have, node.size, end)
                self._store_ranges(txn, node, have, max(node.size, end))
            node.size = max(node.size, end)
            node.mtime_ns = node.ctime_ns = time.time_ns()
            if node.is_deleted:
                # Written through a handle after its unlink (sqlite's -shm pages written back
                # at munmap): nothing to upload; the version still moves for an upload in flight.
                node.version += 1
            else:
                nodes.mark_dirty(ix, txn, node, DirtyReason.CONTENT)
            nodes.put(ix, txn, node)
        return n

    async def fsync(self, fd: int) -> None:
        """Make content and index durable on the local disk (not the server)."""
        await trio.to_thread.run_sync(os.fsync, fd)
        await trio.to_thread.run_sync(self.index.sync)

    def release(self, node_id: int, fd: int, *, wrote: bool) -> None:
        os.close(fd)
        self._open_count[node_id] -= 1
        if not self._open_count[node_id]:
            del self._open_count[node_id]
        if wrote or self._writers.get(node_id):
            self._writers[node_id] = self._writers.get(node_id, 1) - 1
            if self._writers[node_id] <= 0:
                del self._writers[node_id]
            self._changed()
        self._purge_if_unused(node_id)

    def forget(self, node_id: int) -> None:
        """The kernel dropped its last reference: free a tombstone's content."""
        self._purge_if_unused(node_id)

    def _purge_if_unused(self, node_id: int) -> None:
        if self.is_open(node_id):
            return
        ix = self.index
        with self.txn(write=True) as txn:
            node = nodes.find(ix, txn, node_id)
            if node is None or Flag.TOMBSTONE not in node.flags:
                return
            if node.has_base and nodes.dirty_reasons(ix, txn, node_id):
                self.discard_content(node_id)  # record stays for the pending server delete
                return
            nodes.delete_record(ix, txn, node)
            self.discard_content(node_id)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Flush the index to disk every second; keep the content within its size limit."""
        task_status.started()
        tick = 0
        while True:
            await trio.sleep(1.0)
            await trio.to_thread.run_sync(self.index.sync)
            tick += 1
            if tick % 5 == 0:
                self.used_bytes = await trio.to_thread.run_sync(self.residency.used_bytes)
                if self.residency.limit_bytes is not None and self.used_bytes > self.residency.limit_bytes:
                    self.used_bytes -= self.residency.evict(self.used_bytes)

    # ---------------------------------------------------------------- residency and paths

    def pin(self, node_id: int, pinned: bool) -> None:
        """"Always available offline" on or off; sync hydrates what a pin covers."""
        self.residency.set_pinned(node_id, pinned)
        self._changed()

    def free_space(self, node_id: int) -> tuple[int, int]:
        return self.residency.free_space(node_id)

    def pinned_missing(self) -> tuple[list[int], list[int]]:
        return self.residency.pinned_missing()

    async def resolve(self, parts: list[bytes]) -> Node:
        """The node at a path of names below the mount's root (may list directories)."""
        node = self.node(ROOT_ID)
        for name in parts:
            node = await self.lookup(node.id, name)
        return node

    def path_of(self, node: Node) -> list[bytes]:
        """Names from the mount's root down to ``node``."""
        parts = []
        with self.txn() as txn:
            while node.id != ROOT_ID:
                parts.append(node.name)
                node = nodes.get(self.index, txn, node.parent)
        return parts[::-1]

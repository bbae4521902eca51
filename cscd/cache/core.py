"""``CacheCore``: the index, the content store and the rules for changing them together.

Every part of the cache (``namespace``, ``content``, ``hydration``, ``residency``,
``conflicts``, ``listings``, ``syncside``) works through this one object and nothing else
of the others' state. It owns:

- transactions: each logical change is one LMDB write transaction (node + namespace entries
  + dirty mark), no await inside one. Content files change only *after* the transaction that
  stops counting their bytes has committed (``discard_content``, ``cut_content``,
  ``empty_content``): a daemon killed in between then leaves extra bytes, never a node
  whose bytes are gone;
- the handles open on each node (content of an unlinked but open file stays);
- news: for the kernel (``publish``, drained by a task in ``fs.py``) and for sync
  (``mark_changed`` / ``wait_dirty``);
- paths: the folder a node belongs to, its local and agreed server paths;
- which directories were used lately and what their listings cost (sync paces rescans by it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import lmdb
import trio

from cscd.cache import newer, nodes, ranges
from cscd.cache.index import Index, u64
from cscd.cache.nodes import DirtyReason, Flag, Node
from cscd.cache.sealing import Sealer
from cscd.cache.store import ContentStore
from cscd.errors import NotFound
from cscd.types import ROOT_ID

log = logging.getLogger(__name__)


class CacheCore:
    """The index and content store of every redirected folder, and how they change together."""

    def __init__(self, cache_dir: Path, folders: Iterable[bytes], sealer: Sealer | None = None) -> None:
        """``sealer``: the cache is sealed by cscd (``cscd.cache.sealed_cache``)."""
        self.dir = cache_dir
        self.index = Index(cache_dir / "index", sealer)
        self.store = ContentStore(cache_dir / "content", sealer=sealer)
        for node_id in newer.recover(self.index, self.store.root):
            log.info("node %s: the swap of its newer server version, cut by a crash, is finished", node_id)
        self.folders = list(folders)
        self.invalidations_send, self.invalidations = trio.open_memory_channel[tuple](10_000)
        self._dirty_event = trio.Event()
        self._open_count: dict[int, int] = {}
        self._writers: dict[int, int] = {}
        #: directory id → trio time of the last lookup/readdir; sync rescans these first.
        self.recent_dirs: dict[int, float] = {}
        #: directory id → (trio time its last listing ended, seconds it took); sync paces the
        #: rescans of big directories by it (``cscd.sync.scan``) and adds its own listings.
        self.listing_cost: dict[int, tuple[float, float]] = {}
        #: directory id → subdirectory name → its change time in that directory's last
        #: listing (any listing: the cache's first, sync's rescans); a catch-up re-lists only
        #: subdirectories whose change time moved (``cscd.sync.revalidate``). In memory only.
        self.child_mtimes: dict[int, dict[bytes, int]] = {}
        #: content-file changes that wait for the write transaction under way to commit
        self._after_commit: list[tuple[str, int, int]] = []
        #: directory id → the folder it is in: a new file's key in a sealed cache is its
        #: folder's. A node never changes folder (a rename across folders is EXDEV).
        self._folder_of_dir: dict[int, bytes] = {}
        if sealer is not None:
            sealer.folder_of = self.folder_name_of

    def close(self) -> None:
        self.index.close()

    # ---------------------------------------------------------------- transactions

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

    # ---------------------------------------------------------------- nodes and ranges

    def node(self, node_id: int) -> Node:
        with self.txn() as txn:
            return nodes.get(self.index, txn, node_id)

    def exists(self, node_id: int) -> bool:
        """Whether the index still has a record of the node (a tombstone counts)."""
        with self.txn() as txn:
            return nodes.find(self.index, txn, node_id) is not None

    def present(self, txn, node: Node) -> list[ranges.Range]:
        """The byte ranges of the node's content that are here."""
        if node.is_hydrated:
            return [(0, node.size)] if node.size else []
        data = txn.get(u64(node.id), db=self.index.ranges)
        return ranges.unpack(data) if data else []

    def set_present(self, txn, node: Node, have: list[ranges.Range], size: int) -> None:
        """Record which ranges are here; a file wholly here is flagged hydrated instead."""
        if ranges.covers(have, 0, size):
            node.flags |= Flag.HYDRATED
            txn.delete(u64(node.id), db=self.index.ranges)
        else:
            node.flags &= ~Flag.HYDRATED
            txn.put(u64(node.id), ranges.pack(have), db=self.index.ranges)

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

    # ---------------------------------------------------------------- paths

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

    def folder_name_of(self, node_id: int) -> bytes | None:
        """The name of the folder node ``node_id`` is in (a folder's own name for a folder),
        as committed; None for the root or a node not (yet) in the index. A directory's
        answer is remembered: a caller that has the node asks with its directory's id."""
        folder = self._folder_of_dir.get(node_id)
        if folder is not None:
            return folder
        dirs = []
        with self.txn() as txn:
            node = nodes.find(self.index, txn, node_id)
            while node is not None and node.id != ROOT_ID:
                if node.is_dir:
                    dirs.append(node.id)
                if node.parent == ROOT_ID:
                    folder = node.name
                    break
                folder = self._folder_of_dir.get(node.parent)
                if folder is not None:
                    break
                node = nodes.find(self.index, txn, node.parent)
        if folder is None:
            return None
        if len(self._folder_of_dir) >= 65536:
            self._folder_of_dir.clear()
        for directory in dirs:
            self._folder_of_dir[directory] = folder
        return folder

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

    def path_of(self, node: Node) -> list[bytes]:
        """Names from the mount's root down to ``node``."""
        parts = []
        with self.txn() as txn:
            while node.id != ROOT_ID:
                parts.append(node.name)
                node = nodes.get(self.index, txn, node.parent)
        return parts[::-1]

    # ---------------------------------------------------------------- handles

    def opened(self, node_id: int, *, write: bool) -> None:
        """Count a handle (a file descriptor of ``fs`` or an upload's hold) on the node."""
        self._open_count[node_id] = self._open_count.get(node_id, 0) + 1
        if write:
            self._writers[node_id] = self._writers.get(node_id, 0) + 1

    def closed(self, node_id: int, *, write: bool) -> None:
        """Count a handle's close (``write``: it was opened for writing)."""
        self._open_count[node_id] -= 1
        if not self._open_count[node_id]:
            del self._open_count[node_id]
        if write:
            self._writers[node_id] -= 1
            if not self._writers[node_id]:
                del self._writers[node_id]

    def is_open(self, node_id: int) -> bool:
        """Whether a file handle (or an upload's hold) keeps the node's content alive."""
        return bool(self._open_count.get(node_id))

    def is_open_for_write(self, node_id: int) -> bool:
        return self._writers.get(node_id, 0) > 0

    # ---------------------------------------------------------------- news

    def publish(self, item: tuple) -> None:
        """Tell the kernel, through ``fs``'s invalidation task, that a node or a name changed."""
        try:
            self.invalidations_send.send_nowait(item)
        except trio.WouldBlock:
            pass  # the kernel's own attribute timeouts catch up

    def mark_changed(self) -> None:
        """Something became dirty: wake sync."""
        self._dirty_event.set()

    async def wait_dirty(self) -> None:
        """Return once something was marked dirty since the last call."""
        await self._dirty_event.wait()
        self._dirty_event = trio.Event()

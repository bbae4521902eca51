"""Which content stays on this machine: pins, the size limit, LRU eviction, free-space,
folders that are not cached and files too large to cache.

Owns the ``PINNED`` flag, the ``lru`` database and the decision to turn clean files back into
placeholders. Pinned content ("always available offline") is never evicted; dirty or open
files are never touched. Eviction runs in the cache's background task; no network here
(hydrating pinned files is sync's job: it asks ``pinned_missing``).

Two policy keys narrow what is kept (``hydration.py`` does the traffic they cause):

- ``folders.NAME.offline: false`` (``uncached_folders``): the folder is mounted but its
  content does not stay. A file's content is evicted when its last handle closes
  (``after_close``), changes are written through to the server at close and fsync, and a
  write-through that fails drops the local change (``discard_change``): the application was
  told, nothing waits in a queue. Pinning there is refused.
- ``offline_files.max_file_size`` (``max_file_bytes``): a server file larger than it is shown
  but never stored (reads go through to the server); a write that would make a file larger,
  or that changes a file already larger, fails with EFBIG (``check_size``).

It works through ``CacheCore`` (transactions, ``publish``, ``is_open``, ``drop``).
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import trio

from cscd.cache import newer, nodes
from cscd.cache.index import from_u64, u64
from cscd.cache.nodes import DirtyReason, Flag, Node
from cscd.errors import CscdError, NotFound, TooLarge
from cscd.events import EventId, emit
from cscd.types import ROOT_ID

if TYPE_CHECKING:
    from cscd.cache.core import CacheCore

log = logging.getLogger(__name__)
_U64 = struct.Struct(">Q")


#: Opens noted in memory before they are written to the ``lru`` table in one transaction.
TOUCH_BATCH = 512


class Residency:
    def __init__(self, cache: CacheCore, limit_bytes: int | None, *, uncached: Iterable[bytes] = (),
                 max_file_bytes: int | None = None) -> None:
        self.cache = cache
        self.limit_bytes = limit_bytes
        #: folders with ``offline: false``: mounted, not cached (decided at start)
        self.uncached_folders = frozenset(uncached)
        #: ``offline_files.max_file_size``; None: no limit. A reload may change it.
        self.max_file_bytes = max_file_bytes
        self.evicted_files = 0
        self.evicted_bytes = 0
        #: node id → when it was last opened, not written to the ``lru`` table yet
        self._touched: dict[int, int] = {}

    # ------------------------------------------------------------ not cached

    def uncached_folder_of(self, node: Node) -> bytes | None:
        """The node's folder if that folder is not cached (the folder's own node included),
        else None. Costs a walk up the parents only when some folder is uncached."""
        if not self.uncached_folders or node.id == ROOT_ID:
            return None
        try:
            folder = self.cache.folder_of(node)[0]
        except NotFound:
            return None
        return folder if folder in self.uncached_folders else None

    def is_too_large(self, node: Node) -> bool:
        """A file larger than ``offline_files.max_file_size``: shown, read through, not stored."""
        return not node.is_dir and self.max_file_bytes is not None and node.size > self.max_file_bytes

    def keeps_content(self, node: Node) -> bool:
        """Whether the node's content may stay after its last close."""
        return not self.is_too_large(node) and self.uncached_folder_of(node) is None

    def check_size(self, node_id: int, end: int) -> None:
        """Refuse (EFBIG) a change that makes a file end past ``max_file_bytes``, or that
        changes a file already larger than it (cscd uploads from the cache, and such a file
        is never cached)."""
        limit = self.max_file_bytes
        if limit is None:
            return
        node = self.cache.node(node_id)
        if end <= limit and node.size <= limit:
            return
        size = max(end, node.size)
        folder, *parts = [p.decode(errors="replace") for p in self.cache.path_of(node)]
        path = "/".join(parts)
        emit(EventId.SYNC_FILE_TOO_LARGE, folder=folder, path=path, size=size, limit=limit)
        raise TooLarge(f"{folder}/{path}: {size} bytes is more than offline_files.max_file_size ({limit} bytes)")

    def after_close(self, node: Node) -> None:
        """The node's last handle closed (``Content.release`` says so and passes its record):
        drop content this machine must not keep."""
        if not self.keeps_content(node):
            self._dehydrate(node.id)

    def discard_change(self, node_id: int) -> None:
        """A write-through failed: forget the local content change instead of queueing it.

        A file the server has goes back to a placeholder of the server's version; a new
        file the server never had is removed. Namespace changes (a rename) stay pending.
        """
        cache = self.cache
        ix = cache.index
        with cache.txn(write=True) as txn:
            node = nodes.find(ix, txn, node_id)
            if node is None or Flag.TOMBSTONE in node.flags:
                return
            if not node.has_base:
                cache.drop(txn, node)
                cache.publish(("entry", node.parent, node.name))
                return
            nodes.clear_dirty(ix, txn, node_id, DirtyReason.CONTENT | DirtyReason.META)
            node.size, node.mtime_ns = node.base_size, node.base_mtime_ns
            node.flags &= ~Flag.HYDRATED
            if node.size == 0:
                node.flags |= Flag.HYDRATED
            txn.delete(u64(node_id), db=ix.ranges)
            nodes.put(ix, txn, node)
            cache.empty_content(node_id, node.size)
        cache.publish(("inode", node_id))

    # ------------------------------------------------------------ LRU

    def touch(self, node_id: int) -> None:
        """Note an open for the eviction order. Kept in memory and written in batches
        (``flush_touches``): a write transaction per open was one of five per small file
        written, and a crash losing the last few only reorders eviction a little."""
        self._touched[node_id] = time.time_ns()
        if len(self._touched) >= TOUCH_BATCH:
            self.flush_touches()

    def flush_touches(self) -> None:
        """Write the opens noted since the last flush (eviction reads them; the cache's
        once-a-second flush and its close write them too)."""
        if not self._touched:
            return
        touched, self._touched = self._touched, {}
        lru = self.cache.index.lru
        with self.cache.txn(write=True) as txn:
            for node_id, at in touched.items():
                txn.put(u64(node_id), u64(at), db=lru)

    # ------------------------------------------------------------ pins

    def is_pinned(self, txn, node: Node) -> bool:
        return nodes.is_pinned(self.cache.index, txn, node)

    def set_pinned(self, node_id: int, pinned: bool) -> None:
        """Pin or unpin a node; a pinned directory covers everything under it, new files too."""
        ix = self.cache.index
        folder = self.uncached_folder_of(self.cache.node(node_id)) if pinned else None
        if folder is not None:
            raise CscdError(f"{folder.decode(errors='replace')} is not cached on this machine (policy "
                            f"folders.{folder.decode(errors='replace')}.offline: false); it cannot be pinned")
        with self.cache.txn(write=True) as txn:
            node = nodes.get(ix, txn, node_id)
            if node.id == ROOT_ID or node.parent == ROOT_ID and not node.is_dir:
                raise CscdError("pin a folder or something inside one")
            if pinned:
                node.flags |= Flag.PINNED
                txn.put(u64(node.id), b"", db=ix.pins)
            else:
                node.flags &= ~Flag.PINNED
                txn.delete(u64(node.id), db=ix.pins)
            nodes.put(ix, txn, node)
            if not pinned:  # unpin the subtree too: "unpin" means "may be evicted again"
                stack = [node.id]
                while stack:
                    for cid, _ in nodes.iter_children(ix, txn, stack.pop()):
                        child = nodes.get(ix, txn, cid)
                        if Flag.PINNED in child.flags:
                            child.flags &= ~Flag.PINNED
                            txn.delete(u64(cid), db=ix.pins)
                            nodes.put(ix, txn, child)
                        if child.is_dir:
                            stack.append(cid)

    def pinned_missing(self) -> tuple[list[int], list[int]]:
        """(directories never listed, files not fully present) under pins: sync fills them."""
        ix = self.cache.index
        dirs, files = [], []
        with self.cache.txn() as txn:
            roots = [nodes.find(ix, txn, from_u64(k)) for k, _ in txn.cursor(db=ix.pins)]
            stack = [n for n in roots if n is not None and Flag.TOMBSTONE not in n.flags]
            seen: set[int] = set()
            while stack:
                node = stack.pop()
                if node.id in seen:
                    continue
                seen.add(node.id)
                if node.is_dir:
                    if Flag.LISTED not in node.flags:
                        dirs.append(node.id)
                    stack.extend(nodes.get(ix, txn, cid) for cid, _ in nodes.iter_children(ix, txn, node.id))
                elif not node.is_hydrated and self.keeps_content(node):
                    files.append(node.id)
        return dirs, files

    # ------------------------------------------------------------ placeholders again

    def files_under(self, node_id: int) -> list[int]:
        """The files at or under ``node_id`` (one read transaction): what ``free_space`` goes through."""
        ix = self.cache.index
        with self.cache.txn() as txn:
            todo, stack = [], [nodes.get(ix, txn, node_id)]
            while stack:
                node = stack.pop()
                if node.is_dir:
                    stack.extend(nodes.get(ix, txn, cid) for cid, _ in nodes.iter_children(ix, txn, node.id))
                else:
                    todo.append(node.id)
        return todo

    def free_space(self, node_id: int) -> int | None:
        """Turn one clean, closed, unpinned file back into a placeholder: the bytes freed, or
        None if it is kept (dirty, open or pinned files: their content is the only copy, or the
        user asked to keep it). ``cscd free-space`` runs it over ``files_under`` a folder,
        letting the FUSE loop serve in between."""
        return self._dehydrate(node_id)

    def _dehydrate(self, node_id: int) -> int | None:
        cache = self.cache
        ix = cache.index
        if cache.is_open(node_id):
            return None
        with cache.txn(write=True) as txn:
            node = nodes.find(ix, txn, node_id)
            if node is None:
                txn.delete(u64(node_id), db=ix.lru)  # an open noted before its node went
                return None
            if (node.is_dir or node.is_symlink or not node.has_base
                    or nodes.dirty_reasons(ix, txn, node_id)
                    or self.is_pinned(txn, node) or not cache.store.exists(node_id)):
                return None
            size = cache.store.disk_bytes(node_id)
            newer.become_placeholder(ix, txn, node)
            node.flags &= ~Flag.HYDRATED
            if node.size == 0:
                node.flags |= Flag.HYDRATED
            txn.delete(u64(node_id), db=ix.ranges)
            txn.delete(u64(node_id), db=ix.lru)
            nodes.put(ix, txn, node)
            cache.discard_content(node_id)
        cache.publish(("inode", node_id))
        return size

    # ------------------------------------------------------------ the size limit

    async def measure_used_bytes(self) -> int:
        """Bytes the content store occupies on disk, counted by ``du`` (coreutils) in a process
        of its own, or by ``used_bytes`` where there is no ``du``.

        Why not our own walk in a thread: it is one ``stat`` per cached file, and each one
        hands the GIL back and forth with the trio thread. With 100,000 content files and the
        trio thread busy, the walk took 115–210 s instead of 0.28 s and stalled the busy
        thread for up to 9.5 ms at a time; ``du`` took 0.21 s and stalled it for at most
        0.3 ms. ``du`` also counts the store's directories, which are disk space it uses."""
        du = shutil.which("du")
        if du is not None:
            try:
                done = await trio.run_process([du, "-s", "-B1", "--", str(self.cache.store.root)],
                                              capture_stdout=True, capture_stderr=True, check=False)
            except OSError as exc:  # cannot be run after all: the walk answers
                log.debug("du could not run (%s); walking the content store instead", exc)
            else:
                # A file deleted during the walk makes du complain and exit 1, with the total printed.
                first = done.stdout.split(maxsplit=1)[:1]
                if first and first[0].isdigit():
                    return int(first[0])
                log.debug("du gave no total (%s); walking the content store instead",
                          done.stderr.decode(errors="replace").strip()[:200])
        return await trio.to_thread.run_sync(self.used_bytes)

    def used_bytes(self) -> int:
        """Bytes the content store's files occupy on disk (a walk; call it from a thread)."""
        total = 0
        for sub in os.scandir(self.cache.store.root):
            for f in os.scandir(sub.path):
                try:
                    total += f.stat().st_blocks * 512
                except FileNotFoundError:
                    pass
        return total

    def evict(self, used: int) -> int:
        """Free least recently used clean content until under the limit; returns bytes freed."""
        if self.limit_bytes is None or used <= self.limit_bytes:
            return 0
        self.flush_touches()
        with self.cache.txn() as txn:
            order = sorted((from_u64(v), from_u64(k)) for k, v in txn.cursor(db=self.cache.index.lru))
        freed = 0
        for _, nid in order:
            if used - freed <= self.limit_bytes:
                break
            n = self._dehydrate(nid)
            if n:
                freed += n
                self.evicted_files += 1
                self.evicted_bytes += n
        if used - freed > self.limit_bytes:
            log.warning("cache is over its limit (%d > %d bytes) with nothing left to evict: "
                        "pinned, changed or open files fill it", used - freed, self.limit_bytes)
        return freed

"""``Content``: the bytes and attributes of cached files, read and written locally.

Owns the file handles' side of the cache: ``open`` (an O_TRUNC one included), ``write``,
``setattr`` (size, mode, times), ``fsync`` to the local disk, and ``release`` and ``forget``,
after which the content of a file deleted while open is freed. Each change is one write
transaction that also marks the node dirty; reads of bytes not present yet are
``hydration``'s.
"""

from __future__ import annotations

import os
import time

import trio

from cscd.cache import attrs, nodes, ranges
from cscd.cache.core import CacheCore
from cscd.cache.nodes import DirtyReason, Flag, Node
from cscd.cache.residency import Residency
from cscd.errors import IsDir
from cscd.types import ROOT_ID


class Content:
    """Local reads and writes of file content and attributes."""

    def __init__(self, core: CacheCore, residency: Residency) -> None:
        self.core = core
        self.residency = residency

    def setattr(self, node_id: int, *, size: int | None = None, mode: int | None = None,
                mtime_ns: int | None = None) -> Node:
        ix = self.core.index
        with self.core.txn(write=True) as txn:
            node = nodes.get(ix, txn, node_id)
            now = time.time_ns()
            reason = DirtyReason(0)
            changed = False
            if size is not None and not node.is_dir and size != node.size:
                self._set_size(txn, node, size)
                node.mtime_ns = now
                reason |= DirtyReason.CONTENT
            if mode is not None and attrs.set_mode(ix, txn, node, mode):
                changed = True
            if mtime_ns is not None and mtime_ns != node.mtime_ns:
                node.mtime_ns = mtime_ns
                reason |= DirtyReason.META
            node.ctime_ns = now
            if reason and node.is_deleted:
                node.version += 1  # see ``write``: a deleted file has nothing to upload
            elif reason and node.id != ROOT_ID and node.parent != ROOT_ID:
                nodes.mark_dirty(ix, txn, node, reason)
            nodes.put(ix, txn, node)
        if reason or changed:
            self.core.mark_changed()
        return node

    # ---------------------------------------------------------------- extended attributes

    def get_xattr(self, node_id: int, name: bytes) -> bytes:
        """``KeyError`` if the node has no such attribute."""
        with self.core.txn() as txn:
            return attrs.get(self.core.index, txn, nodes.get(self.core.index, txn, node_id))[name]

    def list_xattrs(self, node_id: int) -> list[bytes]:
        with self.core.txn() as txn:
            return sorted(attrs.get(self.core.index, txn, nodes.get(self.core.index, txn, node_id)))

    def set_xattr(self, node_id: int, name: bytes, value: bytes | None) -> None:
        """Set, or remove (None; ``KeyError`` if absent), a ``user.*`` attribute; it roams as an
        SMB EA with the next push (``cscd.xattrs`` says what is refused and why)."""
        ix = self.core.index
        with self.core.txn(write=True) as txn:
            node = nodes.get(ix, txn, node_id)
            attrs.set_local(ix, txn, node, name, value)
            node.ctime_ns = time.time_ns()
            nodes.put(ix, txn, node)
        self.core.mark_changed()
        self.core.publish(("inode", node_id))

    def _set_size(self, txn, node: Node, size: int) -> None:
        """Truncate or extend; the new tail is zeros and therefore present."""
        if not node.is_hydrated:
            have = self.core.present(txn, node)
            have = ranges.clip(have, size)
            if size > node.size:
                have = ranges.add(have, node.size, size)
            self.core.set_present(txn, node, have, size)
        if size > node.size:
            self.core.store.truncate(node.id, node.size)  # the new tail is zeros: see ``write``
            self.core.store.truncate(node.id, size)
        else:
            self.core.cut_content(node.id, size)
        node.size = size

    def open(self, node_id: int, *, truncate: bool, write: bool, node: Node | None = None,
             new: bool = False) -> int:
        """Open the node's content file; returns a local fd. Counts handles for ``forget``.
        ``node``: its record as the caller just read it (one read less on every open).
        ``new``: the node was just created, so its content file is not there yet (one failed
        ``open`` less on every create)."""
        if node is None:
            node = self.core.node(node_id)
        if node.is_dir:
            raise IsDir(f"{node.name!r} is a directory")
        if truncate and node.size:
            node = self.setattr(node_id, size=0)
        fd = self.core.store.open(node_id) if new else self.core.store.open_or_make(node_id, node.size)
        self.residency.touch(node_id)
        self.core.opened(node_id, write=write)
        return fd

    def write(self, node_id: int, fd: int, offset: int, data: bytes) -> int:
        """Write into the cache and mark the node dirty, in one transaction."""
        ix = self.core.index
        with self.core.txn(write=True) as txn:
            node = nodes.get(ix, txn, node_id)
            if offset > node.size:
                # The hole must read as zeros: cut what a write the daemon was killed in left
                # past the end (its bytes reached the file, its size never the index).
                self.core.store.set_length(fd, node.size, node.parent)
            n = self.core.store.pwrite(fd, data, offset, node.parent)
            end = offset + n
            if not node.is_hydrated:
                have = ranges.add(self.core.present(txn, node), offset, end)
                if end > node.size:
                    have = ranges.add(have, node.size, end)
                self.core.set_present(txn, node, have, max(node.size, end))
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
        await trio.to_thread.run_sync(self.core.index.sync)

    def release(self, node_id: int, fd: int, *, write: bool, wrote: bool) -> Node | None:
        """A handle closed (``write``: opened for writing; ``wrote``: it wrote). Sync is woken
        for a writer's close; a file deleted while open loses its content at the last one.
        Returns the node's record if that was its last handle and it is still in the
        namespace (what ``Residency.after_close`` decides on), else None."""
        os.close(fd)
        self.core.closed(node_id, write=write)
        if write or wrote:
            self.core.mark_changed()
        return self._purge_if_unused(node_id)

    def forget(self, node_id: int) -> None:
        """The kernel dropped its last reference: free a tombstone's content."""
        self._purge_if_unused(node_id)

    def _purge_if_unused(self, node_id: int) -> Node | None:
        """Free a tombstone nothing holds open; returns the record of a live node nothing
        holds open."""
        if self.core.is_open(node_id):
            return None
        ix = self.core.index
        with self.core.txn() as txn:  # a read first: the write below is for tombstones only
            node = nodes.find(ix, txn, node_id)
            if node is None or not node.is_deleted:
                return node
        with self.core.txn(write=True) as txn:
            node = nodes.find(ix, txn, node_id)
            if node is None or Flag.TOMBSTONE not in node.flags:
                return node
            if node.has_base and nodes.dirty_reasons(ix, txn, node_id):
                self.core.discard_content(node_id)  # record stays for the pending server delete
                return
            nodes.delete_record(ix, txn, node)
            self.core.discard_content(node_id)

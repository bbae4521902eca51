"""``Namespace``: names and directories of the mount, changed locally and at once.

Owns the tree's shape: the redirected folders at the top (made at start, hidden when no
longer configured), lookups and readdir (which may list a directory on the server once,
through ``listings``), and mkdir, create, unlink, rmdir and rename, each one write
transaction that also marks the change dirty for sync. Nothing here waits on the network
except that first listing.

Not supported: hard links and symbolic links (EPERM / ENOTSUP from ``fs``), renames across
redirected folders (EXDEV, so ``mv`` copies), special files.
"""

from __future__ import annotations

import logging
import os
import time

from cscd import symlinks
from cscd.cache import nodes
from cscd.cache.core import CacheCore
from cscd.cache.index import u64
from cscd.cache.listings import Listings
from cscd.cache.nodes import DirtyReason, Flag, Node
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

DEFAULT_DIR_MODE = 0o755


class CrossFolder(CscdError):
    """Rename between two redirected folders (different servers): ``mv`` must copy."""

    errno = 18  # EXDEV


class Namespace:
    """The mount's names, served from the index."""

    def __init__(self, core: CacheCore, listings: Listings) -> None:
        self.core = core
        self.listings = listings
        self._setup_tree()

    def _setup_tree(self) -> None:
        ix = self.core.index
        now = time.time_ns()
        with ix.env.begin(write=True) as txn:
            root = nodes.find(ix, txn, ROOT_ID)
            if root is None:
                root = Node(ROOT_ID, 0, True, Flag.LISTED, 0o755, 0, now, now, 0, 0, 0, 0, 0, b"", b"")
                nodes.put(ix, txn, root)
            present = dict((name, cid) for cid, name in nodes.iter_children(ix, txn, ROOT_ID))
            for name in self.core.folders:
                if name in present:
                    continue
                fid = ix.allocate_id(txn)
                folder = Node(fid, ROOT_ID, True, Flag(0), DEFAULT_DIR_MODE, 0, now, now, 0, 0, 0, 0, 0, name, b"")
                nodes.set_base(ix, txn, folder, ROOT_ID, RemoteEntry(name, True, 0, 0, 0, 0))
                nodes.put(ix, txn, folder)
                nodes.link(ix, txn, folder)
            for name, cid in present.items():
                if name not in self.core.folders:
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
                    self.core.store.remove(nid)
        ix.sync()

    def has_content(self, folder: bytes) -> bool:
        """True if the folder was ever listed here: there is a cache to start offline from."""
        with self.core.txn() as txn:
            fid = nodes.lookup_id(self.core.index, txn, ROOT_ID, folder)
            return fid is not None and Flag.LISTED in nodes.get(self.core.index, txn, fid).flags

    def _check_parent(self, txn, parent_id: int) -> Node:
        parent = nodes.get(self.core.index, txn, parent_id)
        if not parent.is_dir:
            raise NotDir(f"{parent.name!r} is not a directory")
        if parent_id == ROOT_ID:
            raise AccessDenied("the top level holds only the redirected folders")
        return parent

    async def lookup(self, parent_id: int, name: bytes) -> Node:
        """Find ``name`` in a directory; may list the directory once (network, deadline)."""
        await self.listings.ensure_listed(parent_id)
        with self.core.txn() as txn:
            cid = nodes.lookup_id(self.core.index, txn, parent_id, name)
            if cid is None:
                raise NotFound(f"{name!r} not found")
            return nodes.get(self.core.index, txn, cid)

    async def readdir(self, dir_id: int, after_id: int) -> list[tuple[bytes, int, bytes]]:
        """Children after ``after_id`` (the readdir offset), in stable id order, as
        ``(name, id, packed record)``: unpacked (``Node.unpack``) only by a caller that has
        not seen that exact record before (``fs`` keeps the attributes it built from it).

        A directory's first listing is shown as it comes in: a batch is returned as soon
        as there is one, and an empty batch only once all are in. Children added later
        have higher ids, so the offsets stay valid across batches."""
        listings = self.listings
        await listings.ensure_listing(dir_id)
        ix = self.core.index
        whole = False
        while True:
            out = []
            with self.core.txn() as txn:
                for cid, name in nodes.iter_children(ix, txn, dir_id, after_id):
                    out.append((name, cid, nodes.get_packed(ix, txn, cid)))
                    if len(out) >= 512:
                        break
            if out or not listings.growing(dir_id):
                if not out and not whole and Flag.LISTED not in self.core.node(dir_id).flags:
                    # A first listing that broke off: list it whole (or say why not).
                    await listings.ensure_listed(dir_id)
                    whole = True
                    continue
                return out
            await listings.wait_to_grow(dir_id)

    def _new_node(self, txn, parent: Node, name: bytes, is_dir: bool, mode: int) -> Node:
        ix = self.core.index
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
        with self.core.txn(write=True) as txn:
            node = self._new_node(txn, self._check_parent(txn, parent_id), name, True, mode)
        self.core.mark_changed()
        return node

    def create(self, parent_id: int, name: bytes, mode: int) -> Node:
        """A new empty file. Its content file is made by the ``open`` that follows at once
        (``fs.create``); making it here too cost three more syscalls per file."""
        with self.core.txn(write=True) as txn:
            node = self._new_node(txn, self._check_parent(txn, parent_id), name, False, mode)
        self.core.mark_changed()
        return node

    def symlink(self, parent_id: int, name: bytes, target: bytes) -> Node:
        """A new symbolic link: a file holding the link's Minshall-French form (``cscd.symlinks``),
        uploaded like any file. Made as an empty file first, its 1067 bytes written, then
        flagged in a second transaction: a kill in between leaves an empty file (the
        ``symlink`` call never returned), never a link without its target."""
        data = symlinks.encode(target)
        node = self.create(parent_id, name, 0o777)
        fd = self.core.store.open(node.id)
        try:
            self.core.store.pwrite(fd, data, 0, node.parent)
        finally:
            os.close(fd)
        ix = self.core.index
        with self.core.txn(write=True) as txn:
            node = nodes.get(ix, txn, node.id)
            node.size = len(data)
            node.flags |= Flag.SYMLINK | Flag.HYDRATED
            node.version += 1
            nodes.mark_dirty(ix, txn, node, DirtyReason.CONTENT)
            nodes.put(ix, txn, node)
        self.core.mark_changed()
        return node

    def _remove(self, parent_id: int, name: bytes, want_dir: bool) -> Node:
        ix = self.core.index
        with self.core.txn(write=True) as txn:
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
            self.core.drop(txn, node)
            parent.mtime_ns = parent.ctime_ns = time.time_ns()
            nodes.put(ix, txn, parent)
        self.core.mark_changed()
        return node

    async def unlink(self, parent_id: int, name: bytes) -> Node:
        await self.listings.ensure_listed(parent_id)
        return self._remove(parent_id, name, want_dir=False)

    async def rmdir(self, parent_id: int, name: bytes) -> Node:
        await self.listings.ensure_listed(parent_id)
        node = await self.lookup(parent_id, name)
        if node.is_dir:
            await self.listings.ensure_listed(node.id)
        return self._remove(parent_id, name, want_dir=True)

    async def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, *,
                     noreplace: bool = False) -> tuple[Node, Node | None]:
        """Move a name; returns (moved node, replaced node or None)."""
        await self.listings.ensure_listed(old_parent)
        await self.listings.ensure_listed(new_parent)
        ix = self.core.index
        check_name(new_name)
        with self.core.txn(write=True) as txn:
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
                self.core.drop(txn, target)
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
        self.core.mark_changed()
        return node, replaced

    def _folder_id(self, txn, node: Node) -> int:
        while node.parent != ROOT_ID:
            node = nodes.get(self.core.index, txn, node.parent)
        return node.id

    def _is_ancestor(self, txn, ancestor: int, node: Node) -> bool:
        while True:
            if node.id == ancestor:
                return True
            if node.parent in (0, ROOT_ID):
                return False
            node = nodes.get(self.core.index, txn, node.parent)

    async def resolve(self, parts: list[bytes]) -> Node:
        """The node at a path of names below the mount's root (may list directories)."""
        node = self.core.node(ROOT_ID)
        for name in parts:
            node = await self.lookup(node.id, name)
        return node

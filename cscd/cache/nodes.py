"""Node records and the transaction-level operations on the two namespaces.

Owns the packed ``Node`` layout and every function that changes ``nodes``, ``children``,
``dirents``, ``bases`` and ``dirty`` together. All functions are synchronous and take the
caller's transaction first (see ``index.py``: never await inside a write transaction).
No network, no content bytes.
"""

from __future__ import annotations

import enum
import logging
import stat
import struct
from dataclasses import dataclass

import lmdb

from cscd.cache.index import Index, dirent_key, from_u32, from_u64, u32, u64
from cscd.errors import NotFound
from cscd.types import ROOT_ID, RemoteEntry

log = logging.getLogger(__name__)


class Flag(enum.IntFlag):
    HYDRATED = 1  # all content present in the store
    LISTED = 2  # directory: children known (fetched from the server or created locally)
    TOMBSTONE = 4  # unlinked locally; kept until the kernel forgets it and the server agrees
    PINNED = 8  # always available offline
    HAS_BASE = 16  # base_* fields describe the agreed server version
    SYMLINK = 32  # a file whose content is a Minshall-French link (``cscd.symlinks``)
    LINK_CHECKED = 64  # a 1067-byte server file found not to be a link (never asked again)
    XATTRS = 128  # has user.* attributes (``cscd.cache.attrs``)


class DirtyReason(enum.IntFlag):
    CONTENT = 1  # local content changed since base
    META = 2  # times/mode changed
    NAMESPACE = 4  # created, renamed or moved locally since base
    DELETE = 8  # deleted locally; delete on the server
    ATTRS = 16  # mode or user.* attributes changed (``cscd.cache.attrs``)


_FIXED = struct.Struct(">QBIIQqqQQQQqHH")
#: ``Flag(n)`` costs ~1 µs and ``unpack`` runs once per entry of every listing: look them up.
_FLAGS = tuple(Flag(n) for n in range(256))
_TOMBSTONE, _LISTED = int(Flag.TOMBSTONE), int(Flag.LISTED)
#: The properties below test bits with ``int.__and__``: ``Flag.X in flags`` runs enum's
#: Python-level ``__contains__`` (about 0.5 µs), several times per entry of every listing.
_HYDRATED, _HAS_BASE, _SYMLINK = int(Flag.HYDRATED), int(Flag.HAS_BASE), int(Flag.SYMLINK)
_bits = int.__and__


@dataclass(slots=True)
class Node:
    """One file or directory. ``version`` counts local changes, so sync can tell whether a
    node changed while it was being uploaded."""

    id: int
    parent: int
    is_dir: bool
    flags: Flag
    mode: int  # permission bits only
    size: int
    mtime_ns: int
    ctime_ns: int
    version: int
    base_parent: int
    base_file_id: int
    base_size: int
    base_mtime_ns: int
    name: bytes
    base_name: bytes

    def pack(self) -> bytes:
        return (
            _FIXED.pack(
                self.parent,
                1 if self.is_dir else 0,
                int(self.flags),
                self.mode,
                self.size,
                self.mtime_ns,
                self.ctime_ns,
                self.version,
                self.base_parent,
                self.base_file_id,
                self.base_size,
                self.base_mtime_ns,
                len(self.name),
                len(self.base_name),
            )
            + self.name
            + self.base_name
        )

    @classmethod
    def unpack(cls, node_id: int, data: bytes) -> Node:
        f = _FIXED.unpack_from(data)
        off = _FIXED.size
        name = bytes(data[off : off + f[12]])
        base_name = bytes(data[off + f[12] : off + f[12] + f[13]])
        return cls(
            node_id, f[0], bool(f[1]), _FLAGS[f[2]] if f[2] < 256 else Flag(f[2]), f[3],
            f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11],
            name, base_name,
        )

    @property
    def has_base(self) -> bool:
        return _bits(self.flags, _HAS_BASE) != 0

    @property
    def is_deleted(self) -> bool:
        """Gone from the namespace here (a tombstone kept for a server delete or an open handle)."""
        return _bits(self.flags, _TOMBSTONE) != 0

    @property
    def is_hydrated(self) -> bool:
        return _bits(self.flags, _HYDRATED) != 0

    @property
    def is_symlink(self) -> bool:
        return _bits(self.flags, _SYMLINK) != 0

    @property
    def st_mode(self) -> int:
        if self.is_symlink:
            return stat.S_IFLNK | 0o777
        return (stat.S_IFDIR if self.is_dir else stat.S_IFREG) | self.mode

    def base_entry(self) -> RemoteEntry | None:
        """The agreed server version as a ``RemoteEntry`` (None if never agreed)."""
        if not self.has_base:
            return None
        return RemoteEntry(self.base_name, self.is_dir, self.base_size, self.base_mtime_ns, 0, self.base_file_id)

    def matches_base(self, entry: RemoteEntry) -> bool:
        """True if ``entry`` is the version this node's base records (ctime ignored)."""
        return (
            self.has_base
            and entry.is_dir == self.is_dir
            and entry.file_id == self.base_file_id
            and (self.is_dir or (entry.size == self.base_size and entry.mtime_ns == self.base_mtime_ns))
        )


def get(ix: Index, txn: lmdb.Transaction, node_id: int) -> Node:
    data = txn.get(u64(node_id), db=ix.nodes)
    if data is None:
        raise NotFound(f"node {node_id} is gone")
    return Node.unpack(node_id, ix.unseal(data))


def find(ix: Index, txn: lmdb.Transaction, node_id: int) -> Node | None:
    data = txn.get(u64(node_id), db=ix.nodes)
    return None if data is None else Node.unpack(node_id, ix.unseal(data))


def get_packed(ix: Index, txn: lmdb.Transaction, node_id: int) -> bytes:
    """The node's record packed (``Node.unpack`` reads it); the same bytes mean the same node."""
    data = txn.get(u64(node_id), db=ix.nodes)
    if data is None:
        raise NotFound(f"node {node_id} is gone")
    return ix.unseal(data)


def is_pinned(ix: Index, txn: lmdb.Transaction, node: Node) -> bool:
    """Pinned itself or under a pinned folder (a pin covers everything below it)."""
    while True:
        if Flag.PINNED in node.flags:
            return True
        if node.parent in (0, ROOT_ID):
            return False
        node = get(ix, txn, node.parent)


def put(ix: Index, txn: lmdb.Transaction, node: Node) -> None:
    """Store ``node``; keeps ``listed`` and ``tombstones`` in step with its flags."""
    key = u64(node.id)
    txn.put(key, ix.seal(node.pack()), db=ix.nodes)
    flags = int(node.flags)  # int tests: enum ones cost ~1 µs, and every listed entry comes here
    if flags & _TOMBSTONE:
        txn.put(key, b"", db=ix.tombstones)
        if node.is_dir:
            txn.delete(key, db=ix.listed)
    elif node.is_dir and flags & _LISTED and node.id != ROOT_ID:
        txn.put(key, b"", db=ix.listed, overwrite=False)  # keep the listing digest


def lookup_id(ix: Index, txn: lmdb.Transaction, parent: int, name: bytes) -> int | None:
    data = txn.get(ix.child_key(parent, name), db=ix.children)
    return None if data is None else from_u64(data)


def base_lookup_id(ix: Index, txn: lmdb.Transaction, base_parent: int, base_name: bytes) -> int | None:
    data = txn.get(ix.child_key(base_parent, base_name), db=ix.bases)
    return None if data is None else from_u64(data)


def link(ix: Index, txn: lmdb.Transaction, node: Node) -> None:
    """Enter ``node`` under its (parent, name) in the local namespace."""
    txn.put(ix.child_key(node.parent, node.name), u64(node.id), db=ix.children)
    txn.put(dirent_key(node.parent, node.id), ix.seal(node.name), db=ix.dirents)


def unlink(ix: Index, txn: lmdb.Transaction, node: Node) -> None:
    """Remove ``node`` from the local namespace (its record stays).

    Its name is freed only if it still holds this node: a deleted node (a tombstone waiting
    for its server delete) left its name long ago, and another node may hold it now, as
    after an atomic save's rename over it.
    """
    key = ix.child_key(node.parent, node.name)
    held = txn.get(key, db=ix.children)
    if held is not None and from_u64(held) == node.id:
        txn.delete(key, db=ix.children)
    txn.delete(dirent_key(node.parent, node.id), db=ix.dirents)
    # A server name that a merge skipped because this local name held it must appear now.
    forget_listing(ix, txn, node.parent)


def set_base(ix: Index, txn: lmdb.Transaction, node: Node, base_parent: int, entry: RemoteEntry) -> None:
    """Record ``entry`` under ``base_parent`` as the agreed version (updates ``bases``)."""
    clear_base(ix, txn, node)
    node.base_parent = base_parent
    node.base_name = entry.name
    node.base_file_id = entry.file_id
    node.base_size = entry.size
    node.base_mtime_ns = entry.mtime_ns
    node.flags |= Flag.HAS_BASE
    key = ix.child_key(base_parent, entry.name)
    held = txn.get(key, db=ix.bases)
    if held is not None and from_u64(held) != node.id:
        other = find(ix, txn, from_u64(held))
        if other is not None and not other.is_deleted and (other.base_parent, other.base_name) == (
                base_parent, entry.name):
            # Two live nodes cannot share one server name; the other one is left pointing at
            # a name it no longer holds. Not expected: said loudly, to be found.
            log.warning("node %s takes the server name %r in %s from live node %s (%r)",
                        node.id, entry.name, base_parent, other.id, other.name)
    txn.put(key, u64(node.id), db=ix.bases)
    forget_listing(ix, txn, base_parent)


def clear_base(ix: Index, txn: lmdb.Transaction, node: Node) -> None:
    if node.has_base:
        key = ix.child_key(node.base_parent, node.base_name)
        if txn.get(key, db=ix.bases) == u64(node.id):
            txn.delete(key, db=ix.bases)
        forget_listing(ix, txn, node.base_parent)
    node.flags &= ~Flag.HAS_BASE
    node.base_parent = node.base_file_id = node.base_size = node.base_mtime_ns = 0
    node.base_name = b""


def forget_listing(ix: Index, txn: lmdb.Transaction, dir_id: int) -> None:
    """The agreed names under ``dir_id`` changed: drop the digest of its last merged listing
    (``listed``), so the next listing is merged even if it is the same as that one."""
    key = u64(dir_id)
    if txn.get(key, db=ix.listed):
        txn.put(key, b"", db=ix.listed)


def dirty_reasons(ix: Index, txn: lmdb.Transaction, node_id: int) -> DirtyReason:
    data = txn.get(u64(node_id), db=ix.dirty)
    return DirtyReason(0) if data is None else DirtyReason(from_u32(data))


def mark_dirty(ix: Index, txn: lmdb.Transaction, node: Node, reason: DirtyReason) -> None:
    """Add ``reason`` to the node's dirty bits and bump its local version."""
    node.version += 1
    keep_dirty(ix, txn, node.id, reason)


def keep_dirty(ix: Index, txn: lmdb.Transaction, node_id: int, reason: DirtyReason) -> None:
    """Add ``reason`` without a new local version: what was sent stays the same version, only
    a part of it is still to be sent (the push's retry is then a failure with backoff, not a
    restart for a change made meanwhile)."""
    txn.put(u64(node_id), u32(int(dirty_reasons(ix, txn, node_id) | reason)), db=ix.dirty)


def clear_dirty(ix: Index, txn: lmdb.Transaction, node_id: int, reasons: DirtyReason | None = None) -> None:
    if reasons is None:
        txn.delete(u64(node_id), db=ix.dirty)
        return
    left = dirty_reasons(ix, txn, node_id) & ~reasons
    if left:
        txn.put(u64(node_id), u32(int(left)), db=ix.dirty)
    else:
        txn.delete(u64(node_id), db=ix.dirty)


def iter_children(ix: Index, txn: lmdb.Transaction, parent: int, after_id: int = 0):
    """Yield ``(child_id, name)`` of ``parent`` in id order, starting after ``after_id``."""
    prefix = u64(parent)
    cur = txn.cursor(db=ix.dirents)
    if not cur.set_range(dirent_key(parent, after_id + 1)):
        return
    for key, name in cur:
        if key[:8] != prefix:
            return
        yield from_u64(key[8:16]), ix.unseal(bytes(name))


def iter_base_children(ix: Index, txn: lmdb.Transaction, base_parent: int, after: bytes | None = None):
    """Yield ``(base_name, id)`` of everything whose agreed server location is under
    ``base_parent``, in key order (name order, unless the index is sealed); with ``after``,
    only the names whose keys sort after its key."""
    prefix = u64(base_parent)
    cur = txn.cursor(db=ix.bases)
    start = prefix if after is None else ix.child_key(base_parent, after)
    if not cur.set_range(start):
        return
    for key, value in cur:
        if key[:8] != prefix:
            return
        if key == start and after is not None:
            continue
        yield ix.name_of(key), from_u64(value)


def has_children(ix: Index, txn: lmdb.Transaction, parent: int) -> bool:
    return next(iter_children(ix, txn, parent), None) is not None


def iter_dirty(ix: Index, txn: lmdb.Transaction):
    """Yield ``(id, DirtyReason)`` of every dirty node."""
    for key, value in txn.cursor(db=ix.dirty):
        yield from_u64(key), DirtyReason(from_u32(value))


def delete_record(ix: Index, txn: lmdb.Transaction, node: Node) -> None:
    """Forget ``node`` entirely: record, base entry, dirty mark, range map and chunk map."""
    clear_base(ix, txn, node)
    txn.delete(u64(node.id), db=ix.nodes)
    txn.delete(u64(node.id), db=ix.dirty)
    txn.delete(u64(node.id), db=ix.ranges)
    txn.delete(u64(node.id), db=ix.pins)
    txn.delete(u64(node.id), db=ix.chunks)
    txn.delete(u64(node.id), db=ix.tombstones)
    txn.delete(u64(node.id), db=ix.newer)
    txn.delete(u64(node.id), db=ix.xattrs)
    if node.is_dir:
        txn.delete(u64(node.id), db=ix.listed)


def iter_tombstones(ix: Index, txn: lmdb.Transaction):
    """Yield the id of every tombstone (read from ``tombstones``, not from every node)."""
    for key in txn.cursor(db=ix.tombstones).iternext(keys=True, values=False):
        yield from_u64(key)


def iter_listed(ix: Index, txn: lmdb.Transaction):
    """Yield the id of every live listed directory but the root (from ``listed``)."""
    for key in txn.cursor(db=ix.listed).iternext(keys=True, values=False):
        yield from_u64(key)

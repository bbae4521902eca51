"""The chunk map of each file's *base* content: the ``chunks`` DB (layout in ``index.py``).

Owns packing, unpacking and the transaction-level rules for when a map is stored, kept or
dropped. Synchronous; every function takes the caller's transaction first (never await
inside a write transaction). No network, no content bytes, no hashing: the chunks come
from ``cscd.sync`` as plain ``(offset, length, digest)`` triples.

The rule that keeps delta uploads safe: a map is stored together with the identity of the
server version it describes (FileId, size, write time) and is only handed out while that
is still the node's base. Whatever moves the base without new chunks — a server-side
change merged from a listing, a conflict rename, an upload whose content changed under it —
makes the map stale without any code having to remember to delete it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import lmdb

from cscd.cache.index import Index, u64
from cscd.cache.nodes import DirtyReason, Node
from cscd.types import RemoteEntry

ChunkTriple = tuple[int, int, bytes]

_HEADER = struct.Struct(">QQqI")
_ENTRY = struct.Struct(">QI16s")


def pack(file_id: int, size: int, mtime_ns: int, chunks: Sequence[ChunkTriple]) -> bytes:
    """Header naming the base version, then one entry per chunk."""
    parts = [_HEADER.pack(file_id, size, mtime_ns, len(chunks))]
    parts += [_ENTRY.pack(off, length, bytes(digest)) for off, length, digest in chunks]
    return b"".join(parts)


def unpack(data: bytes) -> tuple[tuple[int, int, int], list[ChunkTriple]]:
    """((file id, size, mtime ns), chunks) of a packed map."""
    file_id, size, mtime_ns, count = _HEADER.unpack_from(data)
    pos = _HEADER.size
    out = [_ENTRY.unpack_from(data, pos + i * _ENTRY.size) for i in range(count)]
    return (file_id, size, mtime_ns), out


def _identity(node: Node) -> tuple[int, int, int]:
    return node.base_file_id, node.base_size, node.base_mtime_ns


def get(ix: Index, txn: lmdb.Transaction, node: Node) -> list[ChunkTriple] | None:
    """The chunk map of ``node``'s current base, or None if unknown or stale."""
    if node.is_dir or not node.has_base:
        return None
    data = txn.get(u64(node.id), db=ix.chunks)
    if data is None:
        return None
    ident, chunks = unpack(ix.unseal(data))
    return chunks if ident == _identity(node) else None


def put(ix: Index, txn: lmdb.Transaction, node: Node, chunks: Sequence[ChunkTriple]) -> None:
    """Store ``chunks`` as the map of ``node``'s current base (the caller vouches for it)."""
    if not node.has_base or node.is_dir:
        txn.delete(u64(node.id), db=ix.chunks)
        return
    txn.put(u64(node.id), ix.seal(pack(*_identity(node), chunks)), db=ix.chunks)


def after_sync(
    ix: Index,
    txn: lmdb.Transaction,
    node: Node,
    old_base: tuple[int, int, int],
    reasons: DirtyReason,
    chunks: Sequence[ChunkTriple] | None,
    *,
    clean: bool,
) -> None:
    """Keep the map in step with a base that ``record_synced`` just set (same transaction).

    - ``chunks`` given: they describe what was uploaded; stored if the node did not change
      during the upload (``clean``), else dropped — the upload may hold a mix of versions.
    - ``chunks`` None and no ``CONTENT`` reason (a rename or a times-only change): the
      server content did not change, so a map of the old base moves to the new identity,
      provided FileId and size are the same.
    - otherwise the map is left alone and is stale by its header.
    """
    key = u64(node.id)
    if chunks is not None:
        if clean:
            put(ix, txn, node, chunks)
        else:
            txn.delete(key, db=ix.chunks)
        return
    if reasons & DirtyReason.CONTENT or node.is_dir or not node.has_base:
        return
    data = txn.get(key, db=ix.chunks)
    if data is None:
        return
    ident, old = unpack(ix.unseal(data))
    new = _identity(node)
    if ident == old_base and ident != new and (ident[0], ident[1]) == (new[0], new[1]):
        put(ix, txn, node, old)


def record_for_base(
    ix: Index,
    txn: lmdb.Transaction,
    node: Node,
    version: int,
    base: RemoteEntry,
    chunks: Sequence[ChunkTriple],
    *,
    is_dirty: bool,
) -> bool:
    """Store the map of a fully downloaded file if nothing moved while it was chunked.

    ``version`` and ``base`` are what the caller saw before it read the content; the map
    is stored only if the node still has that version and that base, all its content, and
    no local change. Returns whether it was stored.
    """
    if (
        node.version != version
        or is_dirty
        or not node.is_hydrated
        or not node.has_base
        or _identity(node) != (base.file_id, base.size, base.mtime_ns)
        or node.size != base.size
    ):
        return False
    put(ix, txn, node, chunks)
    return True

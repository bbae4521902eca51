"""The roaming attributes of a node: its mode and its ``user.*`` extended attributes.

Owns the ``xattrs`` table (node id → the node's user attributes); the mode lives in the
node record. A local change marks the node dirty with ``ATTRS`` and the push writes the
whole set to the server as SMB EAs (``cscd.xattrs``); a listing brings the server's set to a
node with no local attribute change (``take_server``). Only nodes with the ``XATTRS`` flag
have a row, so most files cost no lookup.
"""

from __future__ import annotations

import struct

import lmdb

from cscd import xattrs as forms
from cscd.cache import nodes
from cscd.cache.index import Index, u64
from cscd.cache.nodes import DirtyReason, Flag, Node
from cscd.types import ROOT_ID

_LENS = struct.Struct(">HI")


def _pack(values: dict[bytes, bytes]) -> bytes:
    return b"".join(_LENS.pack(len(n), len(v)) + n + v for n, v in sorted(values.items()))


def _unpack(data: bytes) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        nlen, vlen = _LENS.unpack_from(data, pos)
        pos += _LENS.size
        out[bytes(data[pos:pos + nlen])] = bytes(data[pos + nlen:pos + nlen + vlen])
        pos += nlen + vlen
    return out


def get(ix: Index, txn: lmdb.Transaction, node: Node) -> dict[bytes, bytes]:
    """The node's ``user.*`` attributes, full names."""
    if Flag.XATTRS not in node.flags:
        return {}
    data = txn.get(u64(node.id), db=ix.xattrs)
    return {} if data is None else _unpack(ix.unseal(data))


def _store(ix: Index, txn: lmdb.Transaction, node: Node, values: dict[bytes, bytes]) -> None:
    if values:
        txn.put(u64(node.id), ix.seal(_pack(values)), db=ix.xattrs)
        node.flags |= Flag.XATTRS
    else:
        txn.delete(u64(node.id), db=ix.xattrs)
        node.flags &= ~Flag.XATTRS


def set_local(ix: Index, txn: lmdb.Transaction, node: Node, name: bytes, value: bytes | None) -> None:
    """Set (``value``) or remove (None) one attribute here; the push carries it to the server.
    Raises the ``cscd.xattrs`` errors for what the server cannot store, ``KeyError`` for the
    removal of an attribute the node does not have."""
    values = get(ix, txn, node)
    if value is None:
        del values[name]
    else:
        forms.check_settable(name, value, values)
        if values.get(name) == value:
            return
        values[name] = value
    _store(ix, txn, node, values)
    _changed(ix, txn, node)


def set_mode(ix: Index, txn: lmdb.Transaction, node: Node, mode: int) -> bool:
    """chmod(2) here; returns whether the mode changed."""
    mode &= 0o7777
    if mode == node.mode:
        return False
    node.mode = mode
    _changed(ix, txn, node)
    return True


def _changed(ix: Index, txn: lmdb.Transaction, node: Node) -> None:
    if node.is_deleted:
        node.version += 1
    elif node.id != ROOT_ID and node.parent != ROOT_ID:  # a redirected folder itself is not pushed
        nodes.mark_dirty(ix, txn, node, DirtyReason.ATTRS)


def server_eas(ix: Index, txn: lmdb.Transaction, node: Node) -> dict[bytes, bytes]:
    """The EAs the node carries on the server: its mode and user attributes."""
    return forms.to_server(node.mode, node.is_dir, get(ix, txn, node))


def take_server(ix: Index, txn: lmdb.Transaction, node: Node, eas: forms.ServerEas) -> bool:
    """Give a node the mode and attributes its server EAs say, unless it changed them here
    (a local change wins: the push writes it over). Returns whether anything changed."""
    if not eas and node.mode == forms.default_mode(node.is_dir) and Flag.XATTRS not in node.flags:
        return False
    if nodes.dirty_reasons(ix, txn, node.id) & DirtyReason.ATTRS:
        return False
    mode, values = forms.from_server(eas, node.is_dir)
    changed = False
    if node.mode != mode and not node.is_symlink:
        node.mode = mode
        changed = True
    if get(ix, txn, node) != values:
        _store(ix, txn, node, values)
        changed = True
    return changed

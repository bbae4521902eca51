"""Conflict copies: recording them, listing them, resolving them.

When a file changed on both sides, sync keeps both: the server's version keeps the name,
the local one is uploaded as ``name (conflict HOST YYYY-MM-DD HHMMSS).ext`` and the local node
takes that name. This module records that in the ``conflicts`` database, lists the records
for ``cscd conflicts`` and resolves them with local namespace operations only — sync then
carries them to the server like any other change:

- ``local``: the conflict copy replaces the original name (rename over it);
- ``remote``: the conflict copy is deleted;
- ``both``: both files stay, the record goes.

It works through ``CacheCore`` (transactions, ``publish``) and, to resolve, ``Namespace``.
"""

from __future__ import annotations

import json
import socket
import time
from typing import TYPE_CHECKING

from cscd.cache import nodes, unrecorded
from cscd.cache.index import from_u64, u64
from cscd.cache.nodes import Node
from cscd.errors import CscdError, NotFound

if TYPE_CHECKING:
    from cscd.cache.core import CacheCore
    from cscd.cache.namespace import Namespace

KEEP_CHOICES = ("local", "remote", "both")


def rename_for_conflict(cache: CacheCore, node_id: int, new_name: bytes) -> None:
    """Give the local version a new name in the same directory and record the conflict.

    Its old base is dropped, so the server's version reappears under the old name as a
    placeholder on the next listing. Called before the conflict copy is uploaded (so no
    listing merged meanwhile mistakes that upload for a stranger's file).
    """
    ix = cache.index
    with cache.txn(write=True) as txn:
        node = nodes.get(ix, txn, node_id)
        old_name = node.name
        nodes.unlink(ix, txn, node)
        nodes.clear_base(ix, txn, node)
        # The upload to the old name met another version and never happened: its note goes.
        unrecorded.remove(ix, txn, node.parent, old_name, node_id)
        node.name = new_name
        nodes.put(ix, txn, node)
        nodes.link(ix, txn, node)
        record = {"original": old_name.decode("utf-8", "surrogateescape"), "parent": node.parent,
                  "at": time.time_ns(), "host": socket.gethostname()}
        txn.put(u64(node_id), ix.seal(json.dumps(record).encode()), db=ix.conflicts)
    cache.publish(("entry", node.parent, old_name))
    cache.publish(("entry", node.parent, new_name))


def list_conflicts(cache: CacheCore) -> list[dict]:
    """Every unresolved conflict: the copy's path, the original's path, when and where."""
    ix = cache.index
    out = []
    with cache.txn() as txn:
        records = [(from_u64(k), json.loads(ix.unseal(bytes(v)))) for k, v in txn.cursor(db=ix.conflicts)]
    for copy_id, rec in records:
        try:
            copy = cache.node(copy_id)
            parent = cache.node(rec["parent"])
        except NotFound:
            continue
        base = b"/".join(cache.path_of(parent))
        out.append({
            "id": copy_id,
            "copy": (base + b"/" + copy.name).decode("utf-8", "surrogateescape"),
            "original": base.decode("utf-8", "surrogateescape") + "/" + rec["original"],
            "at_ns": rec["at"],
            "host": rec["host"],
        })
    return out


def _find(cache: CacheCore, node: Node) -> tuple[int, dict]:
    ix = cache.index
    with cache.txn() as txn:
        for k, v in txn.cursor(db=ix.conflicts):
            copy_id, rec = from_u64(k), json.loads(ix.unseal(bytes(v)))
            if copy_id == node.id:
                return copy_id, rec
            if rec["parent"] == node.parent and rec["original"].encode("utf-8", "surrogateescape") == node.name:
                return copy_id, rec
    raise NotFound(f"{node.name.decode(errors='replace')!r} is not part of a recorded conflict")


async def resolve(cache: CacheCore, namespace: Namespace, node: Node, keep: str) -> dict:
    """Resolve the conflict ``node`` belongs to (it may be the copy or the original), with
    the namespace's own rename and unlink."""
    if keep not in KEEP_CHOICES:
        raise CscdError(f"keep must be one of {', '.join(KEEP_CHOICES)}, not {keep!r}")
    copy_id, rec = _find(cache, node)
    copy = cache.node(copy_id)
    original = rec["original"].encode("utf-8", "surrogateescape")
    if keep == "local":
        await namespace.rename(copy.parent, copy.name, rec["parent"], original)
    elif keep == "remote":
        await namespace.unlink(copy.parent, copy.name)
    with cache.txn(write=True) as txn:
        txn.delete(u64(copy_id), db=cache.index.conflicts)
    return {"kept": keep, "original": rec["original"]}

"""Re-pointing a folder's bases at its new server target after a server-side copy.

Owns the rule that lets a folder keep its cache when its content was copied to a new target
on the server (``cscd.redirect.move``): the copy has new FileIds, so without this every clean
file would look changed on the server and be dropped and downloaded again. A node whose
agreed server path is in the new tree with the same kind, size and write time takes the new
entry as its base; its content, ranges, dirty marks and chunk map stay. Anything else keeps
its old base, and the next scan treats it as a server change as usual (nothing local is lost:
dirty nodes keep their changes either way).

One write transaction on ``CacheCore``, no network, used through
``SyncSide.adopt_moved_bases`` before sync starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from cscd.cache import chunks as chunkmaps
from cscd.cache import nodes
from cscd.types import ROOT_ID, RemoteEntry

if TYPE_CHECKING:
    from cscd.cache.core import CacheCore


def adopt_moved_bases(cache: CacheCore, folder: bytes, entries: Mapping[bytes, RemoteEntry]) -> int:
    """Give every node of ``folder`` whose base path is in ``entries`` (relative path → new
    server entry) and still describes the same version that entry as its base. Returns how
    many nodes were re-pointed."""
    ix = cache.index
    count = 0
    with cache.txn(write=True) as txn:
        top = nodes.base_lookup_id(ix, txn, ROOT_ID, folder)
        todo = [] if top is None else [(top, b"")]
        while todo:
            dir_id, prefix = todo.pop()
            for name, nid in list(nodes.iter_base_children(ix, txn, dir_id)):
                rel = prefix + b"/" + name if prefix else name
                entry, node = entries.get(rel), nodes.get(ix, txn, nid)
                if entry is None or entry.is_dir != node.is_dir or (not node.is_dir and (
                        entry.size, entry.mtime_ns) != (node.base_size, node.base_mtime_ns)):
                    continue
                if node.is_dir:
                    todo.append((nid, rel))
                if entry.file_id != node.base_file_id:
                    kept = None if node.is_dir else chunkmaps.get(ix, txn, node)
                    nodes.set_base(ix, txn, node, dir_id, entry)
                    if kept is not None:
                        chunkmaps.put(ix, txn, node, kept)
                    nodes.put(ix, txn, node)
                    count += 1
    return count

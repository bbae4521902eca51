"""Read-only looks into a running daemon's LMDB index, for tests that wait on sync state.

Owns ``node_state``: the node at a local path, whether it is dirty, and its valid chunk
map. LMDB lets another process read while the daemon writes (readers never block the
writer), so this is a real observation, not a mock. Opens the environment read-only for
each call; never writes. No fixtures here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import lmdb

from cscd.cache import chunks as chunkmaps
from cscd.cache import nodes
from cscd.cache.index import u64
from cscd.cache.sealing import Sealer
from cscd.types import ROOT_ID

__all__ = ["NodeState", "node_state"]


@dataclass(frozen=True)
class NodeState:
    node_id: int
    is_dirty: bool
    has_base: bool
    chunk_map: list[tuple[int, int, bytes]] | None


def node_state(cache_dir: Path, folder: str, *parts: str, sealer: Sealer | None = None) -> NodeState | None:
    """The state of ``folder/parts...`` in the daemon's index (None if no such name); a
    sealed cache's with its ``sealer``."""
    env = lmdb.open(str(cache_dir / "index"), readonly=True, lock=True, max_dbs=16)
    try:
        # what ``cscd.cache.nodes`` reads of an ``Index``: its tables and how it keys and seals
        same = bytes
        ix = SimpleNamespace(**{n: env.open_db(n.encode()) for n in
                                ("nodes", "children", "dirty", "chunks", "bases")},
                             child_key=(lambda p, n: u64(p) + (n if sealer is None else sealer.seal_name(u64(p), n))),
                             seal=same if sealer is None else sealer.seal_value,
                             unseal=same if sealer is None else sealer.open_value)
        with env.begin() as txn:
            nid: int | None = ROOT_ID
            for name in (folder, *parts):
                nid = nodes.lookup_id(ix, txn, nid, name.encode())  # type: ignore[arg-type]
                if nid is None:
                    return None
            node = nodes.get(ix, txn, nid)  # type: ignore[arg-type]
            return NodeState(
                nid,
                txn.get(u64(nid), db=ix.dirty) is not None,
                node.has_base,
                chunkmaps.get(ix, txn, node),  # type: ignore[arg-type]
            )
    finally:
        env.close()

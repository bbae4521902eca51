"""The cache consistency check: every invariant ``index.py`` documents, verified.

Owns nothing but the checking. Read-only: it opens the index with a read transaction, so it
may run beside a live daemon (LMDB readers never block the writer) and after every test.
``python -m cscd.cache.check CACHE_DIR`` prints one line per problem and exits 1 if any.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lmdb

from cscd.cache import sealing
from cscd.cache.index import from_u32, from_u64
from cscd.cache.nodes import DirtyReason, Flag, Node
from cscd.cache.ranges import covers, unpack
from cscd.cache.store import ContentStore
from cscd.types import ROOT_ID


def check_cache(cache_dir: Path, sealer: sealing.Sealer | None = None) -> list[str]:
    """All problems found in the cache at ``cache_dir`` (an empty list means consistent).
    A sealed cache is checked with its ``sealer`` only."""
    problems: list[str] = []
    env = lmdb.open(str(cache_dir / "index"), max_dbs=16, readonly=True, lock=False)
    store = ContentStore(cache_dir / "content", create=False)
    unseal = bytes if sealer is None else (lambda v: sealer.open_value(bytes(v)))  # noqa: E731
    name_of = ((lambda k: bytes(k[8:])) if sealer is None  # noqa: E731
               else (lambda k: sealer.open_name(bytes(k[:8]), bytes(k[8:]))))
    try:
        dbs = {name: env.open_db(name.encode()) for name in
               ("nodes", "children", "dirents", "bases", "dirty", "ranges", "meta")}
        with env.begin() as txn:
            if (txn.get(b"sealed", db=dbs["meta"]) is None) != (sealer is None):
                return ["the index is sealed: check it with its key" if sealer is None
                        else "the index is not sealed, and a key was given"]
            nodes = {from_u64(k): Node.unpack(from_u64(k), unseal(v)) for k, v in txn.cursor(db=dbs["nodes"])}
            next_id = from_u64(txn.get(b"next_id", db=dbs["meta"]))
            children = {(from_u64(k[:8]), name_of(k)): from_u64(v) for k, v in txn.cursor(db=dbs["children"])}
            dirents = {(from_u64(k[:8]), from_u64(k[8:16])): unseal(v) for k, v in txn.cursor(db=dbs["dirents"])}
            bases = {(from_u64(k[:8]), name_of(k)): from_u64(v) for k, v in txn.cursor(db=dbs["bases"])}
            dirty = {from_u64(k): DirtyReason(from_u32(v)) for k, v in txn.cursor(db=dbs["dirty"])}
            present = {from_u64(k): unpack(bytes(v)) for k, v in txn.cursor(db=dbs["ranges"])}
            schema = bytes(txn.get(b"schema", db=dbs["meta"]) or b"")
            flag_tables = {name: {from_u64(k) for k in txn.cursor(db=env.open_db(name.encode(), txn=txn, create=False))
                                  .iternext(values=False)}
                           for name in ("listed", "tombstones", "pins")} if schema != b"1" else {}
    finally:
        env.close()

    if ROOT_ID not in nodes:
        return ["the root node is missing"]
    for (parent, name), cid in children.items():
        node = nodes.get(cid)
        where = f"children entry {parent}/{name!r} -> {cid}"
        if node is None:
            problems.append(f"{where}: no such node")
            continue
        if (node.parent, node.name) != (parent, name):
            problems.append(f"{where}: node says {node.parent}/{node.name!r}")
        if Flag.TOMBSTONE in node.flags:
            problems.append(f"{where}: the node is a tombstone")
        if dirents.get((parent, cid)) != name:
            problems.append(f"{where}: no matching dirents entry")
        if parent in nodes and not nodes[parent].is_dir:
            problems.append(f"{where}: parent is not a directory")
    for (parent, cid), name in dirents.items():
        if children.get((parent, name)) != cid:
            problems.append(f"dirents entry {parent}/{cid} ({name!r}): no matching children entry")
    linked = set(children.values())
    for nid, node in nodes.items():
        if nid >= next_id:
            problems.append(f"node {nid}: id not below next_id {next_id}")
        if nid == ROOT_ID:
            continue
        if Flag.TOMBSTONE not in node.flags and nid not in linked and node.parent != ROOT_ID:
            problems.append(f"node {nid} ({node.name!r}): live but in no directory")
        if Flag.TOMBSTONE in node.flags and nid not in dirty:
            problems.append(f"node {nid} ({node.name!r}): tombstone with nothing pending")
        if node.has_base and Flag.TOMBSTONE not in node.flags \
                and bases.get((node.base_parent, node.base_name)) != nid:
            problems.append(f"node {nid} ({node.name!r}): base {node.base_parent}/{node.base_name!r} not in bases")
        if not node.is_dir:
            if node.is_hydrated and nid in present:
                problems.append(f"node {nid} ({node.name!r}): hydrated but has a range map")
            if nid in present and not all(e <= node.size for _, e in present[nid]):
                problems.append(f"node {nid} ({node.name!r}): ranges beyond its size {node.size}")
            if node.is_hydrated and node.size and Flag.TOMBSTONE not in node.flags:
                path = store.path(nid)
                try:
                    size = os.stat(path).st_size
                    with open(path, "rb") as head:
                        if head.read(len(sealing.MAGIC)) == sealing.MAGIC:
                            size = sealing.logical_size(size)
                except FileNotFoundError:
                    problems.append(f"node {nid} ({node.name!r}): hydrated but no content file")
                    continue
                # Longer is a write the daemon was killed in (its bytes reached the file, its
                # size never the index) or a truncate killed between its commit and its cut
                # (``CacheCore.cut_content``). Never read, and cut before the file grows over them
                # (``Content.write``, ``Content.setattr``).
                if size < node.size:
                    problems.append(f"node {nid} ({node.name!r}): content file is {size} bytes, node says {node.size}")
            if nid in present and covers(present[nid], 0, node.size) and node.size:
                problems.append(f"node {nid} ({node.name!r}): complete range map but not flagged hydrated")
    for (bparent, bname), nid in bases.items():
        node = nodes.get(nid)
        if node is None or not node.has_base or (node.base_parent, node.base_name) != (bparent, bname):
            problems.append(f"bases entry {bparent}/{bname!r} -> {nid}: node does not agree")
    for nid in dirty:
        if nid not in nodes:
            problems.append(f"dirty entry {nid}: no such node")
    problems += _check_flag_tables(nodes, flag_tables)
    return problems


def _check_flag_tables(nodes: dict[int, Node], tables: dict[str, set[int]]) -> list[str]:
    """``listed``, ``tombstones`` and ``pins`` hold exactly the nodes their flag names."""
    if not tables:
        return []  # schema 1: the tables are built when cscd next opens the index
    want = {
        "listed": {nid for nid, n in nodes.items() if n.is_dir and Flag.LISTED in n.flags
                   and Flag.TOMBSTONE not in n.flags and nid != ROOT_ID},
        "tombstones": {nid for nid, n in nodes.items() if Flag.TOMBSTONE in n.flags},
        "pins": {nid for nid, n in nodes.items() if Flag.PINNED in n.flags},
    }
    out = []
    for name, ids in want.items():
        for nid in sorted(ids - tables[name]):
            out.append(f"node {nid} ({nodes[nid].name!r}): flagged but not in {name}")
        for nid in sorted(tables[name] - ids):
            out.append(f"{name} entry {nid}: " + ("no such node" if nid not in nodes else "the node's flags disagree"))
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m cscd.cache.check CACHE_DIR", file=sys.stderr)
        return 2
    problems = check_cache(Path(args[0]))
    for p in problems:
        print(p)
    print("cache is consistent" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())

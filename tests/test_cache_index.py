"""The index's flag tables (``listed``, ``tombstones``, ``pins``) and the schema 1 → 2 upgrade.

Real LMDB in a temporary directory, written through ``cscd.cache.nodes`` as the cache does, and
checked with ``cscd.cache.check`` (the same check that runs after every mount test).
"""

from __future__ import annotations

from pathlib import Path

from cscd.cache import index as index_mod
from cscd.cache import nodes
from cscd.cache.check import check_cache
from cscd.cache.index import SCHEMA_VERSION, Index, u64
from cscd.cache.nodes import Flag, Node
from cscd.types import ROOT_ID, RemoteEntry


def _node(ix: Index, txn, parent: int, name: bytes, *, is_dir: bool, flags: Flag = Flag.HYDRATED) -> Node:
    node = Node(ix.allocate_id(txn), parent, is_dir, flags, 0o755, 0, 1, 1, 0, 0, 0, 0, 0, name, b"")
    nodes.put(ix, txn, node)
    nodes.link(ix, txn, node)
    return node


def _tree(ix: Index) -> dict[str, int]:
    """Root, a listed folder with a listed and an unlisted subdirectory, a pinned file and a
    directory tombstone waiting for its server delete."""
    with ix.env.begin(write=True) as txn:
        nodes.put(ix, txn, Node(ROOT_ID, 0, True, Flag.LISTED, 0o755, 0, 1, 1, 0, 0, 0, 0, 0, b"", b""))
        folder = _node(ix, txn, ROOT_ID, b"Documents", is_dir=True, flags=Flag.LISTED)
        listed = _node(ix, txn, folder.id, b"listed", is_dir=True, flags=Flag.LISTED)
        unlisted = _node(ix, txn, folder.id, b"unlisted", is_dir=True)
        pinned = _node(ix, txn, listed.id, b"pinned.txt", is_dir=False, flags=Flag.PINNED | Flag.HYDRATED)
        txn.put(u64(pinned.id), b"", db=ix.pins)  # as residency.set_pinned does
        gone = _node(ix, txn, folder.id, b"gone", is_dir=True, flags=Flag.LISTED)
        nodes.unlink(ix, txn, gone)
        gone.flags |= Flag.TOMBSTONE
        nodes.mark_dirty(ix, txn, gone, nodes.DirtyReason.DELETE)
        nodes.put(ix, txn, gone)
    return {"folder": folder.id, "listed": listed.id, "unlisted": unlisted.id, "pinned": pinned.id,
            "gone": gone.id}


def _tables(ix: Index) -> dict[str, list[int]]:
    with ix.env.begin() as txn:
        return {"listed": list(nodes.iter_listed(ix, txn)), "tombstones": list(nodes.iter_tombstones(ix, txn)),
                "pins": [index_mod.from_u64(k) for k in txn.cursor(db=ix.pins).iternext(values=False)]}


def test_flag_bits_the_upgrade_reads_are_the_node_flags() -> None:
    assert (index_mod._LISTED, index_mod._TOMBSTONE, index_mod._PINNED) == (
        Flag.LISTED, Flag.TOMBSTONE, Flag.PINNED)


def test_put_and_delete_keep_listed_and_tombstones_in_step(tmp_path: Path) -> None:
    ix = Index(tmp_path / "index")
    ids = _tree(ix)
    assert _tables(ix) == {"listed": [ids["folder"], ids["listed"]], "tombstones": [ids["gone"]],
                           "pins": [ids["pinned"]]}
    with ix.env.begin(write=True) as txn:
        nodes.delete_record(ix, txn, nodes.get(ix, txn, ids["gone"]))
        listed = nodes.get(ix, txn, ids["listed"])
        listed.flags |= Flag.TOMBSTONE  # a listed directory deleted locally leaves the rescans
        nodes.put(ix, txn, listed)
    assert _tables(ix)["listed"] == [ids["folder"]]
    assert _tables(ix)["tombstones"] == [ids["listed"]]
    ix.close()


def test_a_schema_1_index_gets_its_tables_built_once(tmp_path: Path) -> None:
    ix = Index(tmp_path / "index")
    ids = _tree(ix)
    with ix.env.begin(write=True) as txn:  # what a cscd before schema 2 left behind
        for db in (ix.listed, ix.tombstones, ix.pins):
            txn.drop(db, delete=False)
        txn.put(b"schema", b"1", db=ix.meta)
    ix.close()

    ix = Index(tmp_path / "index")
    with ix.env.begin() as txn:
        assert txn.get(b"schema", db=ix.meta) == SCHEMA_VERSION == b"2"
    assert _tables(ix) == {"listed": [ids["folder"], ids["listed"]], "tombstones": [ids["gone"]],
                           "pins": [ids["pinned"]]}
    ix.close()
    (tmp_path / "content").mkdir()
    assert check_cache(tmp_path) == []


def test_the_check_finds_a_flag_table_out_of_step(tmp_path: Path) -> None:
    ix = Index(tmp_path / "index")
    ids = _tree(ix)
    with ix.env.begin(write=True) as txn:
        txn.delete(u64(ids["listed"]), db=ix.listed)
        txn.put(u64(ids["unlisted"]), b"", db=ix.tombstones)
    ix.close()
    (tmp_path / "content").mkdir()
    problems = check_cache(tmp_path)
    assert any(f"node {ids['listed']} " in p and "not in listed" in p for p in problems), problems
    assert any(f"tombstones entry {ids['unlisted']}: the node's flags disagree" in p for p in problems), problems


def test_a_change_of_the_names_under_a_directory_drops_its_listing_digest(tmp_path: Path) -> None:
    """The digest lets an unchanged rescan skip its merge (also after a restart): it must go
    whenever the merge's outcome could differ — an agreed name set or cleared, a local name gone."""
    ix = Index(tmp_path / "index")
    ids = _tree(ix)
    digest = b"d" * 16

    def digest_of(dir_id: int) -> bytes:
        with ix.env.begin() as txn:
            return bytes(txn.get(u64(dir_id), db=ix.listed))

    def set_digest(dir_id: int) -> None:
        with ix.env.begin(write=True) as txn:
            txn.put(u64(dir_id), digest, db=ix.listed)

    set_digest(ids["listed"])
    with ix.env.begin(write=True) as txn:  # a node put again keeps the digest
        nodes.put(ix, txn, nodes.get(ix, txn, ids["listed"]))
    assert digest_of(ids["listed"]) == digest
    with ix.env.begin(write=True) as txn:  # an upload records a base under the directory
        pinned = nodes.get(ix, txn, ids["pinned"])
        nodes.set_base(ix, txn, pinned, ids["listed"], RemoteEntry(b"pinned.txt", False, 0, 1, 1, 77))
        nodes.put(ix, txn, pinned)
    assert digest_of(ids["listed"]) == b""

    set_digest(ids["listed"])
    with ix.env.begin(write=True) as txn:  # a server delete done: the base goes
        pinned = nodes.get(ix, txn, ids["pinned"])
        nodes.clear_base(ix, txn, pinned)
        nodes.put(ix, txn, pinned)
    assert digest_of(ids["listed"]) == b""

    set_digest(ids["listed"])
    with ix.env.begin(write=True) as txn:  # a local name leaves (delete or rename)
        nodes.unlink(ix, txn, nodes.get(ix, txn, ids["pinned"]))
    assert digest_of(ids["listed"]) == b""
    ix.close()

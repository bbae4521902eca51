"""Server listings merged into a cache that local changes got to first.

Real LMDB through the real ``Cache`` with no server (nothing is fetched: listings are handed
to ``Listings.merge`` as the scan would), checked with ``cscd.cache.check`` after each step.
Each case is one the crash-churn test met by chance; here it is met every time.
"""

from __future__ import annotations

import os
from pathlib import Path

import lmdb
import pytest

from cscd.cache import nodes
from cscd.cache.cache import Cache
from cscd.cache.check import check_cache
from cscd.errors import NotFound
from cscd.types import ROOT_ID, RemoteEntry
from tests.helpers.truncate_loop import NoServer

FOLDER = b"Documents"


def _file(name: bytes, file_id: int, size: int = 10) -> RemoteEntry:
    return RemoteEntry(name, False, size, 1_000_000_000 * file_id, 1_000_000_000 * file_id, file_id)


def _dir(name: bytes, file_id: int) -> RemoteEntry:
    return RemoteEntry(name, True, 0, 1_000_000_000, 1_000_000_000, file_id)


@pytest.fixture
def cache(tmp_path: Path):
    c = Cache(tmp_path / "cache", [FOLDER], NoServer())
    yield c
    try:
        c.close()
    except lmdb.Error:
        pass  # closed by ``_problems``


def _problems(cache: Cache, path: Path) -> list[str]:
    """What ``check_cache`` finds; it opens the index itself, so the cache is closed first."""
    cache.close()
    return check_cache(path / "cache")


def _folder(cache: Cache) -> int:
    with cache.core.txn() as txn:
        return nodes.lookup_id(cache.core.index, txn, ROOT_ID, FOLDER)


async def test_a_listing_without_the_name_an_atomic_save_replaced_keeps_the_new_file(cache, tmp_path):
    """``doc.tmp`` renamed over ``doc`` leaves the old ``doc`` a tombstone with its base; once
    the push deleted it on the server, a listing without ``doc`` must forget the tombstone and
    leave the new ``doc`` where it is (it used to drop the new file's name too: a live node in
    no directory)."""
    folder = _folder(cache)
    await cache.listings.merge(folder, [_file(b"doc", 7)])
    new = cache.namespace.create(folder, b"doc.tmp", 0o644)
    await cache.namespace.rename(folder, b"doc.tmp", folder, b"doc")
    await cache.listings.merge(folder, [])
    assert (await cache.namespace.lookup(folder, b"doc")).id == new.id
    assert _problems(cache, tmp_path) == []


async def test_a_listing_after_our_unrecorded_folder_rename_keeps_the_files_in_it(cache, tmp_path):
    """A folder renamed here whose server rename went through but was never recorded (a
    crash): the listing above shows it under its new name and not its agreed one. The clean
    files in it are on the server, in the moved folder: they must stay visible here (they
    used to vanish until that folder was listed again, and their cached bytes with them)."""
    folder = _folder(cache)
    await cache.listings.merge(folder, [_dir(b"old", 5)])
    old = await cache.namespace.lookup(folder, b"old")
    await cache.listings.merge(old.id, [_file(b"kept.txt", 9), _file(b"other.txt", 10)])
    await cache.namespace.rename(folder, b"old", folder, b"new")
    await cache.listings.merge(folder, [_dir(b"new", 5)])
    moved = await cache.namespace.lookup(folder, b"new")
    assert moved.id == old.id
    assert {(await cache.namespace.lookup(moved.id, n)).name for n in (b"kept.txt", b"other.txt")} == {
        b"kept.txt", b"other.txt"}
    assert _problems(cache, tmp_path) == []


async def test_a_folder_the_server_deleted_still_loses_its_clean_files(cache, tmp_path):
    """The other side of the case above: a folder that was not moved here and is gone from
    the server goes, and its clean files with it."""
    folder = _folder(cache)
    await cache.listings.merge(folder, [_dir(b"gone", 5)])
    gone = await cache.namespace.lookup(folder, b"gone")
    await cache.listings.merge(gone.id, [_file(b"clean.txt", 9)])
    await cache.listings.merge(folder, [])
    with pytest.raises(NotFound):
        await cache.namespace.lookup(folder, b"gone")
    assert _problems(cache, tmp_path) == []



async def test_a_listing_during_a_conflict_copy_upload_gives_the_copy_no_second_node(cache, tmp_path):
    """A file changed on both sides: the push names the local version ``doc (conflict …).txt``
    and uploads it there. A listing merged while that upload runs (our own upload's change
    notification) shows the copy on the server before its base is recorded: it is ours, not a
    stranger's new file. It used to become a second node under the same name, which the
    copy's own node then pushed out of its directory (a live node in no directory)."""
    from cscd.reconcile import Ours
    from cscd.sync.conflicts import conflict_name

    folder = _folder(cache)
    node, _ = await _uploaded(cache, folder, b"doc.txt", b"base", 7)
    fd = cache.content.open(node.id, truncate=True, write=True)
    cache.content.write(node.id, fd, 0, b"mine")
    cache.content.release(node.id, fd, write=True, wrote=True)
    node = cache.core.node(node.id)
    copy = conflict_name(b"doc.txt")
    cache.sync.rename_for_conflict(node.id, copy)
    cache.sync.record_sending(node.id, folder, copy, Ours(4, node.mtime_ns))
    theirs, sent = _file(b"doc.txt", 8, 6), RemoteEntry(copy, False, 4, node.mtime_ns, node.mtime_ns, 9)
    await cache.listings.merge(folder, [theirs, sent])  # the upload is on the server, not recorded yet
    assert (await cache.namespace.lookup(folder, copy)).id == node.id
    assert (await cache.namespace.lookup(folder, b"doc.txt")).id != node.id  # theirs, to fetch
    reasons = next(r for n, r in cache.sync.dirty_nodes() if n.id == node.id)
    assert cache.sync.record_synced(node.id, node.version, folder, sent, reasons)
    await cache.listings.merge(folder, [theirs, sent])
    assert (await cache.namespace.lookup(folder, copy)).id == node.id
    assert [c["id"] for c in cache.sync.list_conflicts()] == [node.id]
    assert _problems(cache, tmp_path) == []


# ------------------------------------------------ newer versions of complete copies (issue 22)


async def _uploaded(cache: Cache, folder: int, name: bytes, data: bytes, file_id: int):
    """A file written here and recorded as uploaded, as the push does: complete and clean."""
    node = cache.namespace.create(folder, name, 0o644)
    fd = cache.content.open(node.id, truncate=True, write=True)
    cache.content.write(node.id, fd, 0, data)
    cache.content.release(node.id, fd, write=True, wrote=True)
    node = cache.core.node(node.id)
    entry = _file(name, file_id, len(data))
    reasons = cache.sync.dirty_nodes()[0][1]
    assert cache.sync.record_synced(node.id, node.version, folder, entry, reasons)
    return node, entry


async def _read(cache: Cache, node_id: int) -> bytes:
    fd = cache.content.open(node_id, truncate=False, write=False)
    try:
        return await cache.hydration.read(node_id, fd, 0, 1 << 20)
    finally:
        cache.content.release(node_id, fd, write=False, wrote=False)


async def test_a_newer_server_version_keeps_the_complete_copy_until_it_is_swapped_in(cache, tmp_path):
    """The folder serves cached files without asking the server (``serves_cached``): the
    listing notes the new version and the old copy reads on; ``swap_in`` of the fetched
    version replaces it in one step."""
    folder = _folder(cache)
    await cache.listings.merge(folder, [])
    node, entry = await _uploaded(cache, folder, b"doc", b"old bytes", 7)
    await cache.listings.merge(folder, [entry])
    newer = _file(b"doc", 8, 13)
    await cache.listings.merge(folder, [newer])
    assert await _read(cache, node.id) == b"old bytes"
    assert [(n.id, e.file_id) for n, e in cache.sync.newer_versions()] == [(node.id, 8)]
    cache.sync.newer_fetch_path(node.id).write_bytes(b"newer version")
    assert cache.sync.swap_in(node.id, cache.sync.newer_versions()[0][1])
    assert await _read(cache, node.id) == b"newer version"
    assert cache.sync.newer_versions() == [] and cache.core.node(node.id).base_file_id == 8
    assert _problems(cache, tmp_path) == []


async def test_a_local_write_while_the_newer_version_waits_refuses_the_swap(cache, tmp_path):
    folder = _folder(cache)
    await cache.listings.merge(folder, [])
    node, entry = await _uploaded(cache, folder, b"doc", b"base", 7)
    await cache.listings.merge(folder, [_file(b"doc", 8, 6)])
    fd = cache.content.open(node.id, truncate=True, write=True)
    cache.content.write(node.id, fd, 0, b"mine")
    cache.content.release(node.id, fd, write=True, wrote=True)
    cache.sync.newer_fetch_path(node.id).write_bytes(b"theirs")
    assert not cache.sync.swap_in(node.id, cache.sync.newer_versions()[0][1])
    assert await _read(cache, node.id) == b"mine"
    assert cache.core.node(node.id).base_file_id == 7  # the push sees both sides changed
    assert not cache.sync.newer_fetch_path(node.id).exists()
    assert _problems(cache, tmp_path) == []


@pytest.mark.parametrize("renamed", [False, True], ids=["before-the-rename", "after-the-rename"])
async def test_a_swap_cut_by_a_crash_is_undone_or_finished_on_the_next_open(tmp_path, renamed):
    """The three steps of ``swap_in`` with a crash after the first (the fetched file is still
    there: the old copy stands) or after the rename (it is gone: the new version is the base)."""
    from cscd.cache import newer as newer_mod
    cache = Cache(tmp_path / "cache", [FOLDER], NoServer())
    folder = _folder(cache)
    await cache.listings.merge(folder, [])
    node, entry = await _uploaded(cache, folder, b"doc", b"old", 7)
    await cache.listings.merge(folder, [_file(b"doc", 8, 3)])
    noted = cache.sync.newer_versions()[0][1]
    fetched = cache.sync.newer_fetch_path(node.id)
    fetched.write_bytes(b"new")
    with cache.core.txn(write=True) as txn:
        assert newer_mod.begin_swap(cache.core.index, txn, cache.core.node(node.id), noted)
    if renamed:
        os.rename(fetched, cache.core.store.path(node.id))
    cache.close()
    cache = Cache(tmp_path / "cache", [FOLDER], NoServer())
    try:
        assert await _read(cache, node.id) == (b"new" if renamed else b"old")
        assert cache.core.node(node.id).base_file_id == (8 if renamed else 7)
        assert [n.id for n, _ in cache.sync.newer_versions()] == ([] if renamed else [node.id])
        assert not fetched.exists()
    finally:
        cache.close()
    assert check_cache(tmp_path / "cache") == []


async def test_a_big_listing_is_merged_in_steps_the_loop_runs_between(cache, tmp_path):
    """A listing of a directory the cache knows is merged ``STEP`` entries per transaction
    with checkpoints between: another task (the mount's requests) runs during the merge.
    Merged at once, 20,000 entries held the loop for the whole merge (a change in a
    100,000-entry directory stopped every request for ~0.9 s). The result is the same."""
    import trio

    from cscd.cache.merge import STEP

    folder = _folder(cache)
    await cache.listings.merge(folder, [])
    n = 20 * STEP
    first = [_file(b"f%06d" % i, i + 1) for i in range(n)]
    await cache.listings.merge(folder, first)
    ticks = 0
    done = False

    async def other_requests() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await trio.lowlevel.checkpoint()

    # every other file changed on the server, a tenth of them gone, 500 new ones
    second = [_file(e.name, e.file_id, 20 if i % 2 else 10) for i, e in enumerate(first) if i % 10]
    second += [_file(b"g%06d" % i, n + i + 1) for i in range(500)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_requests)
        await trio.lowlevel.checkpoint()
        before = ticks
        assert await cache.listings.merge(folder, second)
        during = ticks - before
        done = True
    assert during >= n // STEP, f"the loop ran {during} times while {n:,} entries were merged"
    with cache.core.txn() as txn:
        names = {name for _, name in nodes.iter_children(cache.core.index, txn, folder)}
    assert names == {e.name for e in second}
    assert _problems(cache, tmp_path) == []


async def test_a_merge_cut_short_does_not_let_the_old_listing_be_skipped(cache, tmp_path):
    """A merge that stops half-way (sync changed the directory, or a crash) has applied part
    of the new listing: the digest of the last full listing no longer describes the directory,
    so that same listing coming back is merged again rather than skipped as unchanged. Here an
    empty directory (its digest: the empty listing) gets 3,000 new names, cut after the first
    1,000, and then the server is empty again."""
    from cscd.cache.merge import STEP, digest_of, merge_listing

    folder = _folder(cache)
    await cache.listings.merge(folder, [])
    new = [_file(b"f%06d" % i, i + 1) for i in range(3 * STEP)]
    asked = 0

    def current_once() -> bool:
        nonlocal asked
        asked += 1
        return asked == 1  # sync's change lands after the first step

    assert not await merge_listing(cache.core, folder, new, await digest_of(new), still_current=current_once)
    assert len(_children(cache, folder)) == STEP, "the cut-short merge was meant to apply one step"
    assert await cache.listings.merge(folder, [])
    assert _children(cache, folder) == []
    assert _problems(cache, tmp_path) == []


def _children(cache: Cache, dir_id: int) -> list[int]:
    with cache.core.txn() as txn:
        return [cid for cid, _ in nodes.iter_children(cache.core.index, txn, dir_id)]

"""Delta uploads: the plan (pure), ``upload_delta`` against the real smbd, and the mount.

Upstream-layer tests count exactly (``statistics()``: bytes written vs copied on the
server); mount tests count real wire bytes at the TCP proxy between daemon and smbd. The
server's file is checked on disk by hash. Data is pseudo-random from fixed seeds, so the
chunk boundaries are the same on every run. No mocks.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio

from cscd.names import UPLOAD_TEMP_PREFIX
from cscd.samba import EmbeddedSamba
from cscd.sync import chunker
from cscd.sync.delta import plan_delta, plan_full
from cscd.types import Credentials, UncTarget
from cscd.upstream.base import Conflict, Extent
from cscd.upstream.local import LocalUpstream
from cscd.upstream.smb import SmbUpstream
from tests.helpers.index_probe import node_state
from tests.helpers.mount_env import MountEnv
from tests.helpers.proxy import TcpProxy
from tests.helpers.wait import wait_for, wait_for_async

MiB = 1 << 20
BIG = 128 * MiB
BUDGET = 0.02  # wire bytes for an overwrite or a front insertion, as a share of the size


def rand(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 * MiB):
            h.update(block)
    return h.hexdigest()


# The five edits of the issue, each a function of the old content. The overwrite is 1/1024
# of the file: the 1 MiB in 1 GiB, scaled to the smaller files of the suite.
EDITS: dict[str, Callable[[bytes], bytes]] = {
    "overwrite-middle": lambda b: (
        b[: len(b) // 2] + rand(len(b) // 1024, 7) + b[len(b) // 2 + len(b) // 1024 :]
    ),
    "insert-front": lambda b: b"0123456789" + b,
    "append": lambda b: b + rand(3 * MiB + 17, 8),
    "truncate": lambda b: b[: len(b) * 2 // 3 + 12345],
    "rewrite": lambda b: rand(len(b) - 999, 9),
}
SMALL_EDITS = ("overwrite-middle", "insert-front")


# -- the plan (pure) ---------------------------------------------------------------------------


def test_plan_copies_unchanged_chunks_and_merges_runs(tmp_path: Path) -> None:
    old = rand(24 * MiB, 1)
    new = EDITS["overwrite-middle"](old)
    (tmp_path / "a").write_bytes(old)
    (tmp_path / "b").write_bytes(new)
    base, chunks = chunker.chunk_file(tmp_path / "a"), chunker.chunk_file(tmp_path / "b")
    plan = plan_delta(base, chunks, len(new))
    assert plan.bytes_copied + plan.bytes_written == len(new)
    assert plan.bytes_written < 5 * MiB
    assert len(plan.extents) == 3, "expected copy, write, copy"
    assert [e.source is None for e in plan.extents] == [False, True, False]
    rebuilt = b"".join(
        new[e.offset : e.offset + e.length] if e.source is None
        else old[e.source : e.source + e.length]
        for e in plan.extents
    )
    assert rebuilt == new


def test_plan_of_unrelated_content_writes_everything() -> None:
    base = [(0, 10, b"a" * 16)]
    plan = plan_delta(base, [(0, 10, b"b" * 16), (10, 5, b"c" * 16)], 15)
    assert plan.extents == (Extent(0, 15, None),)
    assert not plan.copies_anything
    assert plan_full(0).extents == ()
    with pytest.raises(ValueError):
        plan_delta(base, [(0, 10, b"b" * 16)], 11)


# -- upload_delta at the upstream layer (exact counts) --------------------------------------------


def smb_upstream(server: EmbeddedSamba, *path: str, port: int | None = None) -> SmbUpstream:
    return SmbUpstream(
        UncTarget(server.host, server.share, tuple(path)),
        Credentials(server.username, server.password),
        port=server.port if port is None else port,
    )


@pytest.fixture(params=["smb", "local"])
async def target(request: pytest.FixtureRequest, smbd: EmbeddedSamba,
                 tmp_path: Path) -> AsyncIterator[tuple[SmbUpstream | LocalUpstream, Path]]:
    if request.param == "smb":
        name = f"d-{uuid.uuid4().hex[:10]}"
        disk = smbd.share_dir / name
        disk.mkdir()
        up: SmbUpstream | LocalUpstream = smb_upstream(smbd, name)
    else:
        disk = tmp_path / "root"
        disk.mkdir()
        up = LocalUpstream(disk)
    await up.connect()
    try:
        yield up, disk
    finally:
        await up.close()


def local_fd(path: Path, data: bytes) -> int:
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


@pytest.mark.parametrize("edit", list(EDITS))
async def test_delta_upload_is_byte_identical(target, tmp_path: Path, edit: str) -> None:
    up, disk = target
    size = BIG if edit in SMALL_EDITS else 64 * MiB
    old = rand(size, 1)
    fd = local_fd(tmp_path / "old", old)
    base_entry = await up.upload(b"f.bin", fd, len(old), time.time_ns())
    os.close(fd)
    base = chunker.chunk_file(tmp_path / "old")
    new = EDITS[edit](old)
    fd = local_fd(tmp_path / "new", new)
    plan = plan_delta(base, chunker.chunk_file(tmp_path / "new"), len(new))
    before = up.statistics()
    entry = await up.upload_delta(b"f.bin", fd, len(new), time.time_ns(), plan=plan.extents,
                                  expected=base_entry)
    os.close(fd)
    after = up.statistics()
    written = after.bytes_written - before.bytes_written
    copied = after.bytes_copied - before.bytes_copied
    print(f"{edit}: {len(new)} bytes, written {written}, copied {copied}")
    assert file_sha(disk / "f.bin") == sha(new)
    assert entry.size == len(new)
    assert written == plan.bytes_written and copied == plan.bytes_copied
    if edit in SMALL_EDITS:
        assert written < BUDGET * len(new), f"{edit} sent {written} bytes"
    assert not [p for p in os.listdir(disk) if p.startswith(UPLOAD_TEMP_PREFIX)]


async def test_delta_upload_refuses_a_base_that_moved_on(target, tmp_path: Path) -> None:
    up, disk = target
    old = rand(8 * MiB, 1)
    fd = local_fd(tmp_path / "old", old)
    base_entry = await up.upload(b"f.bin", fd, len(old), time.time_ns())
    theirs = rand(8 * MiB, 2)
    (disk / "f.bin").write_bytes(theirs)  # someone else's version
    plan = plan_delta(chunker.chunk_file(tmp_path / "old"), chunker.chunk_file(tmp_path / "old"),
                      len(old))
    with pytest.raises(Conflict):
        await up.upload_delta(b"f.bin", fd, len(old), time.time_ns(), plan=plan.extents,
                              expected=base_entry)
    os.close(fd)
    assert file_sha(disk / "f.bin") == sha(theirs)
    assert not [p for p in os.listdir(disk) if p.startswith(UPLOAD_TEMP_PREFIX)]


async def test_change_during_delta_upload_is_a_conflict(smbd: EmbeddedSamba,
                                                        tmp_path: Path) -> None:
    """Another client replaces the file while the delta is being built: nothing is lost."""
    name = f"g-{uuid.uuid4().hex[:10]}"
    disk = smbd.share_dir / name
    disk.mkdir()
    with TcpProxy((smbd.host, smbd.port)) as proxy:
        up = smb_upstream(smbd, name, port=proxy.port)
        other = smb_upstream(smbd, name)  # straight to smbd, not through the proxy
        await up.connect()
        await other.connect()
        old = rand(32 * MiB, 1)
        fd = local_fd(tmp_path / "old", old)
        base_entry = await up.upload(b"f.bin", fd, len(old), time.time_ns())
        base = chunker.chunk_file(tmp_path / "old")
        new = EDITS["rewrite"](old)
        fd2 = local_fd(tmp_path / "new", new)
        plan = plan_delta(base, chunker.chunk_file(tmp_path / "new"), len(new))
        theirs = rand(5 * MiB, 3)
        fd3 = local_fd(tmp_path / "theirs", theirs)
        result: list[object] = []

        async def ours() -> None:
            try:
                await up.upload_delta(b"f.bin", fd2, len(new), time.time_ns(), plan=plan.extents,
                                      expected=base_entry)
                result.append("renamed")
            except Conflict as exc:
                result.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ours)
            await wait_for_async(
                lambda: any(p.startswith(UPLOAD_TEMP_PREFIX) for p in os.listdir(disk)), 10,
                "the delta upload never created its temporary")
            proxy.hang()  # our upload stalls half-way...
            try:
                await other.upload(b"f.bin", fd3, len(theirs), time.time_ns(), expected=base_entry)
            finally:
                proxy.unhang()  # ...and goes on after their version landed
        assert isinstance(result[0], Conflict)
        assert file_sha(disk / "f.bin") == sha(theirs)
        assert not [p for p in os.listdir(disk) if p.startswith(UPLOAD_TEMP_PREFIX)]
        for f in (fd, fd2, fd3):
            os.close(f)
        await up.close()
        await other.close()


def temp_size(disk: Path) -> int:
    return max((p.stat().st_size for p in disk.iterdir() if p.name.startswith(UPLOAD_TEMP_PREFIX)),
               default=0)


async def test_interrupted_upload_resumes(own_smbd: EmbeddedSamba, tmp_path: Path) -> None:
    disk = own_smbd.share_dir / "r"
    disk.mkdir()
    data = rand(BIG, 4)
    fd = local_fd(tmp_path / "big", data)
    with TcpProxy((own_smbd.host, own_smbd.port)) as proxy:
        up = smb_upstream(own_smbd, "r", port=proxy.port)
        await up.connect()
        failed: list[BaseException] = []

        async def first() -> None:
            try:
                await up.upload_delta(b"big.bin", fd, BIG, time.time_ns(),
                                      plan=plan_full(BIG).extents, expected=None, replace=False,
                                      resume_token="node-7-v3")
            except Exception as exc:  # noqa: BLE001 - asserted below
                failed.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            await wait_for_async(lambda: temp_size(disk) >= BIG // 2, 20,
                                 "the upload never got half-way")
            proxy.hang()
            done = temp_size(disk)
            own_smbd.kill()
            proxy.unhang()
        assert failed, "the upload finished although the server was killed"
        assert 0 < done < BIG
        own_smbd.start()
        before = up.statistics().bytes_written
        entry = await up.upload_delta(b"big.bin", fd, BIG, time.time_ns(),
                                      plan=plan_full(BIG).extents, expected=None, replace=False,
                                      resume_token="node-7-v3")
        sent = up.statistics().bytes_written - before
        print(f"killed at {done} of {BIG} bytes; the resumed upload sent {sent}")
        assert entry.size == BIG
        assert file_sha(disk / "big.bin") == sha(data)
        assert sent <= BIG - done + 32 * MiB, "the upload started over"
        assert not [p for p in os.listdir(disk) if p.startswith(UPLOAD_TEMP_PREFIX)]
        await up.close()
    os.close(fd)


# -- through the mount (wire bytes at the proxy) ---------------------------------------------------


@pytest.fixture
def env(mount_env) -> MountEnv:
    return mount_env()


def wait_synced(env: MountEnv, name: str, content_sha: str, timeout_s: float = 60) -> None:
    """Until the server holds ``content_sha`` and the node is clean with a chunk map."""
    wait_for(lambda: (env.server / name).exists() and file_sha(env.server / name) == content_sha,
             timeout_s, f"{name} did not reach the server", interval_s=0.2)

    def recorded() -> bool:
        st = node_state(env.daemon.cache, "Documents", name, sealer=env.check_sealer)
        return st is not None and not st.is_dirty and st.chunk_map is not None

    wait_for(recorded, 20, f"{name} has no chunk map after its upload")


def write_through_mount(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("edit", list(EDITS))
def test_edit_through_the_mount_uploads_a_delta(env: MountEnv, edit: str) -> None:
    size = BIG if edit in SMALL_EDITS else 64 * MiB
    old = rand(size, 1)
    write_through_mount(env.docs / "f.bin", old)
    wait_synced(env, "f.bin", sha(old))
    env.proxy.reset_counters()
    new = EDITS[edit](old)
    if edit == "overwrite-middle":
        with open(env.docs / "f.bin", "r+b") as f:
            f.seek(len(old) // 2)
            f.write(new[len(old) // 2 : len(old) // 2 + len(old) // 1024])
    elif edit == "truncate":
        os.truncate(env.docs / "f.bin", len(new))
    elif edit == "append":
        with open(env.docs / "f.bin", "ab") as f:
            f.write(new[len(old) :])
    else:
        write_through_mount(env.docs / "f.bin", new)
    wait_synced(env, "f.bin", sha(new))
    wire = env.proxy.bytes_to_server
    print(f"{edit} through the mount: {wire} bytes to the server for a {len(new)}-byte file")
    if edit in SMALL_EDITS:
        assert wire < BUDGET * len(new), f"{edit} sent {wire} bytes on the wire"
    assert not [p for p in os.listdir(env.server) if p.startswith(UPLOAD_TEMP_PREFIX)]


def test_downloaded_file_gets_a_chunk_map_and_later_a_delta(env: MountEnv) -> None:
    old = rand(BIG, 5)
    (env.server / "theirs.bin").write_bytes(old)
    assert file_sha(env.docs / "theirs.bin") == sha(old)  # a full download
    wait_for(lambda: (st := node_state(env.daemon.cache, "Documents", "theirs.bin", sealer=env.check_sealer))
             is not None and st.chunk_map is not None, 20, "no chunk map after the download")
    env.proxy.reset_counters()
    with open(env.docs / "theirs.bin", "r+b") as f:
        f.seek(BIG // 3)
        f.write(b"edited here")
    new = bytearray(old)
    new[BIG // 3 : BIG // 3 + 11] = b"edited here"
    wait_synced(env, "theirs.bin", sha(new))
    assert env.proxy.bytes_to_server < BUDGET * BIG


def test_rewrite_with_same_content_sends_only_the_time(env: MountEnv) -> None:
    data = rand(32 * MiB, 6)
    write_through_mount(env.docs / "same.bin", data)
    wait_synced(env, "same.bin", sha(data))
    env.proxy.reset_counters()
    write_through_mount(env.docs / "same.bin", data)
    mtime = os.stat(env.docs / "same.bin").st_mtime_ns
    wait_for(lambda: os.stat(env.server / "same.bin").st_mtime_ns // 100 == mtime // 100, 10,
             "the new write time did not reach the server")
    wait_synced(env, "same.bin", sha(data))
    assert env.proxy.bytes_to_server < 256 * 1024, "unchanged content was uploaded again"


@pytest.mark.log_allows(r"conflict: ")
def test_change_by_another_client_during_delta_keeps_both(env: MountEnv) -> None:
    old = rand(BIG, 1)
    write_through_mount(env.docs / "f.bin", old)
    wait_synced(env, "f.bin", sha(old))
    ours = EDITS["insert-front"](old)
    theirs = rand(3 * MiB, 11)
    write_through_mount(env.docs / "f.bin", ours)
    wait_for(lambda: any(p.startswith(UPLOAD_TEMP_PREFIX) for p in os.listdir(env.server)), 30,
             "the delta upload never started", interval_s=0.005)
    env.proxy.hang()
    try:
        (env.server / "f.bin").write_bytes(theirs)  # another writer, straight on the server
    finally:
        env.proxy.unhang()

    def both() -> bool:
        names = os.listdir(env.server)
        copies = [n for n in names if n.startswith("f (conflict ")]
        return (len(copies) == 1 and file_sha(env.server / "f.bin") == sha(theirs)
                and file_sha(env.server / copies[0]) == sha(ours))

    wait_for(both, 60, "both versions did not survive", interval_s=0.2)


@pytest.mark.log_allows(r"folder Documents is now offline: ")
def test_interrupted_upload_through_the_mount_resumes(own_smbd: EmbeddedSamba, mount_env) -> None:
    env = mount_env(server=own_smbd)
    data = rand(BIG, 12)
    write_through_mount(env.docs / "big.bin", data)
    wait_for(lambda: temp_size(env.server) >= BIG // 2, 30, "the upload never got half-way",
             interval_s=0.002)
    env.proxy.hang()
    done = temp_size(env.server)
    own_smbd.kill()
    env.proxy.unhang()
    assert done < BIG, "the upload finished before the server was killed"
    env.proxy.reset_counters()
    own_smbd.start()
    wait_synced(env, "big.bin", sha(data), timeout_s=60)
    wire = env.proxy.bytes_to_server
    print(f"killed at {done} of {BIG} bytes; after the restart {wire} bytes went to the server")
    assert wire < BIG - done + 40 * MiB, "the upload started over"
    assert not [p for p in os.listdir(env.server) if p.startswith(UPLOAD_TEMP_PREFIX)]

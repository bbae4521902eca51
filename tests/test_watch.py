"""``SmbUpstream.watch`` against the real private smbd: directory watches, hundreds at once.

What issue 16 needs of the upstream: a watch on one folder (no subtree) reports writes to the
files in it, which a tree watch on the root does not (FACTS.md); hundreds of watches wait on
one connection without a thread each; a watch never blocks this client's own rename of a
folder above it (Samba refuses that rename while a handle below is open on the same
connection) nor is opened below a folder while it is renamed; a folder deleted on the
server ends its watch; a reconnect after a hung link ends the session (and handles) the dead
link left on the server. The other client is a second
``SmbUpstream`` (its own connection) or smbd's disk directly. No mocks.
"""

from __future__ import annotations

import subprocess
import threading
import uuid
from pathlib import Path

import pytest
import smbclient
import trio

from cscd.errors import NotFound, UpstreamTimeout
from cscd.samba import EmbeddedSamba
from cscd.upstream.base import ChangeAction
from cscd.upstream.smb import SmbUpstream
from tests.helpers.proxy import TcpProxy
from tests.helpers.upstreams import smb_upstream


@pytest.fixture
def folder(smbd: EmbeddedSamba) -> tuple[str, Path]:
    name = f"w-{uuid.uuid4().hex[:12]}"
    disk = smbd.share_dir / name
    disk.mkdir()
    return name, disk


async def next_batch(changes, seconds: float = 5.0):
    with trio.fail_after(seconds):
        return await changes.__anext__()


async def test_a_folder_watch_reports_writes_to_its_files(smbd: EmbeddedSamba, folder) -> None:
    name, disk = folder
    (disk / "sub").mkdir()
    (disk / "sub" / "notes.txt").write_bytes(b"one")
    up = smb_upstream(smbd, name)
    smbclient.register_session(smbd.host, username=smbd.username, password=smbd.password, port=smbd.port)

    def write_in_place() -> None:  # another SMB client (smbprotocol's smbclient) writes
        unc = rf"\\{smbd.host}\{smbd.share}\{name}\sub\notes.txt"
        with smbclient.open_file(unc, mode="r+b", port=smbd.port) as f:
            f.write(b"two")

    try:
        async with up.watch(b"sub", tree=False) as changes:
            await trio.to_thread.run_sync(write_in_place)
            batch = await next_batch(changes)
            assert {c.path for c in batch} == {b"notes.txt"}
            (disk / "sub" / "made-on-disk").write_bytes(b"x")  # behind smbd's back
            names = set()
            while b"made-on-disk" not in names:
                names |= {c.path for c in await next_batch(changes)}
    finally:
        await up.close()
        smbclient.reset_connection_cache()


async def test_three_hundred_watches_take_no_thread_each(smbd: EmbeddedSamba, folder) -> None:
    name, disk = folder
    for i in range(300):
        (disk / f"d{i:03d}").mkdir()
    up, other = smb_upstream(smbd, name), smb_upstream(smbd, name)
    seen: set[int] = set()
    all_seen = trio.Event()
    wanted = set(range(0, 300, 7))
    try:
        await up.connect()
        threads_before = threading.active_count()
        async with trio.open_nursery() as nursery:
            armed = 0

            async def watch_one(i: int, task_status=trio.TASK_STATUS_IGNORED) -> None:
                nonlocal armed
                async with up.watch(f"d{i:03d}".encode(), tree=False) as changes:
                    armed += 1
                    task_status.started()
                    batch = await next_batch(changes, 20)
                    assert [c.path for c in batch] == [b"new"]
                    assert batch[0].action is ChangeAction.ADDED
                    seen.add(i)
                    if seen == wanted:
                        all_seen.set()

            for i in range(300):
                await nursery.start(watch_one, i)
            assert armed == 300
            # Waiting, the 300 watches hold no worker thread (a few may linger in trio's cache).
            assert threading.active_count() - threads_before < 20
            for i in sorted(wanted):
                await other.mkdir(f"d{i:03d}/new".encode())
            with trio.fail_after(20):
                await all_seen.wait()
            nursery.cancel_scope.cancel()
        assert seen == wanted
    finally:
        await up.close()
        await other.close()


async def test_renaming_a_folder_above_a_watch_closes_the_watch_first(smbd: EmbeddedSamba, folder) -> None:
    name, disk = folder
    (disk / "a" / "b").mkdir(parents=True)
    up = smb_upstream(smbd, name)
    ended = trio.Event()
    try:
        async with trio.open_nursery() as nursery:

            async def watch_b(task_status=trio.TASK_STATUS_IGNORED) -> None:
                async with up.watch(b"a/b", tree=False) as changes:
                    task_status.started()
                    async for _ in changes:
                        pass
                ended.set()

            await nursery.start(watch_b)
            entry = await up.rename(b"a", b"a2")  # Samba says ACCESS_DENIED with the watch open
            assert entry.is_dir and (disk / "a2" / "b").is_dir() and not (disk / "a").exists()
            with trio.fail_after(5):
                await ended.wait()
    finally:
        await up.close()


async def test_a_watched_folder_deleted_on_the_server_ends_the_watch(smbd: EmbeddedSamba, folder) -> None:
    name, disk = folder
    (disk / "gone").mkdir()
    up, other = smb_upstream(smbd, name), smb_upstream(smbd, name)
    try:
        async with up.watch(b"gone", tree=False) as changes:
            await other.delete(b"gone", is_dir=True)
            with trio.fail_after(5):
                async for _ in changes:
                    pass
        assert not (disk / "gone").exists()
        assert isinstance(up, SmbUpstream) and (await up.list_dir(b"")) == []
    finally:
        await up.close()
        await other.close()


async def test_a_watch_on_a_missing_directory_is_not_found_and_costs_nothing(smbd: EmbeddedSamba, folder) -> None:
    """The CHANGE_NOTIFY goes in one compound behind its CREATE; when the CREATE fails the
    notify fails with it, and its reply is collected: two hundred refused watches later the
    connection still has its credits and lists as before."""
    name, disk = folder
    (disk / "here").mkdir()
    up = smb_upstream(smbd, name)
    try:
        await up.connect()
        for _ in range(200):
            with pytest.raises(NotFound):
                async with up.watch(b"not-here", tree=False):
                    pass
        assert [e.name for e in await up.list_dir(b"")] == [b"here"]
        async with up.watch(b"here", tree=False):
            assert [e.name for e in await up.list_dir(b"here")] == []
    finally:
        await up.close()


async def test_a_rename_waits_for_watches_being_opened_below_it(smbd: EmbeddedSamba, folder) -> None:
    """Watches opened and closed over and over below a folder (the directory watches re-armed
    after a reconnect) while it is renamed: the rename still goes through."""
    name, disk = folder
    for i in range(16):
        (disk / "top" / f"d{i}").mkdir(parents=True)
    up = smb_upstream(smbd, name)
    opened = 0
    stop = trio.Event()

    async def churn(i: int) -> None:
        nonlocal opened
        while not stop.is_set():
            try:
                async with up.watch(f"top/d{i}".encode(), tree=False):
                    opened += 1
                    await trio.sleep(0.01)
            except NotFound:
                return  # renamed away under us: what a watch's owner sees too

    try:
        await up.connect()
        async with trio.open_nursery() as nursery:
            for i in range(16):
                nursery.start_soon(churn, i)
            await trio.sleep(0.5)
            before = opened
            entry = await up.rename(b"top", b"moved")
            stop.set()
        assert before > 16  # the watches really were coming and going
        assert entry.is_dir and (disk / "moved" / "d15").is_dir() and not (disk / "top").exists()
    finally:
        await up.close()


def _sessions(smbd: EmbeddedSamba) -> int:
    """Sessions smbd holds for 127.0.0.1, as ``smbstatus -b`` lists them."""
    out = subprocess.run(["smbstatus", "-s", str(smbd.conf_path), "-b"], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    return sum(1 for line in out.splitlines() if "(ipv4:127.0.0.1:" in line)


async def test_a_reconnect_ends_the_session_a_hung_link_left_on_the_server(own_smbd: EmbeddedSamba) -> None:
    """The link hangs with a watch open; the client gives up on it and logs on again by another
    path. Without PreviousSessionId the old session lives on in smbd with its handles for as
    long as the dead TCP connection does. (A server of its own: nobody else's sessions.)"""
    smbd = own_smbd
    (smbd.share_dir / "sub").mkdir()
    up = smb_upstream(smbd, timeout_s=2)
    with TcpProxy((smbd.host, smbd.port)) as proxy:
        up.port = proxy.port  # the first connection goes through the proxy
        try:
            before = _sessions(smbd)
            async with up.watch(b"sub", tree=False):
                assert _sessions(smbd) == before + 1 == 1
                proxy.hang()
                with pytest.raises(UpstreamTimeout):
                    await up.stat(b"sub")
                up.port = smbd.port  # the next one goes straight to smbd: the old one is stuck
                await up.stat(b"sub")
                for _ in range(100):  # up to 10 s for only the new session to be left
                    if _sessions(smbd) == before + 1:
                        break
                    await trio.sleep(0.1)
                assert _sessions(smbd) == before + 1
        finally:
            await up.close()

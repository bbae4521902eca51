r"""DFS namespaces (issue 17): a folder whose target is ``\\namespace\root\link\...`` is served
by the share its referral names, fails over to the next target when one dies, and bad
namespaces (loops, hostile or disallowed targets) are one clear error, never a hang.

Real parts: three smbd processes (``tests/helpers/dfs.py``): a namespace root with
``msdfs root = yes`` and two file servers serving one directory; the upstream and the daemon
are cscd's own, unchanged. Referral TTLs are Samba's (600 s), so expiry is driven by the
cache's clock, which the upstream takes as a parameter.
"""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest

from cscd.types import Credentials, SmbSecurity, UncTarget
from cscd.upstream.dfs import DfsError, Referral, ReferralCache
from cscd.upstream.smb import SmbUpstream
from tests.helpers.daemon import DaemonProcess, write_credentials
from tests.helpers.dfs import DOMAIN_HOST, TARGET_HOSTS, DfsNamespace
from tests.helpers.wait import eventually, wait_for


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def upstream(ns: DfsNamespace, path: str, *, referrals: ReferralCache | None = None,
             security: SmbSecurity = SmbSecurity(), timeout_s: float = 4.0) -> SmbUpstream:  # noqa: B008
    parts = tuple(p for p in path.split("\\") if p)
    return SmbUpstream(UncTarget("127.0.0.1", "dfs", parts), Credentials(ns.username, ns.password),
                       port=ns.port, security=security, timeout_s=timeout_s,
                       referrals=referrals if referrals is not None else ReferralCache())


def user_folder(ns: DfsNamespace, name: str = "alice") -> Path:
    folder = ns.data / name
    folder.mkdir()
    (folder / "report.txt").write_text("from the server")
    return folder


# -- the pure part: the referral cache --------------------------------------------------------


def test_referral_cache_keeps_a_referral_for_its_time_to_live_only() -> None:
    clock = FakeClock()
    cache = ReferralCache(clock=clock)
    targets = (UncTarget("fs1", "share"), UncTarget("fs2", "share"))
    cache.add(Referral(("ns", "dfs", "home"), targets, 300))
    assert cache.lookup(("NS", "dfs", "Home", "alice")) is not None, "paths compare without case"
    assert cache.lookup(("ns", "dfs", "other")) is None
    clock.now += 301
    assert cache.lookup(("ns", "dfs", "home", "alice")) is None, "an expired referral is asked again"
    assert cache.lookup(("ns", "dfs", "home", "alice"), stale_ok=True) is not None


def test_a_refreshed_referral_keeps_the_target_in_use() -> None:
    clock = FakeClock()
    cache = ReferralCache(clock=clock)
    targets = (UncTarget("fs1", "share"), UncTarget("fs2", "share"))
    first = Referral(("ns", "dfs", "home"), targets, 300)
    cache.add(first)
    first.prefer(targets[1])
    cache.add(Referral(("ns", "dfs", "home"), targets, 600))
    ref = cache.lookup(("ns", "dfs", "home"))
    assert ref is not None and list(ref.ordered()) == [targets[1], targets[0]]


# -- against real servers ----------------------------------------------------------------------


async def test_a_namespace_link_is_served_by_its_first_target(dfs_namespace: DfsNamespace) -> None:
    ns = dfs_namespace
    ns.add_home()
    user_folder(ns)
    up = upstream(ns, "home\\alice")
    try:
        await up.connect()
        assert up.serving == UncTarget(TARGET_HOSTS[0], "share", ("alice",))
        assert [e.name for e in await up.list_dir(b"")] == [b"report.txt"]
        await up.mkdir(b"made-through-the-namespace")
        assert (ns.data / "alice" / "made-through-the-namespace").is_dir()
    finally:
        await up.close()


async def test_a_domain_based_namespace_is_followed_from_the_root_referral(dfs_namespace: DfsNamespace) -> None:
    r"""\\domain\corp\home\alice: the domain's server has no share corp; asked for the root
    referral (\\domain\corp alone, [MS-DFSC] 3.1.4.1) it names the root \\127.0.0.1\dfs, whose
    link home names the file servers. Asking it about the whole path finds nothing (Samba, as
    a Windows DC, answers root referrals for the root alone)."""
    ns = dfs_namespace
    ns.add_home()
    user_folder(ns)
    ns.start_domain("corp")
    up = SmbUpstream(UncTarget(DOMAIN_HOST, "corp", ("home", "alice")), Credentials(ns.username, ns.password),
                     port=ns.port, timeout_s=4.0, referrals=ReferralCache())
    try:
        await up.connect()
        assert up.serving == UncTarget(TARGET_HOSTS[0], "share", ("alice",))
        assert [e.name for e in await up.list_dir(b"")] == [b"report.txt"]
        await up.mkdir(b"made-through-the-domain")
        assert (ns.data / "alice" / "made-through-the-domain").is_dir()
    finally:
        await up.close()


async def test_a_folder_of_the_root_share_itself_needs_no_link(dfs_namespace: DfsNamespace) -> None:
    ns = dfs_namespace
    (ns.root.share_dir / "plain").mkdir(parents=True)
    (ns.root.share_dir / "plain" / "in-root.txt").write_text("x")
    up = upstream(ns, "plain")
    try:
        await up.connect()
        assert up.serving == up.target
        assert [e.name for e in await up.list_dir(b"")] == [b"in-root.txt"]
    finally:
        await up.close()


async def test_a_dead_target_fails_over_to_the_next_without_an_error(dfs_namespace: DfsNamespace) -> None:
    ns = dfs_namespace
    ns.add_home()
    user_folder(ns)
    up = upstream(ns, "home\\alice")
    try:
        await up.connect()
        ns.targets[0].kill()
        started = time.monotonic()
        # The next call finds its connection dead, reconnects and lands on the second target.
        assert [e.name for e in await up.list_dir(b"")] == [b"report.txt"]
        assert time.monotonic() - started < 3, "a refused target is passed over at once"
        assert up.serving == UncTarget(TARGET_HOSTS[1], "share", ("alice",))
        await up.mkdir(b"after-failover")
        assert (ns.data / "alice" / "after-failover").is_dir()
    finally:
        await up.close()


async def test_a_hung_target_is_passed_over_within_the_timeout(dfs_namespace: DfsNamespace) -> None:
    ns = dfs_namespace
    ns.add_home()
    user_folder(ns)
    ns.targets[0].pause()
    up = upstream(ns, "home\\alice", timeout_s=2.0)
    try:
        started = time.monotonic()
        await up.connect()
        assert time.monotonic() - started < 8, "one timeout for the hung target, then the next"
        assert up.serving.server == TARGET_HOSTS[1]
    finally:
        ns.targets[0].resume()
        await up.close()


async def test_every_target_down_names_each_of_them(dfs_namespace: DfsNamespace) -> None:
    ns = dfs_namespace
    ns.add_home()
    user_folder(ns)
    for t in ns.targets:
        t.kill()
    up = upstream(ns, "home\\alice")
    with pytest.raises(Exception, match=r"none of the 2 targets of \\\\127\.0\.0\.1\\dfs\\home answers") as info:
        await up.connect()
    assert all(h in str(info.value) for h in TARGET_HOSTS)
    assert info.value.errno == errno.EHOSTDOWN  # offline to sync, not a per-file error


async def test_an_expired_referral_is_asked_again(dfs_namespace: DfsNamespace) -> None:
    ns = dfs_namespace
    ns.add_home()
    user_folder(ns)
    clock = FakeClock()
    cache = ReferralCache(clock=clock)
    first = upstream(ns, "home\\alice", referrals=cache)
    await first.connect()
    await first.close()
    # The admin points the link at the second server only.
    os.unlink(ns.root.share_dir / "home")
    ns.add_link("home", f"{TARGET_HOSTS[1]}\\share")
    again = upstream(ns, "home\\alice", referrals=cache)
    try:
        await again.connect()
        assert again.serving.server == TARGET_HOSTS[0], "within its time to live the referral is kept"
        await again.close()
        clock.now += 601  # Samba's referrals live 600 s
        await again.connect()
        assert again.serving.server == TARGET_HOSTS[1], "past it the namespace server is asked again"
    finally:
        await again.close()


async def test_an_expired_referral_still_serves_when_the_namespace_server_is_gone(
        dfs_namespace: DfsNamespace) -> None:
    ns = dfs_namespace
    ns.add_home()
    user_folder(ns)
    clock = FakeClock()
    cache = ReferralCache(clock=clock)
    up = upstream(ns, "home\\alice", referrals=cache)
    try:
        await up.connect()
        await up.close()
        ns.root.kill()
        clock.now += 601
        await up.connect()
        assert [e.name for e in await up.list_dir(b"")] == [b"report.txt"]
    finally:
        await up.close()


async def test_a_referral_loop_is_one_clear_error_not_a_hang(dfs_namespace: DfsNamespace) -> None:
    ns = dfs_namespace
    ns.add_link("a", "127.0.0.1\\dfs\\b")
    ns.add_link("b", "127.0.0.1\\dfs\\a")
    up = upstream(ns, "a\\alice")
    started = time.monotonic()
    with pytest.raises(DfsError, match=r"DFS referral loop: .*\\a\\alice → .*\\b\\alice → .*\\a\\alice"):
        await up.connect()
    assert time.monotonic() - started < 5


async def test_a_referral_to_a_hostile_server_name_is_refused(dfs_namespace: DfsNamespace) -> None:
    ns = dfs_namespace
    ns.add_link("evil", "evil..host\\share")
    up = upstream(ns, "evil\\alice")
    with pytest.raises(DfsError, match=r"names no usable target: 'evil\.\.host' cannot be a server name"):
        await up.connect()


async def test_the_policy_keeps_referrals_to_its_dfs_servers(dfs_namespace: DfsNamespace) -> None:
    ns = dfs_namespace
    ns.add_home()
    user_folder(ns)
    only_second = SmbSecurity(dfs_servers=(TARGET_HOSTS[1],))
    up = upstream(ns, "home\\alice", security=only_second)
    try:
        await up.connect()
        assert up.serving.server == TARGET_HOSTS[1], "the first target is outside the allowed servers"
    finally:
        await up.close()
    nowhere = SmbSecurity(dfs_servers=("*.corp.example",))
    with pytest.raises(DfsError, match=r"127\.0\.0\.2 is not among the DFS servers the security policy allows"):
        await upstream(ns, "home\\alice", security=nowhere).connect()


# -- the daemon, end to end --------------------------------------------------------------------


def test_the_mount_stays_online_and_uploads_go_on_after_a_target_dies(
        dfs_namespace: DfsNamespace, tmp_path: Path) -> None:
    ns = dfs_namespace
    ns.add_home()
    (ns.data / "alice" / "Documents").mkdir(parents=True)
    (ns.data / "alice" / "Documents" / "old.txt").write_text("on the server before")
    creds = write_credentials(tmp_path / "credentials", ns.username, ns.password)
    daemon = DaemonProcess(tmp_path / "client", folders={"Documents": ns.unc("home\\alice\\Documents")},
                           credentials=creds, port=ns.port,
                           extra={"timings": {"request_timeout_s": 3, "probe_interval_s": 0.5,
                                              "upload_delay_s": 0.1, "reconnect_max_s": 1}})
    with daemon:
        daemon.start()
        docs = daemon.mount / "Documents"
        assert (docs / "old.txt").read_text() == "on the server before"
        (docs / "first.txt").write_text("before the failover")
        eventually(lambda: (ns.data / "alice/Documents/first.txt").read_text() == "before the failover", 15,
                   "first.txt reaches the server through the first target")
        status = json.loads(daemon.run_cli("status", "--json").stdout)["folders"]["Documents"]
        assert status["served_by"] == f"\\\\{TARGET_HOSTS[0]}\\share\\alice\\Documents"
        assert "served by  \\\\127.0.0.2\\share\\alice\\Documents (DFS)" in daemon.run_cli("status").stdout

        ns.targets[0].kill()
        (docs / "second.txt").write_text("after the failover")
        eventually(lambda: (ns.data / "alice/Documents/second.txt").read_text() == "after the failover", 20,
                   "second.txt reaches the server through the second target")

        def served_by_second() -> bool:
            folder = json.loads(daemon.run_cli("status", "--json").stdout)["folders"]["Documents"]
            return folder["mode"] == "online" and folder["served_by"].startswith(f"\\\\{TARGET_HOSTS[1]}\\")
        wait_for(served_by_second, 10, "online, served by the second target")
        assert not [n for n in os.listdir(ns.data / "alice/Documents") if "conflict" in n]
        assert "to offline" not in daemon.log_text(), "the folder never went offline"

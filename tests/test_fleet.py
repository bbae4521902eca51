"""Fleet scale (issue 16): an idle client costs the server almost nothing, and schedules spread.

The request counts are NetBIOS frames from the daemon to smbd, counted by the test proxy
(``TcpProxy.frames_to_server``): one SMB request or compound, signed or encrypted, is one.
The daemon runs with the default behaviour, its intervals shortened in proportion (an idle
probe and a revalidation every 2.5 s instead of every 60 s), so a 10 s window stands for four
minutes of the defaults; ``bench/`` measures the defaults themselves. The schedules are the
real ``next_background_s`` and ``UploadSchedule`` with fresh random generators, as 100
machines would draw them.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import subprocess
import time

import pytest
import smbclient

from cscd.profile.schedule import UploadSchedule
from cscd.profile.settings import ProfileSettings
from cscd.samba import EmbeddedSamba
from cscd.sync.engine import next_background_s
from cscd.types import OfflinePolicy
from tests.helpers.mount_env import MountEnv
from tests.helpers.wait import wait_for

#: The defaults of an idle client, shortened 24-fold (``Timings``: 60 s each).
SCALED = {"probe_interval_s": 1, "idle_probe_s": 2.5, "revalidate_interval_s": 2.5, "scan_interval_s": 3,
          "poll_max_s": 300}
WINDOW_S = 7.5


def change_tracking(env: MountEnv) -> dict:
    return json.loads(env.daemon.run_cli("status", "--json").stdout)["folders"]["Documents"]["changes"]


def frames_over(env: MountEnv, seconds: float) -> int:
    env.proxy.reset_counters()
    time.sleep(seconds)
    return env.proxy.frames_to_server


def another_client_writes(smbd: EmbeddedSamba, env: MountEnv, path: str, data: bytes) -> None:
    """Overwrite the start of ``Documents\\path`` in place from another SMB client."""
    smbclient.register_session(smbd.host, username=smbd.username, password=smbd.password, port=smbd.port)
    try:
        unc = rf"\\{smbd.host}\{smbd.share}\{env.user_dir}\Documents\{path}"
        with smbclient.open_file(unc, mode="r+b", port=smbd.port) as f:
            f.write(data)
    finally:
        smbclient.reset_connection_cache()


@pytest.fixture
def fifty_dirs(mount_env) -> MountEnv:
    env = mount_env(start=False, timings=SCALED)
    for i in range(50):
        (env.server / f"d{i:02d}").mkdir()
        (env.server / f"d{i:02d}" / "notes.txt").write_text(f"note {i}")
    env.start_daemon()
    return env


def test_an_idle_client_that_used_fifty_directories_is_almost_silent(fifty_dirs: MountEnv,
                                                                     smbd: EmbeddedSamba) -> None:
    env = fifty_dirs
    for i in range(50):  # a user (or a file manager) looks into every directory
        assert (env.docs / f"d{i:02d}" / "notes.txt").read_text() == f"note {i}"
    wait_for(lambda: change_tracking(env)["directory_watches"] == 50, 20,
             "the fifty used directories do not all get a watch")
    wait_for(lambda: frames_over(env, 2.0) == 0, 30, "the client does not settle to silence")
    frames = frames_over(env, WINDOW_S)
    # At most one revalidation listing (one frame) per 2.5 s, and no echo: the listings are traffic.
    # Before issue 16 this was ~20 probes and ~1,000 rescans in the same window.
    assert frames <= WINDOW_S / SCALED["revalidate_interval_s"] + 1, f"{frames} frames in {WINDOW_S:g} s"
    print(f"idle client, 50 directories used: {frames} frames in {WINDOW_S:g} s "
          f"({frames * 60 / WINDOW_S * SCALED['revalidate_interval_s'] / 60:.1f} a minute at the defaults)")

    # Idle does not mean blind: another client's write in place shows up within 2 s.
    another_client_writes(smbd, env, r"d17\notes.txt", b"NOTE")
    t0 = time.monotonic()
    wait_for(lambda: (env.docs / "d17" / "notes.txt").read_text() == "NOTE 17", 2,
             "another client's write was not seen within 2 s", interval_s=0.02)
    print(f"another client's write seen after {time.monotonic() - t0:.3f} s")


def test_more_used_directories_than_watches_stays_quiet(mount_env) -> None:
    """Forty directories used, eight watches: the eight most recently used keep theirs, and the
    rest are left to the slow revalidation, not swapped in and out (once 45,000 requests a
    minute with 5,000 directories used)."""
    env = mount_env(start=False, timings=SCALED, extra={"directory_watches": 8})
    for i in range(40):
        (env.server / f"d{i:02d}").mkdir()
    env.start_daemon()
    for i in range(40):
        os.listdir(env.docs / f"d{i:02d}")
    wait_for(lambda: change_tracking(env)["directory_watches"] == 8, 20, "eight directories are not watched")
    wait_for(lambda: frames_over(env, 2.0) <= 1, 30, "the client does not settle")
    frames = frames_over(env, WINDOW_S)
    assert frames <= WINDOW_S / SCALED["revalidate_interval_s"] + 1, f"{frames} frames in {WINDOW_S:g} s"
    assert change_tracking(env)["directory_watches"] == 8


def test_walking_more_directories_than_watches_again_and_again_stays_quiet(mount_env) -> None:
    """``du`` or ``grep -r`` over 40 directories in a loop, with eight watches: the watches
    stay where they are instead of following the walk. Each tick used to close the eight,
    open eight others and list each of those (about 30 requests a second while walking; the
    walk itself, all cached, needs none)."""
    env = mount_env(start=False, timings=SCALED, extra={"directory_watches": 8})
    for i in range(40):
        (env.server / f"d{i:02d}").mkdir()
        (env.server / f"d{i:02d}" / "notes.txt").write_text(f"note {i}")
    env.start_daemon()
    walk = ["grep", "-r", "nothing-matches-this", str(env.docs)]
    assert subprocess.run(walk, capture_output=True).returncode == 1  # read all, found nothing
    wait_for(lambda: change_tracking(env)["directory_watches"] == 8, 20, "eight directories are not watched")
    wait_for(lambda: frames_over(env, 2.0) <= 1, 30, "the client does not settle")
    env.proxy.reset_counters()
    walks = 0
    until = time.monotonic() + WINDOW_S
    while time.monotonic() < until:
        assert subprocess.run(walk, capture_output=True).returncode == 1
        walks += 1
    frames = env.proxy.frames_to_server
    assert walks >= 10, f"only {walks} walks in {WINDOW_S:g} s"
    assert frames <= WINDOW_S / SCALED["revalidate_interval_s"] + 1, f"{frames} frames in {WINDOW_S:g} s, {walks} walks"
    assert change_tracking(env)["directory_watches"] == 8


def test_an_idle_client_of_a_silent_server_sends_one_echo_per_interval(mount_env) -> None:
    """Nothing listed but the folder itself, which the tree watch covers: only echoes."""
    env = mount_env(timings=SCALED)
    assert os.listdir(env.docs) == []
    wait_for(lambda: change_tracking(env)["mode"] == "notify", 10, "the folder is not watched")
    wait_for(lambda: frames_over(env, 2.0) == 0, 30, "the client does not settle to silence")
    frames = frames_over(env, WINDOW_S)
    assert 1 <= frames <= WINDOW_S / SCALED["idle_probe_s"] + 1, f"{frames} frames in {WINDOW_S:g} s"
    assert env.daemon.is_running()


def dirs_scanned(env: MountEnv) -> int:
    stats = json.loads(env.daemon.run_cli("stats", "--json").stdout)
    return int(sum(s["value"] for f in stats["metrics"] if f["name"] == "dirs_scanned_total" for s in f["samples"]))


# A reconnect attempt may land while the proxy refuses connections (between stop_listening and
# resume_listening): the folder then goes offline for a probe interval, which is right and
# changes nothing asserted here (seen once in three runs: the test failed on that warning).
@pytest.mark.log_allows(r"folder Documents is now offline: cannot reach 127\.0\.0\.1 .*Connection refused")
def test_after_a_lost_link_the_catch_up_lists_only_what_changed(mount_env) -> None:
    """Thirty listed directories; the connection is reset and a file appears in one of them
    meanwhile. The catch-up re-lists the folder top and that one directory (its change time
    moved), not all thirty. Directory watches are off, so only the catch-up lists anything."""
    env = mount_env(start=False, timings={**SCALED, "revalidate_interval_s": 600},
                    extra={"directory_watches": 0})
    for i in range(30):
        (env.server / f"d{i:02d}").mkdir()
    env.start_daemon()
    wait_for(lambda: change_tracking(env)["mode"] == "notify", 10, "the folder is not watched")
    for i in range(30):
        assert os.listdir(env.docs / f"d{i:02d}") == []
    wait_for(lambda: frames_over(env, 2.0) == 0, 30, "the client does not settle to silence")
    # After a restart nothing is known of change times: the first catch-up listed everything.
    before = dirs_scanned(env)
    env.proxy.stop_listening()
    env.proxy.reset()
    (env.server / "d07" / "while-away.txt").write_text("made while the link was down")
    env.proxy.resume_listening()
    wait_for(lambda: "while-away.txt" in os.listdir(env.docs / "d07"), 15, "the catch-up missed the change")
    wait_for(lambda: frames_over(env, 2.0) == 0, 30, "the client does not settle to silence")
    listed = dirs_scanned(env) - before
    assert 2 <= listed <= 4, f"the catch-up listed {listed} directories"


def test_without_notifications_polling_backs_off(quiet_smbd: EmbeddedSamba, mount_env) -> None:
    """Polled every 0.5 s at first, doubling to 4 s while nothing changes: over 12 s a used
    directory costs 5 or 6 listings instead of 24, and a change still shows up."""
    env = mount_env(server=quiet_smbd, start=False,
                    timings={"scan_interval_s": 0.5, "poll_max_s": 4, "revalidate_interval_s": 600,
                             "idle_probe_s": 600, "probe_interval_s": 1})
    (env.server / "sub").mkdir()
    env.start_daemon()
    wait_for(lambda: change_tracking(env)["mode"] == "polling", 10, "the folder is not polled")
    assert os.listdir(env.docs / "sub") == []  # the folder top and sub are used, once
    frames = frames_over(env, 12.0)
    # two polled directories, 0.5 + 1 + 2 + 4 + 4 s: at most 6 listings each (one frame each)
    assert frames <= 2 * 6, f"{frames} frames in 12 s"
    assert change_tracking(env)["polled_directories"] == 2
    (env.server / "sub" / "late.txt").write_text("found by polling")
    os.listdir(env.docs / "sub")  # used again: the period starts from the bottom
    wait_for(lambda: "late.txt" in os.listdir(env.docs / "sub"), 3, "polling did not find the change")


def test_a_first_listing_comes_after_its_watch_and_is_the_only_one(mount_env, smbd: EmbeddedSamba) -> None:
    """A directory listed for the first time gets its own watch before the listing, so the
    watch needs no re-listing of its own: 2,000 entries go over the wire once (they went
    twice, the second time while the first listing was still being served). The watch that
    came first still sees another client's write in place."""
    env = mount_env(start=False, timings=SCALED)
    (env.server / "big").mkdir()
    for i in range(2000):
        (env.server / "big" / f"f{i:04d}.txt").write_text(f"entry {i}")
    env.start_daemon()
    wait_for(lambda: change_tracking(env)["mode"] == "notify", 10, "the folder is not watched")
    wait_for(lambda: frames_over(env, 1.0) == 0, 30, "the client does not settle to silence")
    before = dirs_scanned(env)
    assert len(os.listdir(env.docs / "big")) == 2000
    assert change_tracking(env)["directory_watches"] == 1, "the watch is not up when the listing ends"
    wait_for(lambda: frames_over(env, 1.5) == 0, 30, "the client does not settle to silence")
    assert dirs_scanned(env) == before, "the directory was listed again after its first listing"

    another_client_writes(smbd, env, r"big\f0007.txt", b"ENTRY")
    wait_for(lambda: (env.docs / "big" / "f0007.txt").read_text() == "ENTRY 7", 3,
             "another client's write in the listed directory was not seen")


def _spread(delays: list[float], start: float, width: float) -> list[int]:
    bins = [0] * 10
    for d in delays:
        assert start <= d <= start + width
        bins[min(9, int((d - start) / width * 10))] += 1
    return bins


def test_a_hundred_background_schedules_spread_over_the_offset_window() -> None:
    policy = OfflinePolicy()
    delays = [next_background_s(policy, random.Random()) for _ in range(100)]
    bins = _spread(delays, policy.background_sync_interval_s, policy.background_sync_max_offset_s)
    # uniform over an hour: ~10 per 6-minute bin; 30 in one bin or three empty bins would be
    # a fleet syncing together (odds for a fair draw: below one in a million)
    assert max(bins) < 30 and sum(1 for b in bins if b == 0) < 3, bins


def test_a_hundred_profile_uploads_at_a_time_of_day_spread_too() -> None:
    settings = ProfileSettings(upload_time_of_day=datetime.time(2, 0))
    now = datetime.datetime(2026, 12, 3, 18, 0, tzinfo=datetime.UTC)
    delays = [UploadSchedule(settings, random.Random()).next_delay_s(now) for _ in range(100)]
    bins = _spread(delays, 8 * 3600.0, settings.upload_max_offset_s)
    assert max(bins) < 30 and sum(1 for b in bins if b == 0) < 3, bins

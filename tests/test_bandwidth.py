"""The upload cap: a token bucket (pure) and SmbUpstream uploads held to it on a real smbd,
whole and resumable; and uploads that make way for the mount's requests (ForegroundClock)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from cscd.policy.unc import parse_unc
from cscd.types import Credentials, OfflinePolicy
from cscd.upstream.base import Extent
from cscd.upstream.foreground import QUIET_S, YIELD_MAX_S, ForegroundClock, wait_for_a_pause
from cscd.upstream.ratelimit import RateLimit
from cscd.upstream.smb import SmbUpstream
from tests.helpers.wait import eventually

MiB = 1 << 20


def test_bucket_allows_a_burst_then_paces():
    now = [0.0]
    slept = []
    limit = RateLimit(1000, clock=lambda: now[0], sleep=lambda s: (slept.append(s), now.__setitem__(0, now[0] + s)))
    limit.take(0)
    assert limit.delay_for(0) == 0.0
    now[0] += 1.0  # a second of credit = the burst
    limit.take(1000)
    assert slept == []
    limit.take(500)
    assert abs(sum(slept) - 0.5) < 1e-9
    limit.set(None)
    assert limit.delay_for(10**9) == 0.0


def test_policy_caps():
    assert OfflinePolicy().upload_rate(slow=False) is None
    assert OfflinePolicy().upload_rate(slow=True) == 1024 * 1024
    assert OfflinePolicy(upload_cap_kibps=256).upload_rate(slow=True) == 256 * 1024
    assert OfflinePolicy(upload_cap_kibps=256, slow_link_upload_kibps=0).upload_rate(slow=False) == 256 * 1024


@pytest.mark.parametrize("how", ["whole", "resumable"])
async def test_capped_upload_takes_at_least_size_over_rate(smbd, tmp_path, how):
    # "resumable" is how sync sends a file of 16 MiB and more (upload.RESUME_MIN_BYTES): a
    # delta upload whose plan is all writes. It ignored the cap until 2026-12-06.
    (smbd.share_dir / "cap").mkdir(exist_ok=True)
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(6 * MiB))
    up = SmbUpstream(parse_unc(smbd.unc("cap")), Credentials(smbd.username, smbd.password), port=smbd.port)
    await up.connect()
    try:
        up.set_upload_rate(2 * MiB)
        fd = os.open(src, os.O_RDONLY)
        t0 = time.monotonic()
        try:
            if how == "whole":
                entry = await up.upload(b"capped.bin", fd, 6 * MiB, time.time_ns())
            else:
                entry = await up.upload_delta(b"capped.bin", fd, 6 * MiB, time.time_ns(),
                                              plan=[Extent(0, 6 * MiB)], expected=None, resume_token="t")
        finally:
            os.close(fd)
        took = time.monotonic() - t0
        assert entry.size == 6 * MiB
        # a one-second burst, then 2 MiB/s: at least (6 - 2) / 2 = 2 s
        assert took >= 1.9, f"6 MiB at 2 MiB/s took only {took:.2f} s"
        assert (smbd.share_dir / "cap" / "capped.bin").read_bytes() == src.read_bytes()
        up.set_upload_rate(None)
        fd = os.open(src, os.O_RDONLY)
        t0 = time.monotonic()
        try:
            await up.upload(b"free.bin", fd, 6 * MiB, time.time_ns())
        finally:
            os.close(fd)
        assert time.monotonic() - t0 < took
    finally:
        await up.close()


#: the FUSE loop's side: stamps the clock every millisecond until its stdin closes
STAMPER = """
import select, sys
from pathlib import Path
from cscd.upstream.foreground import ForegroundClock
clock = ForegroundClock.create(Path(sys.argv[1]))
clock.stamp()
print("ready", flush=True)
while not select.select([sys.stdin], [], [], 0.001)[0]:
    clock.stamp()
"""


def test_a_worker_makes_way_while_the_mount_serves_and_never_waits_long(tmp_path):
    # The daemon's side stamps in another process, as the FUSE loop does at each request;
    # this process reads the clock as an upload worker does, through its RateLimit.
    stamper = subprocess.Popen(
        [sys.executable, "-c", STAMPER, str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    slept: list[float] = []
    bucket = RateLimit(None, sleep=slept.append)
    try:
        assert stamper.stdout.readline().strip() == "ready"
        bucket.foreground = ForegroundClock.follow(str(tmp_path / "foreground.clock"))
        assert bucket.foreground is not None
        waits: list[float] = []

        def one_write_waits() -> bool:
            slept.clear()
            bucket.take(MiB)
            waits.append(sum(slept))
            return waits[-1] > 0

        # the stamper may miss a millisecond on a loaded machine: try until a write waits
        eventually(one_write_waits, 10, "a busy mount was not seen")
        assert max(waits) <= YIELD_MAX_S + 1e-9, waits
    finally:
        stamper.stdin.close()
        stamper.wait(10)
    eventually(lambda: bucket.foreground.busy_for() == 0, 10, "the mount never went quiet")
    slept.clear()
    bucket.take(MiB)
    assert slept == [], "waited for a mount that is quiet"
    assert ForegroundClock.follow(str(tmp_path / "missing")) is None


class _AlwaysBusy:
    """A mount that never pauses."""

    def busy_for(self) -> float:
        return QUIET_S


async def test_a_push_round_waits_for_a_pause_of_the_mount_but_not_forever(tmp_path, autojump_clock):
    quiet = ForegroundClock.create(tmp_path)  # never stamped: the mount is idle
    assert await wait_for_a_pause(quiet, 2.0) == 0
    waited = await wait_for_a_pause(_AlwaysBusy(), 2.0)
    assert waited == pytest.approx(2.0, abs=1e-6)

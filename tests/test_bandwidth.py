"""The upload cap: a token bucket (pure) and SmbUpstream uploads held to it on a real smbd."""

from __future__ import annotations

import os
import time

from cscd.policy.unc import parse_unc
from cscd.types import Credentials, OfflinePolicy
from cscd.upstream.ratelimit import RateLimit
from cscd.upstream.smb import SmbUpstream

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


async def test_capped_upload_takes_at_least_size_over_rate(smbd, tmp_path):
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
            entry = await up.upload(b"capped.bin", fd, 6 * MiB, time.time_ns())
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

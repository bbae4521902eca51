"""The daemon's full garbage collections wait for a pause of the mount (``cscd.operations.garbage``).

A real ``ForegroundClock`` (the mapped file the FUSE handlers stamp), stamped every 10 ms as a
busy mount would; the full collections are seen through ``gc.callbacks``. The task's intervals
are shortened; automatic full collections are off in this process meanwhile, as in the daemon.
"""

from __future__ import annotations

import gc
import time

import pytest
import trio

from cscd.operations import garbage
from cscd.upstream.foreground import ForegroundClock


@pytest.fixture
def full_collections(monkeypatch):
    """Times (monotonic) of the full collections while the test runs."""
    seen: list[float] = []

    def callback(phase: str, info: dict) -> None:
        if phase == "stop" and info["generation"] == 2:
            seen.append(time.monotonic())

    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], thresholds[1], garbage.NEVER)
    gc.callbacks.append(callback)
    monkeypatch.setattr(garbage, "FULL_EVERY_S", 0.1)
    try:
        yield seen
    finally:
        gc.callbacks.remove(callback)
        gc.set_threshold(*thresholds)


async def _busy(clock: ForegroundClock, seconds: float) -> None:
    until = trio.current_time() + seconds
    while trio.current_time() < until:
        clock.stamp()
        await trio.sleep(0.01)


async def test_a_full_collection_waits_for_a_pause_of_the_mount(tmp_path, full_collections) -> None:
    clock = ForegroundClock.create(tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(garbage.collect_in_pauses, clock)
        await _busy(clock, 1.5)
        assert full_collections == [], "a full collection ran while the mount was busy"
        quiet_from = time.monotonic()
        await trio.sleep(garbage.PAUSE_S + 3 * garbage.LOOK_S)
        assert full_collections, "no full collection in a pause of the mount"
        assert full_collections[0] - quiet_from >= garbage.PAUSE_S - 0.05
        nursery.cancel_scope.cancel()


async def test_a_mount_that_never_pauses_still_gets_a_full_collection(tmp_path, full_collections,
                                                                       monkeypatch) -> None:
    monkeypatch.setattr(garbage, "FULL_LATEST_S", 0.8)
    clock = ForegroundClock.create(tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(garbage.collect_in_pauses, clock)
        started = time.monotonic()
        await _busy(clock, 2.0)
        assert full_collections, "no full collection in 2 s although 0.8 s is the latest"
        assert full_collections[0] - started >= 0.75
        nursery.cancel_scope.cancel()


def test_after_settling_no_full_collection_starts_by_itself() -> None:
    thresholds = gc.get_threshold()
    try:
        garbage.settle()
        assert gc.get_threshold() == (garbage.YOUNG_THRESHOLD, garbage.MIDDLE_THRESHOLD, garbage.NEVER)
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)

"""Pacing of the recent-directory rescans (``cscd.sync.scan.rescan_due``): pure, no server."""

from __future__ import annotations

from cscd.sync.scan import RECENT_COST_SHARE, rescan_due


def test_a_cheap_directory_is_due_at_every_tick() -> None:
    # 30 ms to list (1,000 entries): due again after 0.6 s, so every 3 s tick re-lists it.
    assert rescan_due(now=13.0, ended=10.0, took_s=0.03)


def test_an_expensive_directory_waits_in_proportion_to_its_cost() -> None:
    # 3 s to list (100,000 entries): at most 1/20 of the time, so once a minute.
    took = 3.0
    assert RECENT_COST_SHARE == 0.05
    assert not rescan_due(now=10.0 + 3.0, ended=10.0, took_s=took)
    assert not rescan_due(now=10.0 + 59.9, ended=10.0, took_s=took)
    assert rescan_due(now=10.0 + 60.0, ended=10.0, took_s=took)

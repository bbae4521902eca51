"""The pure parts of the link monitor: hysteresis and the mode decision."""

from cscd.link import SlowLinkDetector, decide_mode
from cscd.types import Mode, OfflinePolicy


def test_one_slow_sample_does_not_flip():
    d = SlowLinkDetector(35, 3)
    for rtt in (0.002, 0.002, 0.5, 0.002, 0.4, 0.003):
        assert d.add(rtt) is False


def test_load_spikes_on_a_fast_link_stay_online():
    d = SlowLinkDetector(35, 3)
    for rtt in (0.2, 0.3, 0.001, 0.25, 0.4, 0.002, 0.3):
        assert d.add(rtt) is False


def test_a_long_link_enters_and_leaves_slow():
    d = SlowLinkDetector(35, 3)
    states = [d.add(rtt) for rtt in (0.16, 0.17, 0.165, 0.16)]
    assert states == [False, False, True, True]
    states = [d.add(rtt) for rtt in (0.002, 0.15, 0.16)]
    assert states == [False, False, False]


def test_mode_precedence():
    p = OfflinePolicy()
    assert decide_mode(reachable=True, slow=False, working_offline=True, metered=True, policy=p)[0] \
        is Mode.WORKING_OFFLINE
    assert decide_mode(reachable=False, slow=True, working_offline=False, metered=True, policy=p)[0] is Mode.OFFLINE
    assert decide_mode(reachable=True, slow=True, working_offline=False, metered=True, policy=p)[0] is Mode.METERED
    override = OfflinePolicy(sync_on_metered=True)
    assert decide_mode(reachable=True, slow=True, working_offline=False, metered=True, policy=override)[0] \
        is Mode.SLOW_LINK
    always = OfflinePolicy(always_offline=True)
    assert decide_mode(reachable=True, slow=False, working_offline=False, metered=False, policy=always)[0] \
        is Mode.ALWAYS_OFFLINE
    assert decide_mode(reachable=True, slow=False, working_offline=False, metered=False, policy=p)[0] is Mode.ONLINE

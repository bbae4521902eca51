"""Range sets of present content: pure unit tests."""

from cscd.cache import ranges


def test_add_merges_overlapping_and_adjacent():
    r = ranges.add([], 10, 20)
    r = ranges.add(r, 30, 40)
    assert r == [(10, 20), (30, 40)]
    assert ranges.add(r, 20, 30) == [(10, 40)]
    assert ranges.add(r, 15, 35) == [(10, 40)]
    assert ranges.add(r, 0, 5) == [(0, 5), (10, 20), (30, 40)]
    assert ranges.add(r, 50, 60) == [(10, 20), (30, 40), (50, 60)]


def test_missing_lists_holes_in_order():
    r = [(10, 20), (30, 40)]
    assert ranges.missing(r, 0, 50) == [(0, 10), (20, 30), (40, 50)]
    assert ranges.missing(r, 12, 18) == []
    assert ranges.missing(r, 15, 35) == [(20, 30)]
    assert ranges.covers(r, 30, 40)
    assert not ranges.covers(r, 30, 41)


def test_clip_and_pack_round_trip():
    r = [(0, 10), (20, 30)]
    assert ranges.clip(r, 25) == [(0, 10), (20, 25)]
    assert ranges.clip(r, 15) == [(0, 10)]
    assert ranges.unpack(ranges.pack(r)) == r
    assert ranges.present_bytes(r) == 20

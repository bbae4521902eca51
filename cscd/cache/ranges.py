"""Byte-range sets: which parts of a node's content are present in the content store.

Pure functions over sorted lists of half-open ``(start, end)`` pairs, no overlaps, no
adjacent pairs (they are merged). No I/O here.
"""

from __future__ import annotations

import struct

Range = tuple[int, int]
_PAIR = struct.Struct(">QQ")


def add(ranges: list[Range], start: int, end: int) -> list[Range]:
    """Return ``ranges`` with ``[start, end)`` added, merged with neighbours it touches."""
    if end <= start:
        return list(ranges)
    out: list[Range] = []
    placed = False
    for s, e in ranges:
        if e < start:
            out.append((s, e))
        elif s > end:
            if not placed:
                out.append((start, end))
                placed = True
            out.append((s, e))
        else:
            start, end = min(s, start), max(e, end)
    if not placed:
        out.append((start, end))
    return out


def clip(ranges: list[Range], size: int) -> list[Range]:
    """Drop everything at or beyond ``size`` (a truncate)."""
    return [(s, min(e, size)) for s, e in ranges if s < size]


def missing(ranges: list[Range], start: int, end: int) -> list[Range]:
    """The parts of ``[start, end)`` that ``ranges`` does not cover, in order."""
    out: list[Range] = []
    pos = start
    for s, e in ranges:
        if e <= pos:
            continue
        if s >= end:
            break
        if s > pos:
            out.append((pos, min(s, end)))
        pos = max(pos, e)
        if pos >= end:
            break
    if pos < end:
        out.append((pos, end))
    return out


def covers(ranges: list[Range], start: int, end: int) -> bool:
    """True if ``[start, end)`` is entirely present."""
    return end <= start or not missing(ranges, start, end)


def present_bytes(ranges: list[Range]) -> int:
    return sum(e - s for s, e in ranges)


def pack(ranges: list[Range]) -> bytes:
    return b"".join(_PAIR.pack(s, e) for s, e in ranges)


def unpack(data: bytes) -> list[Range]:
    return [_PAIR.unpack_from(data, i) for i in range(0, len(data), _PAIR.size)]

"""The delta plan: which ranges of a new file the server can copy from its base, which to send.

Pure: no I/O, no trio. Input are the chunk lists of the *base* (the version on the server,
as recorded when both sides last agreed) and of the new local content, as
``(offset, length, digest)`` triples from ``cscd.sync.chunker``. A new chunk whose digest
and length the base also has is copied on the server from the base's offset; every other
chunk is written. Neighbouring pieces are merged (copies only when they are contiguous on
both sides), so an unchanged run of a thousand chunks is one extent.

The plan is only as good as the base chunk list: it must describe the bytes the server
holds *now*. The upload checks the server's version before copying and again before the
rename (``Upstream.upload_delta``), so a stale plan can only fail, never corrupt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cscd.upstream.base import Extent

__all__ = ["DeltaPlan", "plan_delta", "plan_full"]

ChunkLike = tuple[int, int, bytes]


@dataclass(frozen=True, slots=True)
class DeltaPlan:
    """Extents covering ``[0, size)`` in order, and how many bytes each kind moves."""

    extents: tuple[Extent, ...]
    size: int
    bytes_copied: int
    bytes_written: int

    @property
    def copies_anything(self) -> bool:
        return self.bytes_copied > 0


def plan_full(size: int) -> DeltaPlan:
    """The plan of a plain upload: every byte is written."""
    extents = (Extent(0, size, None),) if size else ()
    return DeltaPlan(extents, size, 0, size)


def plan_delta(base: Sequence[ChunkLike], new: Sequence[ChunkLike], size: int) -> DeltaPlan:
    """Plan the new file of ``size`` bytes from ``base`` and ``new`` chunk lists.

    ``new`` must cover ``[0, size)`` in order (as ``chunk_file`` returns it); raises
    ``ValueError`` otherwise. Where the base holds the same chunk more than once, the first
    copy is used.
    """
    where: dict[tuple[bytes, int], int] = {}
    for off, length, digest in base:
        where.setdefault((bytes(digest), length), off)
    extents: list[Extent] = []
    copied = written = 0
    pos = 0
    for off, length, digest in new:
        if off != pos or length <= 0:
            raise ValueError(f"new chunks do not cover the file in order at offset {pos}")
        pos += length
        src = where.get((bytes(digest), length))
        if src is None:
            written += length
        else:
            copied += length
        last = extents[-1] if extents else None
        if last is not None and _joins(last, off, src):
            extents[-1] = Extent(last.offset, last.length + length, last.source)
        else:
            extents.append(Extent(off, length, src))
    if pos != size:
        raise ValueError(f"new chunks cover {pos} bytes, the file has {size}")
    return DeltaPlan(tuple(extents), size, copied, written)


def _joins(last: Extent, off: int, src: int | None) -> bool:
    if last.offset + last.length != off:
        return False
    if last.source is None or src is None:
        return last.source is None and src is None
    return last.source + last.length == src

"""Content-defined chunks of a file: FastCDC boundaries and an xxh3-128 digest per chunk.

Pure and synchronous: no trio, no LMDB, no network. It reads through a read-only ``mmap``
and hands ``fastcdc`` and ``xxhash`` ``memoryview`` slices of it, so no byte is copied into
Python objects. ``xxhash`` drops the GIL above 64 KiB; ``fastcdc`` (Cython) holds it for
the whole scan (~1.7 GB/s here, FACTS.md "Hashing and chunking"), so callers in the daemon
run this in a worker *process* (``cscd.sync.hashing``), never in a thread of the FUSE
process. Inputs below ``MIN_CHUNK`` are one chunk, cheap enough to hash inline.

Boundaries: ``MIN_CHUNK`` 256 KiB, ``AVG_CHUNK`` 1 MiB, ``MAX_CHUNK`` 4 MiB (fastcdc 1.7's
normalised cut masks). A cut depends only on the bytes since the previous cut, so an edit
moves at most the cuts around it: after an insertion at the front of a file the chunking
meets the old cuts again within a chunk or two and every later chunk keeps its digest.

Two cores: ``chunk_segment`` chunks a byte range as if the file began there, and
``merge_segments`` joins the chunking of ``[0, s + overlap)`` with that of ``[s, end)`` at
the first cut both share — from a shared cut on, both chunkings are the same sequence, so
the result equals ``chunk_file`` exactly (tested). ``split_points`` picks the ``s``.

Digests are the 16-byte canonical (big-endian) XXH3-128, the same value ``xxhsum -H2``
prints in hex. They identify content for the delta planner; they are not a defence
against someone crafting collisions in their own files.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import xxhash
from fastcdc.fastcdc_cy import fastcdc_cy

from cscd.sealed_files import SealedKey, SealedReader

__all__ = [
    "AVG_CHUNK",
    "MAX_CHUNK",
    "MIN_CHUNK",
    "Chunk",
    "chunk_buffer",
    "chunk_file",
    "chunk_segment",
    "merge_segments",
    "split_points",
]

MIN_CHUNK = 256 << 10
AVG_CHUNK = 1 << 20
MAX_CHUNK = 4 << 20
#: How far the first of two parallel segments runs past the split so that both chunkings
#: meet at a shared cut (they meet within a few chunks; 16 MiB is 16 average chunks).
SEGMENT_OVERLAP = 16 << 20


class Chunk(NamedTuple):
    """One chunk: where it starts in the file, how long it is, its XXH3-128 (16 bytes)."""

    offset: int
    length: int
    digest: bytes


def chunk_buffer(data: bytes | bytearray | memoryview | mmap.mmap, base: int = 0,
                 pause: Callable[[], object] | None = None) -> list[Chunk]:
    """Chunk a buffer; offsets are ``base`` plus the position in ``data``. Copies nothing.
    ``pause`` is called after each chunk (a worker makes way for the mount there)."""
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    n = len(view)
    if n == 0:
        return []
    digest = xxhash.xxh3_128_digest
    if n <= MIN_CHUNK:  # one chunk whatever the content: no scan needed
        return [Chunk(base, n, digest(view))]
    out = []
    for c in fastcdc_cy(view, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK):
        off, length = c.offset, c.length
        out.append(Chunk(base + off, length, digest(view[off : off + length])))
        if pause is not None:
            pause()
    return out


def chunk_segment(path: str | os.PathLike[str], start: int, end: int | None = None,
                  pause: Callable[[], object] | None = None, content_key: SealedKey | None = None) -> list[Chunk]:
    """Chunk bytes ``[start, end)`` of a file as if the file began at ``start`` (``pause``:
    as for ``chunk_buffer``).

    ``end=None`` (or past the end of the file) means to the end of the file. The last chunk
    ends at ``end`` whether or not that is a content-defined cut. With ``content_key`` the
    file is sealed (``cscd.sealed_files``) and its plain bytes are chunked.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if content_key is not None:
            return _chunk_sealed(SealedReader(fd, content_key), start, end, pause)
        size = os.fstat(fd).st_size
        end = size if end is None else min(end, size)
        if start >= end:
            return []
        if end - start <= MIN_CHUNK:  # small: a plain read is cheaper than a mapping
            return chunk_buffer(os.pread(fd, end - start, start), start)
        # No madvise: MADV_SEQUENTIAL and MADV_WILLNEED both measured slower here (they cost
        # the kernel's fault-around), MAP_POPULATE no faster.
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mm:
            view = memoryview(mm)
            try:
                return chunk_buffer(view[start:end], start, pause)
            finally:
                view.release()
    finally:
        os.close(fd)


#: plain bytes of a sealed file chunked at a time (many ``MAX_CHUNK``s: see ``_chunk_sealed``)
SEALED_WINDOW = 32 << 20


def _chunk_sealed(reader: SealedReader, start: int, end: int | None,
                  pause: Callable[[], object] | None, window: int = SEALED_WINDOW) -> list[Chunk]:
    """``chunk_segment`` of a sealed file, decrypted a window at a time, so memory stays at
    one window whatever the file's size. A cut depends only on the bytes from the chunk's
    start to the cut, so a window's chunks are final except its last (which the window's end
    may have cut short): the next window starts at that chunk. The result equals chunking
    the whole plain segment at once."""
    if window < 2 * MAX_CHUNK:
        raise ValueError("a window holds at least two of the largest chunks")
    size = reader.size()
    end = size if end is None else min(end, size)
    out: list[Chunk] = []
    pos = start
    while pos < end:
        stop = min(end, pos + window)
        chunks = chunk_buffer(reader.pread(stop - pos, pos), pos, pause)
        if stop == end:
            out += chunks
            break
        out += chunks[:-1]
        pos = chunks[-1].offset
    return out


def chunk_file(path: str | os.PathLike[str]) -> list[Chunk]:
    """Every chunk of the file at ``path``, in order (``[]`` for an empty file).

    Blocking and CPU-bound; holds the GIL while it finds boundaries. Raises ``OSError`` if
    the file cannot be opened. A file that changes while it is read gives chunks of a mix
    of versions: callers compare the file's version before and after.
    """
    return chunk_segment(path, 0, None)


def split_points(size: int, parts: int, *, min_part: int = 64 << 20) -> list[int]:
    """Offsets at which to split a file of ``size`` bytes into at most ``parts`` segments.

    Returns the inner split offsets (``[]``: do not split). Each part is at least
    ``min_part`` bytes, so small files stay in one piece.
    """
    parts = max(1, min(parts, size // max(1, min_part)))
    return [size * i // parts for i in range(1, parts)]


def merge_segments(first: Sequence[Chunk], second: Sequence[Chunk]) -> list[Chunk] | None:
    """Join two segment chunkings at their first shared cut.

    ``first`` must start where the whole chunking starts and run past the start of
    ``second``. Returns ``first`` up to the first chunk start that ``second`` also has,
    then ``second`` from there; None if they share no cut (``first`` did not run far
    enough past the split: chunk on from ``first``'s last real cut instead).
    """
    if not second:
        return list(first)
    starts = {c.offset: i for i, c in enumerate(second)}
    split = second[0].offset
    for i, c in enumerate(first):
        if c.offset >= split:
            j = starts.get(c.offset)
            if j is not None:
                return [*first[:i], *second[j:]]
    return None


def same_chunks(a: Sequence[tuple[int, int, bytes]], b: Sequence[tuple[int, int, bytes]]) -> bool:
    """True if two chunk lists describe the same content (same cuts, same digests)."""
    return len(a) == len(b) and all(tuple(x) == tuple(y) for x, y in zip(a, b, strict=True))


def hash_file_inline(path: Path, size: int) -> list[Chunk]:
    """Chunks of a file no larger than ``MIN_CHUNK`` (one chunk), read with one ``pread``."""
    if size > MIN_CHUNK:
        raise ValueError("hash_file_inline is for files of at most MIN_CHUNK bytes")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.pread(fd, size, 0)
    finally:
        os.close(fd)
    return chunk_buffer(data)

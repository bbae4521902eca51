"""Content-defined chunking and hashing (``cscd.sync.chunker``): pure, no server, no mount.

Data is pseudo-random from a fixed seed, so every run sees the same boundaries.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest
import xxhash

from cscd.sync import chunker
from cscd.sync.chunker import AVG_CHUNK, MAX_CHUNK, MIN_CHUNK, Chunk

MiB = 1 << 20


def data(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def covers(chunks: list[Chunk], size: int) -> bool:
    pos = 0
    for c in chunks:
        if c.offset != pos or c.length <= 0:
            return False
        pos += c.length
    return pos == size


@pytest.fixture(scope="module")
def base_bytes() -> bytes:
    return data(48 * MiB)


def test_chunks_cover_the_file_within_the_size_bounds(tmp_path: Path, base_bytes: bytes) -> None:
    chunks = chunker.chunk_file(write(tmp_path / "f", base_bytes))
    assert covers(chunks, len(base_bytes))
    assert all(MIN_CHUNK <= c.length <= MAX_CHUNK for c in chunks[:-1])
    average = len(base_bytes) / len(chunks)
    assert 0.7 * AVG_CHUNK < average < 1.4 * AVG_CHUNK, f"average chunk {average / MiB:.2f} MiB"


def test_digests_are_xxh3_128_of_the_chunk_bytes(tmp_path: Path, base_bytes: bytes) -> None:
    chunks = chunker.chunk_file(write(tmp_path / "f", base_bytes))
    for c in chunks:
        assert c.digest == xxhash.xxh3_128_digest(base_bytes[c.offset : c.offset + c.length])
        assert len(c.digest) == 16


def test_digests_match_xxhsum(tmp_path: Path, base_bytes: bytes) -> None:
    xxhsum = shutil.which("xxhsum")
    assert xxhsum, "xxhsum is missing (Debian package xxhash; .ci/setup installs it)"
    chunks = chunker.chunk_file(write(tmp_path / "f", base_bytes))
    picked = [chunks[0], chunks[len(chunks) // 2], chunks[-1]]
    paths = []
    for i, c in enumerate(picked):
        paths.append(write(tmp_path / f"slice{i}", base_bytes[c.offset : c.offset + c.length]))
    out = subprocess.run([xxhsum, "-H2", *map(str, paths)], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0::2] == [c.digest.hex() for c in picked]


def test_insert_at_front_keeps_almost_every_chunk(tmp_path: Path, base_bytes: bytes) -> None:
    before = chunker.chunk_file(write(tmp_path / "a", base_bytes))
    after = chunker.chunk_file(write(tmp_path / "b", b"ten bytes!" + base_bytes))
    old = {c.digest for c in before}
    kept = [c for c in after if c.digest in old]
    assert len(kept) >= len(before) - 2, f"only {len(kept)} of {len(before)} chunks survived"
    changed = sum(c.length for c in after if c.digest not in old)
    assert changed <= 2 * MAX_CHUNK


def test_overwrite_in_the_middle_changes_only_nearby_chunks(tmp_path: Path,
                                                            base_bytes: bytes) -> None:
    edited = bytearray(base_bytes)
    mid = len(edited) // 2
    edited[mid : mid + 4096] = data(4096, seed=2)
    before = chunker.chunk_file(write(tmp_path / "a", base_bytes))
    after = chunker.chunk_file(write(tmp_path / "b", bytes(edited)))
    old = {c.digest for c in before}
    new = [c for c in after if c.digest not in old]
    assert 1 <= len(new) <= 3
    assert all(c.offset <= mid + 4096 and c.offset + c.length >= mid - MAX_CHUNK for c in new)


def test_segments_merged_equal_one_pass(tmp_path: Path, base_bytes: bytes) -> None:
    path = write(tmp_path / "f", base_bytes)
    whole = chunker.chunk_file(path)
    (split,) = chunker.split_points(len(base_bytes), 2, min_part=16 * MiB)
    first = chunker.chunk_segment(path, 0, split + chunker.SEGMENT_OVERLAP)
    second = chunker.chunk_segment(path, split, None)
    assert chunker.merge_segments(first, second) == whole
    # Too little overlap to meet: the caller is told to go on sequentially.
    assert chunker.merge_segments(chunker.chunk_segment(path, 0, split), second) is None


def test_small_and_empty_files(tmp_path: Path) -> None:
    assert chunker.chunk_file(write(tmp_path / "empty", b"")) == []
    tiny = b"hello"
    (c,) = chunker.chunk_file(write(tmp_path / "tiny", tiny))
    assert c == Chunk(0, 5, xxhash.xxh3_128_digest(tiny))
    assert chunker.hash_file_inline(tmp_path / "tiny", 5) == [c]
    just = data(MIN_CHUNK)
    assert chunker.chunk_file(write(tmp_path / "min", just)) == [
        Chunk(0, MIN_CHUNK, xxhash.xxh3_128_digest(just))
    ]


def test_same_chunks() -> None:
    a = [Chunk(0, 3, b"x" * 16), Chunk(3, 4, b"y" * 16)]
    assert chunker.same_chunks(a, [tuple(c) for c in a])
    assert not chunker.same_chunks(a, a[:1])
    assert not chunker.same_chunks(a, [a[0], Chunk(3, 4, b"z" * 16)])


def test_a_paused_chunking_pauses_after_every_chunk_and_finds_the_same_chunks(tmp_path: Path,
                                                                              base_bytes: bytes) -> None:
    # sync.hashing passes ForegroundClock.make_way as the pause in its worker processes
    path = write(tmp_path / "f.bin", base_bytes)
    pauses = []
    paused = chunker.chunk_segment(path, 0, None, pause=lambda: pauses.append(1))
    assert paused == chunker.chunk_file(path)
    assert len(pauses) == len(paused) > 1

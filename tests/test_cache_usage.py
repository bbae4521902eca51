"""How much of the disk the content store takes: the number the size limit is kept by.

Real content files in a temporary directory and the real ``du``; ``Residency`` measures the
store as the cache's background task does.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cscd.cache.cache import Cache
from tests.helpers.truncate_loop import NoServer

FOLDER = b"Documents"


async def test_the_store_s_disk_use_is_counted_by_du_as_the_walk_counts_it_plus_its_directories(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``du`` in a process of its own measures the content store (the walk in a thread fought
    the trio thread for the GIL once per file); without ``du`` the walk still answers."""
    cache = Cache(tmp_path / "cache", [FOLDER], NoServer())
    store = cache.core.store
    for node_id, (at, size) in enumerate([(0, 5000), (1 << 20, 100), (0, 300_000)], start=7):
        fd = store.open(node_id, 0)
        try:
            os.pwrite(fd, b"x" * size, at)  # the second one sparse: its hole takes no room
        finally:
            os.close(fd)
    walked = cache.residency.used_bytes()
    assert 300_000 < walked < 1 << 20
    dirs = [store.root, *(p for p in store.root.iterdir() if p.is_dir())]
    assert await cache.residency.measure_used_bytes() == walked + sum(os.stat(d).st_blocks * 512 for d in dirs)
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert await cache.residency.measure_used_bytes() == walked
    not_a_program = tmp_path / "du"
    not_a_program.write_text("")  # not executable: running it fails
    monkeypatch.setattr("shutil.which", lambda name: str(not_a_program))
    assert await cache.residency.measure_used_bytes() == walked
    cache.close()

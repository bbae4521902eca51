"""A child process for the cache's own crash test: ``python -m tests.helpers.truncate_loop DIR``.

Opens the cache in DIR with no server (an offline source: nothing to fetch or list) and
overwrites one file there forever the way ``open(O_TRUNC)`` + ``write`` + ``close`` through the
mount does, until its parent SIGKILLs it. It prints ``ready`` once the loop runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cscd.cache import nodes
from cscd.cache.cache import Cache
from cscd.types import ROOT_ID

FOLDER = b"Documents"
NAME = b"doc.txt"
CONTENT = b"x" * 1834


class NoServer:
    """The source of a laptop away from the office: the cache serves what it has."""

    def may_fetch(self, folder: bytes) -> bool:
        return False

    def may_list(self, folder: bytes) -> bool:
        return False

    def serves_cached(self, folder: bytes) -> bool:
        return True

    def mode_of(self, folder: bytes) -> str:
        return "offline"

    async def read(self, folder: bytes, path: bytes, offset: int, length: int) -> bytes:
        raise OSError("no server")

    async def list_dir(self, folder: bytes, path: bytes) -> list:
        raise OSError("no server")

    async def list_dir_in_pages(self, folder: bytes, path: bytes, on_page) -> None:
        raise OSError("no server")

    async def before_first_listing(self, folder: bytes, dir_id: int) -> None:
        pass


def main(cache_dir: Path) -> None:
    cache = Cache(cache_dir, [FOLDER], NoServer())
    with cache.core.txn() as txn:
        folder = nodes.lookup_id(cache.core.index, txn, ROOT_ID, FOLDER)
        node_id = nodes.lookup_id(cache.core.index, txn, folder, NAME)
    if node_id is None:
        node_id = cache.namespace.create(folder, NAME, 0o644).id
    print("ready", flush=True)
    while True:
        fd = cache.content.open(node_id, truncate=True, write=True)
        cache.content.write(node_id, fd, 0, CONTENT)
        cache.content.release(node_id, fd, write=True, wrote=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))

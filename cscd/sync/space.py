"""The space on each folder's share: what ``df`` on the mount and ``cscd status`` show.

Owns asking the server (FileFsFullSizeInformation, through ``Upstream.space``) how large the
share is and how much this user may still write there — quotas included, as Explorer's
"free of" line shows it — once per ``SPACE_INTERVAL_S`` per online folder, and remembering
the answer. ``df`` shows the share while every folder's answer is fresh; when a folder is
offline, or not asked yet, it shows the local cache disk, which is what then fills.

One filesystem answers ``statfs`` for all folders (FUSE through pyfuse3 does not say which
directory is asked about), so with folders on several shares it reports the tightest one:
the one with the least space left. No LMDB here; the network only through ``Upstream``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from cscd.errors import CscdError
from cscd.types import FolderLink, Mode
from cscd.upstream.base import Upstream

log = logging.getLogger(__name__)

#: How often an online folder's share is asked for its size and free space.
SPACE_INTERVAL_S = 60.0
#: An answer older than this is not shown (the folder went offline meanwhile, say).
FRESH_S = 3 * SPACE_INTERVAL_S


@dataclass(frozen=True)
class ShareSpace:
    total_bytes: int
    available_bytes: int
    #: ``trio.current_time()`` of the answer
    at: float

    def as_dict(self, now: float) -> dict:
        return {"total_bytes": self.total_bytes, "available_bytes": self.available_bytes,
                "age_s": round(now - self.at, 1)}


class SpaceWatch:
    """The last answer of each folder's share (see the module docstring)."""

    def __init__(self, upstreams: dict[str, Upstream], links: dict[str, FolderLink], *,
                 interval_s: float = SPACE_INTERVAL_S) -> None:
        self.upstreams = upstreams
        self.links = links
        self.interval_s = interval_s
        self.known: dict[str, ShareSpace] = {}

    async def run(self) -> None:
        """Ask every online folder's share now and then every ``interval_s``."""
        while True:
            for name, up in self.upstreams.items():
                link = self.links.get(name)
                if link is None or link.mode is not Mode.ONLINE:
                    continue
                try:
                    total, available = await up.space()
                except (CscdError, AttributeError, NotImplementedError) as exc:
                    log.debug("space of %s's share unknown: %s", name, exc)
                    continue
                self.known[name] = ShareSpace(total, available, trio.current_time())
            await trio.sleep(self.interval_s)

    def of_folder(self, name: str) -> ShareSpace | None:
        """The folder's share space if the answer is fresh and the folder is online."""
        known = self.known.get(name)
        link = self.links.get(name)
        if known is None or link is None or link.mode is not Mode.ONLINE:
            return None
        if trio.current_time() - known.at > max(FRESH_S, 3 * self.interval_s):
            return None
        return known

    def tightest(self) -> ShareSpace | None:
        """What ``df`` on the mount shows: the share with the least space left, if every
        folder has a fresh answer; else None (then the local cache disk is shown)."""
        spaces = [self.of_folder(name) for name in self.links]
        if not spaces or any(s is None for s in spaces):
            return None
        return min(spaces, key=lambda s: s.available_bytes)  # type: ignore[union-attr]

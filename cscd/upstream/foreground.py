"""Background uploads make way for the user: when the mount last served a request, shared
between the daemon and its worker processes.

Owns ``ForegroundClock``: an 8-byte file in the daemon's private cache directory, mapped
into memory. ``fs`` stamps ``CLOCK_MONOTONIC`` into it at every FUSE request (at most once a
millisecond; a stamp is one store into the mapping). A worker process sending a large upload
reads it before each 1 MiB write (``RateLimit.take``), and a worker chunking a file after
each chunk (``sync.hashing``); while a request came within ``QUIET_S`` it waits, at most
``YIELD_MAX_S`` each time, so the work always moves: at worst 1 MiB per 50 ms plus its own
time while someone reads or writes without a pause. In the daemon itself, a push round of
sync waits for a pause of ``QUIET_S`` too (``wait_for_a_pause``, 2 s at most): its
bookkeeping shares the FUSE loop's thread.

Why: the worker processes keep smbprotocol's GIL away from the FUSE loop, but not the CPU and
the disk. On a two-core machine an upload's encryption, its reads of the file and the
server's side of it took what cached reads needed: a cold cached read during a 1 GiB upload
ran at 0.23–0.35× of its idle speed (bench/ "upload-read"). Windows makes background
transfers yield to foreground work the same way (BITS).
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

import trio

log = logging.getLogger(__name__)

#: the clock's file in the cache directory
CLOCK_FILE = "foreground.clock"
#: a request within this long counts as the user being busy now
QUIET_S = 0.020
#: the longest an upload waits before one write
YIELD_MAX_S = 0.050

_STAMP = struct.Struct("<q")
_GRAIN_NS = 1_000_000
_FOLLOWED: dict[str, ForegroundClock | None] = {}


class ForegroundClock:
    """The time of the last request the mount served, in a mapping other processes read."""

    def __init__(self, path: Path, *, writer: bool) -> None:
        self.path = path
        fd = os.open(path, (os.O_RDWR | os.O_CREAT if writer else os.O_RDONLY) | os.O_CLOEXEC, 0o600)
        try:
            if writer:
                os.ftruncate(fd, _STAMP.size)
            self._map = mmap.mmap(fd, _STAMP.size, mmap.MAP_SHARED,
                                  mmap.PROT_READ | (mmap.PROT_WRITE if writer else 0))
        finally:
            os.close(fd)
        self._last_ns = 0

    @classmethod
    def create(cls, cache_dir: Path) -> ForegroundClock:
        """The daemon's clock (made or reused in the cache directory)."""
        return cls(cache_dir / CLOCK_FILE, writer=True)

    @classmethod
    def follow(cls, path: str) -> ForegroundClock | None:
        """A worker's view of the daemon's clock; None (never waiting) if it cannot be read."""
        try:
            return cls(Path(path), writer=False)
        except (OSError, ValueError) as exc:
            log.debug("uploads do not make way for the mount: %s: %s", path, exc)
            return None

    def stamp(self) -> None:
        """The mount is serving a request now (daemon, per FUSE request)."""
        now = time.monotonic_ns()
        if now - self._last_ns >= _GRAIN_NS:
            self._last_ns = now
            _STAMP.pack_into(self._map, 0, now)

    def busy_for(self) -> float:
        """Seconds to wait until ``QUIET_S`` have passed without a request (0: quiet now)."""
        last = _STAMP.unpack_from(self._map, 0)[0]
        return max(0.0, QUIET_S - (time.monotonic_ns() - last) / 1e9)

    def idle_for(self) -> float:
        """Seconds since the mount's last request (``cscd.operations.garbage`` waits for a long one)."""
        return (time.monotonic_ns() - _STAMP.unpack_from(self._map, 0)[0]) / 1e9

    def make_way(self, on_wait: Callable[[], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> float:
        """Wait while the mount is busy, ``YIELD_MAX_S`` at most; returns the seconds waited."""
        waited = 0.0
        while waited < YIELD_MAX_S:
            step = min(self.busy_for(), YIELD_MAX_S - waited)
            if step <= 0:
                break
            sleep(step)
            waited += step
            if on_wait is not None:
                on_wait()
        return waited

    def close(self) -> None:
        self._map.close()


def followed(path: str) -> ForegroundClock | None:
    """This worker process's view of the clock at ``path``, opened once."""
    if path not in _FOLLOWED:
        _FOLLOWED[path] = ForegroundClock.follow(path)
    return _FOLLOWED[path]


async def wait_for_a_pause(clock: ForegroundClock, longest_s: float) -> float:
    """In the daemon: wait until the mount has had no request for ``QUIET_S``, ``longest_s``
    at most (sync's push rounds, which run in the FUSE loop's process); returns the seconds
    waited."""
    start = trio.current_time()
    deadline = start + longest_s
    while (busy := clock.busy_for()) > 0 and trio.current_time() < deadline:  # noqa: ASYNC110 - the clock is another process's mmap: nothing to wait on
        await trio.sleep(min(busy, deadline - trio.current_time()))
    return trio.current_time() - start

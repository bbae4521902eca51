"""A bandwidth cap for uploads: a token bucket that blocking writers wait on; and, in a
worker process, making way for the mount's requests (``foreground.ForegroundClock``).

Owns nothing but the arithmetic and the waiting. Used from the threads (or worker processes)
that send SMB writes, never from the trio thread. The cap can change while a transfer runs
(the folder entered or left a slow link); ``None`` means unlimited.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from cscd.upstream.foreground import ForegroundClock


class RateLimit:
    """At most ``bytes_per_s`` on average, with a burst of one second's worth."""

    def __init__(self, bytes_per_s: float | None = None, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep
        self._rate: float | None = None
        self._tokens = 0.0
        self._stamp = clock()
        self.set(bytes_per_s)
        #: the daemon's clock of requests served, in a worker process (None: never wait for it)
        self.foreground: ForegroundClock | None = None

    @property
    def bytes_per_s(self) -> float | None:
        return self._rate

    def set(self, bytes_per_s: float | None) -> None:
        with self._lock:
            self._rate = bytes_per_s if bytes_per_s and bytes_per_s > 0 else None
            self._tokens = min(self._tokens, self._rate or 0.0)
            self._stamp = self._clock()

    def delay_for(self, nbytes: int) -> float:
        """Take ``nbytes`` from the bucket; return how long the caller must wait first."""
        with self._lock:
            if self._rate is None:
                return 0.0
            now = self._clock()
            self._tokens = min(self._rate, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now
            self._tokens -= nbytes
            return 0.0 if self._tokens >= 0 else -self._tokens / self._rate

    def take(self, nbytes: int, on_wait: Callable[[], None] | None = None) -> None:
        """Block until ``nbytes`` may go (in slices, calling ``on_wait`` after each, so a
        progress-based deadline does not mistake the pause for a hung server): first making
        way for the mount, then within the cap."""
        if self.foreground is not None:
            self.foreground.make_way(on_wait, self._sleep)
        delay = self.delay_for(nbytes)
        while delay > 0:
            step = min(delay, 0.5)
            self._sleep(step)
            delay -= step
            if on_wait is not None:
                on_wait()

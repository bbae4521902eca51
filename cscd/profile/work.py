"""A bounded group of profile tasks that stops as a whole when the server goes away.

Owns ``open_work``: up to ``limit`` tasks run at once; the first ``UpstreamUnavailable`` or
``UpstreamTimeout`` cancels the others and is raised as itself after the group ends (no
exception group: only ``daemon.py`` and ``cli.py`` use ``except*``). Any other exception is a
bug and propagates as trio makes it. Tasks must handle per-file errors themselves. No I/O.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from cscd.errors import UpstreamTimeout, UpstreamUnavailable

FATAL = (UpstreamUnavailable, UpstreamTimeout)


class Work:
    """Handle of a running group; ``start(fn, *args)`` queues one task."""

    def __init__(self, nursery: trio.Nursery, limit: int) -> None:
        self._nursery = nursery
        self._limiter = trio.CapacityLimiter(limit)
        self.error: BaseException | None = None

    def start(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str = "profile.work") -> None:
        self._nursery.start_soon(self._guarded, fn, args, name=name)

    async def _guarded(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        async with self._limiter:
            try:
                await fn(*args)
            except FATAL as exc:
                if self.error is None:
                    self.error = exc
                self._nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_work(limit: int) -> AsyncIterator[Work]:
    """Run the tasks started on the yielded ``Work``; wait for all; re-raise a lost server."""
    async with trio.open_nursery() as nursery:
        work = Work(nursery, limit)
        yield work
    if work.error is not None:
        raise work.error

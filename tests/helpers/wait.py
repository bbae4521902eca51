"""Polling with a deadline: the one way tests wait for something to become true.

Owns ``wait_for`` (blocking, for sync tests and helpers), ``eventually`` (the same for
paths) and ``wait_for_async`` (trio). Tests never sleep and hope (STYLE.md §5): they poll a
predicate until it holds and fail with a message that says what did not happen and the
last value seen. No network, no fixtures.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")

__all__ = ["eventually", "wait_for", "wait_for_async"]


def _failure(message: str, timeout_s: float, last: object, polls: int) -> AssertionError:
    return AssertionError(
        f"{message} (still false after {timeout_s:g} s, {polls} polls; last value: {last!r})"
    )


def eventually(predicate: Callable[[], T], timeout_s: float, message: str) -> T:
    """``wait_for`` for files: a path not there yet (any ``OSError``) counts as false."""
    return wait_for(predicate, timeout_s, message, ignore=(OSError,))


def wait_for(
    predicate: Callable[[], T],
    timeout_s: float,
    message: str,
    interval_s: float = 0.02,
    *,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` until it returns a truthy value, and return that value.

    Polls every ``interval_s`` seconds (blocking the calling thread) for at most
    ``timeout_s`` seconds on the monotonic clock; the predicate is always called at least
    once, and once more at the deadline. Raises ``AssertionError`` naming ``message``, the
    timeout and the last value returned when the deadline passes. Exceptions from the
    predicate propagate, except those listed in ``ignore``, which count as a false result
    (the exception becomes the "last value").
    """
    deadline = time.monotonic() + timeout_s
    last: Any = None
    polls = 0
    while True:
        polls += 1
        try:
            last = predicate()
        except ignore as exc:
            last = exc
        else:
            if last:
                return last
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _failure(message, timeout_s, last, polls)
        time.sleep(min(interval_s, remaining))


def settled(counter: Callable[[], int], timeout_s: float, message: str, quiet_s: float = 0.5) -> int:
    """``counter``'s value once it has not moved for ``quiet_s`` (e.g. a proxy's byte count:
    nothing more in flight)."""
    last = [counter(), time.monotonic()]

    def still() -> bool:
        now = counter()
        if now != last[0]:
            last[:] = [now, time.monotonic()]
        return time.monotonic() - last[1] >= quiet_s

    wait_for(still, timeout_s, message)
    return last[0]


async def wait_for_async(
    predicate: Callable[[], T | Awaitable[T]],
    timeout_s: float,
    message: str,
    interval_s: float = 0.02,
    *,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """The trio twin of ``wait_for``: poll with ``trio.sleep`` until ``predicate`` holds.

    ``predicate`` may be a plain function or return an awaitable (an ``async def``), which
    is awaited. Time is ``trio.current_time()``, so this works under ``autojump_clock``.
    Cancellation propagates from the sleep. Raises ``AssertionError`` as ``wait_for`` does.
    """
    deadline = trio.current_time() + timeout_s
    last: Any = None
    polls = 0
    while True:
        polls += 1
        try:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            last = result
        except ignore as exc:
            last = exc
        else:
            if last:
                return last
        remaining = deadline - trio.current_time()
        if remaining <= 0:
            raise _failure(message, timeout_s, last, polls)
        await trio.sleep(min(interval_s, remaining))

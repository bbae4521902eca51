"""The daemon's cyclic garbage collector, set so that its pauses miss the mount's requests.

Owns the ``gc`` settings of the daemon process and the task ``gc.full``. Why: trio leaves
cyclic garbage behind every task and every cancellation (tasks, outcomes, tracebacks), and
CPython frees it only in a collection, which stops the whole process, requests included.
Measured in the daemon while 1,500 small files synced: young collections at 20,000
allocations took 19–24 ms each, a middle one 33 ms, a full one 41 ms, wherever they fell; at
5,000 and with full ones moved into pauses, young ones take about 4 ms.

- What start-up built lives as long as the daemon: ``gc.freeze`` keeps it out of every
  collection.
- Young collections come every ``YOUNG_THRESHOLD`` allocations: few enough that a large
  listing (a few short-lived objects per entry) is not slowed, small enough that one takes a
  few milliseconds.
- Full collections never start by themselves: the task runs one in a pause of the mount (no
  request for ``PAUSE_S``) once ``FULL_EVERY_S`` have passed since the last, or after
  ``FULL_LATEST_S`` however busy the mount is, so what cycles hold stays bounded.
"""

from __future__ import annotations

import gc
import logging
import time

import trio

from cscd.upstream.foreground import ForegroundClock

log = logging.getLogger(__name__)

#: Allocations between two young collections (CPython's default is 700: a 100,000-entry first
#: listing spent 4% of its time in them; at 20,000 one collection took up to 37 ms).
YOUNG_THRESHOLD = 5_000
#: Young collections between two of the middle generation (CPython's default).
MIDDLE_THRESHOLD = 10
#: Out of reach: full collections are the task's, not the allocator's.
NEVER = 1 << 30
#: A full collection waits for the mount to have had no request this long ...
PAUSE_S = 0.5
#: ... and comes at most this often,
FULL_EVERY_S = 30.0
#: but at the latest this long after the last one, pause or not.
FULL_LATEST_S = 300.0
#: How often the task looks at the mount's clock while it waits for a pause.
LOOK_S = 0.25


def settle() -> None:
    """Once serving: freeze what start-up built and take full collections off the allocator."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, NEVER)


async def collect_in_pauses(clock: ForegroundClock | None) -> None:
    """The task ``gc.full``: a full collection in each pause of the mount, at most every
    ``FULL_EVERY_S``, at least every ``FULL_LATEST_S``."""
    last = trio.current_time()
    while True:
        await trio.sleep(max(0.0, last + FULL_EVERY_S - trio.current_time()))
        latest = last + FULL_LATEST_S
        # The clock is another mapping of a file the FUSE handlers stamp: nothing to wait on.
        while clock is not None and clock.idle_for() < PAUSE_S and trio.current_time() < latest:  # noqa: ASYNC110
            await trio.sleep(LOOK_S)
        started = time.perf_counter()
        found = gc.collect()
        log.debug("full garbage collection: %d objects in %.1f ms", found, (time.perf_counter() - started) * 1e3)
        last = trio.current_time()

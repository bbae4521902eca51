"""Sync problems: the files whose sync keeps failing, and when each is tried again.

Owns the per-node failure record that keeps one bad file from ending the daemon or flooding
the log (DESIGN.md invariant 7). A failure is logged once per node and message — at DEBUG
for the expected kind (the link went away, the file changed under the upload), with its
traceback at ERROR for a bug — and the node is retried with a jittered exponential backoff
(``BACKOFF_FIRST_S`` doubling to ``BACKOFF_MAX_S``). From ``SHOW_AFTER`` failures on it is a
*sync problem*: event 2040, listed by ``cscd status`` and counted in the metrics, as
Windows' Sync Center lists sync errors. The first success clears it (event 2041).

Two kinds are the user's or the admin's to fix, not a retry's: the server out of space or
quota (event 2010) and access denied (2011). They are a problem as soon as the first retry
(about a second later) meets the same refusal: one refusal alone can be churn's passing
state (a folder moved on the server into a place another pending move is still freeing is
refused once, then goes through). Each is emitted once per file and kind (again only after
the file synced, or failed otherwise in between) and backs off the same way.

State lives in memory only: after a restart every dirty node is simply tried again, which is
what the dirty set in LMDB is for. Time is ``trio.current_time()``; no I/O here.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from cscd.errors import AccessDenied, CscdError, ServerFull
from cscd.events import EventId, emit

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 600.0
SHOW_AFTER = 3


@dataclass
class Problem:
    """One node's failures: what went wrong last and when it may be tried again."""

    node_id: int
    folder: str
    path: str
    reason: str
    failures: int
    first_s: float
    last_s: float
    retry_at: float
    kind: str = "error"  # or QUOTA, DENIED: shown once ``USERS_TO_FIX_AFTER`` failures in a row are that kind
    kind_failures: int = 0

    def as_dict(self) -> dict:
        return {"folder": self.folder, "path": self.path, "reason": self.reason, "kind": self.kind,
                "failures": self.failures, "retry_in_s": None}

    @property
    def shown(self) -> bool:
        return self.failures >= SHOW_AFTER or (self.kind != "error" and self.kind_failures >= USERS_TO_FIX_AFTER)


#: Refusals of one kind in a row that make a quota or permission problem (see the docstring).
USERS_TO_FIX_AFTER = 2
#: Failures that only the user or the admin can fix: (problem kind, event it emits).
QUOTA, DENIED = "quota", "access denied"
_USERS_TO_FIX: tuple[tuple[type[CscdError], str, EventId], ...] = (
    (ServerFull, QUOTA, EventId.UPLOAD_FAILED_QUOTA),
    (AccessDenied, DENIED, EventId.UPLOAD_FAILED_PERMISSION),
)


class SyncProblems:
    """Failure records by node id (see the module docstring)."""

    def __init__(self) -> None:
        self._by_node: dict[int, Problem] = {}
        self.failures_total = 0

    def may_try(self, node_id: int, now: float) -> bool:
        """False while the node is backing off after a failure."""
        p = self._by_node.get(node_id)
        return p is None or now >= p.retry_at

    def failed(self, node_id: int, folder: str, path: str, exc: BaseException, now: float) -> None:
        """Record a failure of ``node_id``; logs it once, emits 2040 when it becomes a problem."""
        self.failures_total += 1
        reason = str(exc) or type(exc).__name__
        p = self._by_node.get(node_id)
        if p is None:
            p = self._by_node[node_id] = Problem(node_id, folder, path, reason, 0, now, now, now)
            if isinstance(exc, CscdError):
                log.info("sync of %s in %s failed, tried again later: %s", path, folder, reason)
            else:
                log.error("sync of %s in %s failed (a bug; tried again later): %s", path, folder,
                          reason, exc_info=exc)
        elif reason != p.reason:
            log.info("sync of %s in %s failed again, differently: %s", path, folder, reason)
        kind, event = next(((k, e) for cls, k, e in _USERS_TO_FIX if isinstance(exc, cls)), ("error", None))
        p.kind_failures = p.kind_failures + 1 if kind == p.kind else 1
        p.kind = kind
        if event is not None and p.kind_failures == USERS_TO_FIX_AFTER:
            emit(event, folder=folder, path=path, reason=reason)
        p.failures += 1
        p.reason, p.path, p.last_s = reason, path, now
        backoff = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (p.failures - 1))
        p.retry_at = now + backoff * random.uniform(0.8, 1.2)
        if p.failures == SHOW_AFTER and kind == "error":
            emit(EventId.SYNC_PROBLEM, folder=folder, path=path, failures=p.failures, reason=reason,
                 retry_s=round(p.retry_at - now))

    def succeeded(self, node_id: int) -> None:
        """The node synced (or needs nothing any more): forget its failures."""
        p = self._by_node.pop(node_id, None)
        if p is not None and p.shown:
            emit(EventId.SYNC_PROBLEM_CLEARED, folder=p.folder, path=p.path, failures=p.failures)

    def shown(self, now: float) -> list[dict]:
        """The problems ``cscd status`` lists (nodes that failed ``SHOW_AFTER`` times or more)."""
        out = []
        for p in self._by_node.values():
            if p.shown:
                d = p.as_dict()
                d["retry_in_s"] = max(0, round(p.retry_at - now))
                out.append(d)
        return sorted(out, key=lambda d: (d["folder"], d["path"]))

    def reason_of(self, node_id: int) -> str | None:
        """The message of the node's sync problem, if it is one (``shown``)."""
        p = self._by_node.get(node_id)
        return p.reason if p is not None and p.shown else None

    @property
    def count(self) -> int:
        return sum(1 for p in self._by_node.values() if p.shown)

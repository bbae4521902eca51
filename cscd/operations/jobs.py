"""Long work the CLI follows to its end: pins, ``sync --wait``, profile logon and logoff.

Owns the table of jobs and their counters. A long request (the control call of ``cscd pin``,
say) names a job token; its handler registers the job here and counts files and bytes as it
goes, and the CLI asks ``jobs`` a few times a second on a second connection to draw its
progress. The CLI waits as long as the counters move, however long that is, and gives up
only when they stand still for long (``cscd.progress``), which is what a Windows user gets
from Sync Center's progress bar instead of a fixed deadline.

Totals may grow while a job runs (a pinned folder listed reveals more files), as Windows'
own progress does. Finished jobs stay listed for ``KEEP_FINISHED_S`` so a client that polls
late still sees the end. Time is ``trio.current_time()``; no I/O here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import trio

#: how long a finished job is still listed
KEEP_FINISHED_S = 60.0
#: at most this many jobs remembered (a client that never finishes its jobs cannot grow it)
MAX_JOBS = 256


@dataclass
class Job:
    token: str
    kind: str
    target: str
    started: float = field(default_factory=trio.current_time)
    files_total: int = 0
    files_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    #: what it is doing now, in a few words ("listing", "fetching", "uploading")
    phase: str = ""
    finished: float | None = None
    #: where ``files_done`` / ``bytes_done`` come from when a counter elsewhere holds them
    #: (sync's uploads, hydration's fetched bytes): read at each listing, minus its start
    files_from: Callable[[], int] | None = None
    bytes_from: Callable[[], int] | None = None

    def count_from(self, files: Callable[[], int] | None = None, nbytes: Callable[[], int] | None = None) -> None:
        """Take the done counts from running counters, counting from now."""
        if files is not None:
            base_f = files()
            self.files_from = lambda: files() - base_f
        if nbytes is not None:
            base_b = nbytes()
            self.bytes_from = lambda: nbytes() - base_b

    def add_total(self, files: int = 0, nbytes: int = 0) -> None:
        self.files_total += files
        self.bytes_total += nbytes

    def done(self, files: int = 0, nbytes: int = 0) -> None:
        self.files_done += files
        self.bytes_done += nbytes

    def as_dict(self, now: float) -> dict:
        elapsed = (self.finished or now) - self.started
        if self.finished is None:
            if self.files_from is not None:
                self.files_done = self.files_from()
            if self.bytes_from is not None:
                self.bytes_done = self.bytes_from()
        return {
            "token": self.token, "kind": self.kind, "target": self.target, "phase": self.phase,
            "files_total": max(self.files_total, self.files_done),
            "files_done": self.files_done,
            "bytes_total": max(self.bytes_total, self.bytes_done),
            "bytes_done": self.bytes_done,
            "elapsed_s": round(elapsed, 3),
            "finished": self.finished is not None,
        }


class JobTable:
    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}

    def start(self, token: str | None, kind: str, target: str) -> Job:
        """A new job (``token`` is the client's; a job without one is still listed, as
        ``kind:N``, for ``cscd status`` to show)."""
        self._expire()
        job = Job(token or f"{kind}:{len(self._jobs) + 1}", kind, target)
        self._jobs[job.token] = job
        return job

    def finish(self, job: Job) -> None:
        job.as_dict(trio.current_time())  # the last counts, kept
        job.finished = trio.current_time()

    def listed(self) -> list[dict]:
        self._expire()
        now = trio.current_time()
        return [j.as_dict(now) for j in self._jobs.values()]

    def _expire(self) -> None:
        now = trio.current_time()
        for token, job in list(self._jobs.items()):
            if job.finished is not None and now - job.finished > KEEP_FINISHED_S:
                del self._jobs[token]
        while len(self._jobs) >= MAX_JOBS:
            del self._jobs[next(iter(self._jobs))]

"""Showing a followed job's progress (``cscd pin``, ``sync --wait``, ``profile logon``).

Owns the drawing only; the counts come from the daemon's ``jobs`` (``operations/jobs.py``).
On a terminal one line redrawn in place, as rclone's ``-P``: a bar, the percentage, files,
bytes, the rate and the time left. Elsewhere (a log, a pipe, systemd's journal) a plain line
every ``PLAIN_EVERY_S`` while something changed, so a log holds a readable trace, not a wall
of carriage returns. Pure text work: the caller does the polling.
"""

from __future__ import annotations

import time
from typing import TextIO

BAR_WIDTH = 24
PLAIN_EVERY_S = 5.0


def size(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def fraction(job: dict) -> float | None:
    """How far along, by bytes where there are any, else by files; None if unknown."""
    if job["bytes_total"]:
        return min(1.0, job["bytes_done"] / job["bytes_total"])
    if job["files_total"]:
        return min(1.0, job["files_done"] / job["files_total"])
    return None


def describe(job: dict) -> list[str]:
    """The parts of a progress line: files, bytes, rate, time left (those that are known)."""
    parts = []
    if job["files_total"] or job["files_done"]:
        parts.append(f"{job['files_done']:,}/{job['files_total']:,} files")
    if job["bytes_total"]:
        parts.append(f"{size(job['bytes_done'])}/{size(job['bytes_total'])}")
    elif job["bytes_done"]:
        parts.append(size(job["bytes_done"]))
    rate = job["bytes_done"] / job["elapsed_s"] if job["elapsed_s"] > 0 else 0.0
    if job["bytes_done"]:
        parts.append(f"{size(rate)}/s")
    left = job["bytes_total"] - job["bytes_done"]
    if rate > 0 and left > 0:
        parts.append(f"ETA {duration(left / rate)}")
    return parts


class ProgressView:
    """Draws one job's progress to ``out`` (a terminal or not)."""

    def __init__(self, verb: str, out: TextIO, *, terminal: bool) -> None:
        self.verb = verb
        self.out = out
        self.terminal = terminal
        self._last_plain = 0.0
        self._last_key: tuple | None = None
        self._drawn = False

    def show(self, job: dict) -> None:
        done = fraction(job)
        parts = describe(job)
        phase = f"{job['phase']}: " if job.get("phase") else ""
        if self.terminal:
            bar = ""
            if done is not None:
                filled = int(done * BAR_WIDTH)
                bar = f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {done * 100:3.0f}% "
            self.out.write(f"\r\033[K{self.verb}: {phase}{bar}{' · '.join(parts)}")
            self.out.flush()
            self._drawn = True
            return
        key = (job["files_done"], job["bytes_done"], job["files_total"], job["bytes_total"], job.get("phase"))
        now = time.monotonic()
        if key != self._last_key and now - self._last_plain >= PLAIN_EVERY_S:
            percent = f"{done * 100:.0f}%: " if done is not None else ""
            self.out.write(f"{self.verb}: {phase}{percent}{', '.join(parts) or 'started'}\n")
            self.out.flush()
            self._last_plain, self._last_key = now, key

    def close(self) -> None:
        if self._drawn:
            self.out.write("\r\033[K")
            self.out.flush()

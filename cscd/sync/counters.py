"""``PushCounters``: what sync's pushes did since the start, for ``cscd status`` and metrics."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PushCounters:
    files_uploaded: int = 0
    bytes_uploaded: int = 0
    deletes: int = 0
    renames: int = 0
    conflicts: int = 0
    last_success: float | None = None
    delta_uploads: int = 0  # uploads that copied part of the base on the server
    times_only: int = 0  # content rewritten unchanged: only the write time was sent

"""The ``Upstream`` protocol: what the sync layer may ask of a server, and nothing more.

Imports only leaves (``cscd.errors``, ``cscd.names``, ``cscd.types``). No LMDB, no cache here.

Paths are ``bytes``, relative to the folder's target (``b""`` is the target itself),
components separated by ``b"/"``. Implementations refuse names the server cannot store with
``BadName`` (see ``cscd.names.check_name``) and translate server errors to ``cscd.errors``:

- connection refused/reset/closed, session lost → ``UpstreamUnavailable``
- a call past its deadline                        → ``UpstreamTimeout``
- missing name                                    → ``NotFound``;  existing name → ``Exists``
- access denied                                   → ``AccessDenied``
- a conditional upload whose target moved on      → ``Conflict``

Every method is async and must not block the trio thread: blocking work runs in
``trio.to_thread.run_sync`` bounded by a per-connection ``CapacityLimiter``, and every
network call has a timeout of its own (a thread cannot be cancelled).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cscd.errors import CscdError
from cscd.types import RemoteEntry

__all__ = ["Conflict", "RemoteEntry", "Upstream", "UpstreamStatistics"]


class Conflict(CscdError):
    """The server's file is no longer the version the client based its change on."""


@dataclass(frozen=True, slots=True)
class UpstreamStatistics:
    """Counters of one upstream; bytes are payload bytes of reads and writes."""

    bytes_read: int
    bytes_written: int
    requests: int
    connected: bool


class Upstream(Protocol):
    """A server-side folder target. All paths are relative to the target."""

    #: Human-readable target for logs and messages, e.g. ``\\server\share\alice\Documents``.
    #: Never contains secrets.
    description: str

    async def connect(self) -> None:
        """Connect and authenticate; make sure the target folder exists and is a folder.

        Raises ``UpstreamUnavailable``/``UpstreamTimeout`` when the server cannot be reached,
        ``AccessDenied`` for bad credentials or rights, ``NotFound`` if the target is missing.
        Calling it again after a loss reconnects.
        """

    async def close(self) -> None:
        """Drop the connection; never raises, never hangs (bounded by the timeout)."""

    async def probe(self) -> float:
        """Measure one round trip on the target folder itself; return seconds.

        Queries the redirected path, never the share root (a user may lack rights there).
        Raises ``UpstreamUnavailable``/``UpstreamTimeout``/``AccessDenied``.
        """

    async def stat(self, path: bytes) -> RemoteEntry:
        """Return the entry for ``path``; ``NotFound`` if missing."""

    async def list_dir(self, path: bytes) -> list[RemoteEntry]:
        """All entries of a directory in one enumeration (no ``.``/``..``, no cscd temporaries)."""

    async def read(self, path: bytes, offset: int, length: int, *, timeout_s: float | None = None) -> bytes:
        """Read up to ``length`` bytes at ``offset``; shorter only at end of file."""

    async def upload(
        self,
        path: bytes,
        fd: int,
        size: int,
        mtime_ns: int,
        *,
        expected: RemoteEntry | None = None,
        replace: bool = True,
    ) -> RemoteEntry:
        """Make ``path`` hold the first ``size`` bytes of local file descriptor ``fd``.

        Writes to a temporary name in the same directory, sets the write time to
        ``mtime_ns``, then renames it over ``path``; a reader on the server never sees a
        half-written file. If ``expected`` is given, the rename happens only while ``path``
        is still that version (``Conflict`` otherwise; ``expected=None`` with
        ``replace=False`` means "must not exist"). Returns the new entry. Cancellation or a
        lost link leaves at most a temporary file that a later upload cleans up.
        """

    async def mkdir(self, path: bytes) -> RemoteEntry:
        """Create a directory; ``Exists`` if the name is taken."""

    async def delete(self, path: bytes, *, is_dir: bool) -> None:
        """Delete a file or an empty directory; ``NotFound`` if already gone, ``NotEmpty``."""

    async def rename(self, old: bytes, new: bytes, *, replace: bool = False) -> RemoteEntry:
        """Rename within the target; ``Exists`` if ``new`` exists and not ``replace``."""

    async def set_mtime(self, path: bytes, mtime_ns: int) -> RemoteEntry:
        """Set the last-write time (for a times-only change); returns the new entry."""

    def statistics(self) -> UpstreamStatistics:
        """Counters since creation; cheap, never blocks."""

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

import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from cscd.errors import CscdError
from cscd.sealed_files import Source
from cscd.types import RemoteEntry

__all__ = [
    "Change",
    "ChangeAction",
    "Conflict",
    "Extent",
    "RemoteEntry",
    "Upstream",
    "UpstreamStatistics",
    "check_plan",
]


class Conflict(CscdError):
    """The server's file is no longer the version the client based its change on."""


@dataclass(frozen=True, slots=True)
class UpstreamStatistics:
    """Counters of one upstream; bytes are payload bytes of reads and writes."""

    bytes_read: int
    bytes_written: int
    requests: int
    connected: bool
    #: Bytes the server copied within itself for delta uploads (never crossed the link).
    bytes_copied: int = 0


@dataclass(frozen=True, slots=True)
class LinkActivity:
    """What the traffic of an upstream said about its link since it was last asked (``link``
    probes only when traffic says nothing: issue 16)."""

    #: the fastest round trip of a small request (open, close, query) meanwhile, or None
    fastest_rtt_s: float | None
    #: seconds since the server last answered anything (``math.inf``: never)
    idle_s: float


@dataclass(frozen=True, slots=True)
class Extent:
    """One piece of a delta upload: ``length`` bytes at ``offset`` of the new file.

    ``source`` is the offset in the current server file (the base) to copy them from on
    the server, or None to send them from the local file (which holds the whole new
    content, so any copy can fall back to a write of the same range).
    """

    offset: int
    length: int
    source: int | None = None


def check_plan(plan: Sequence[Extent], size: int) -> None:
    """Raise ``ValueError`` unless ``plan`` covers ``[0, size)`` in order without gaps."""
    pos = 0
    for e in plan:
        if e.offset != pos or e.length <= 0:
            raise ValueError(f"the delta plan does not cover the file in order at offset {pos}")
        pos += e.length
    if pos != size:
        raise ValueError(f"the delta plan covers {pos} bytes, the file has {size}")


class ChangeAction(enum.IntEnum):
    """What a change notification says happened ([MS-FSCC] 2.7.1 FILE_NOTIFY_INFORMATION)."""

    ADDED = 1
    REMOVED = 2
    MODIFIED = 3
    RENAMED_OLD_NAME = 4
    RENAMED_NEW_NAME = 5


@dataclass(frozen=True, slots=True)
class Change:
    """One changed name below a watched folder; ``path`` is relative to it, ``/``-separated."""

    action: ChangeAction
    path: bytes


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

    async def probe(self, *, light: bool = False) -> float:
        """Measure one round trip on the target folder itself; return seconds.

        Queries the redirected path, never the share root (a user may lack rights there).
        ``light``: the cheapest request that proves the link (SMB2 ECHO), for an idle link
        whose folder was checked already. Raises ``UpstreamUnavailable``/``UpstreamTimeout``/
        ``AccessDenied``.
        """

    def link_activity(self) -> LinkActivity:
        """What traffic said about the link since the last call (resets the fastest RTT)."""

    async def stat(self, path: bytes) -> RemoteEntry:
        """Return the entry for ``path``; ``NotFound`` if missing."""

    async def space(self) -> tuple[int, int]:
        """(total bytes, bytes this user may still write) of the share holding the target."""

    async def list_dir(self, path: bytes) -> list[RemoteEntry]:
        """All entries of a directory in one enumeration (no ``.``/``..``, no cscd temporaries)."""

    async def list_dir_in_pages(self, path: bytes,
                                on_page: Callable[[list[RemoteEntry]], Awaitable[None]]) -> None:
        """``list_dir`` handed on in batches as they arrive (``on_page`` is awaited for each);
        after an error, the batches already handed on were part of the listing."""

    async def read(self, path: bytes, offset: int, length: int, *, timeout_s: float | None = None) -> bytes:
        """Read up to ``length`` bytes at ``offset``; shorter only at end of file."""

    async def upload(
        self,
        path: bytes,
        fd: Source,
        size: int,
        mtime_ns: int,
        *,
        expected: RemoteEntry | None = None,
        replace: bool = True,
    ) -> RemoteEntry:
        """Make ``path`` hold the first ``size`` bytes of local file descriptor ``fd`` (or of the
        sealed file a ``SealedReader`` opens: its plain bytes).

        Writes to a temporary name in the same directory, sets the write time to
        ``mtime_ns``, then renames it over ``path``; a reader on the server never sees a
        half-written file. If ``expected`` is given, the rename happens only while ``path``
        is still that version (``Conflict`` otherwise; ``expected=None`` with
        ``replace=False`` means "must not exist"). Returns the new entry. Cancellation or a
        lost link leaves at most a temporary file that a later upload cleans up.
        """

    async def upload_delta(
        self,
        path: bytes,
        fd: Source,
        size: int,
        mtime_ns: int,
        *,
        plan: Sequence[Extent],
        expected: RemoteEntry | None,
        replace: bool = True,
        resume_token: str | None = None,
    ) -> RemoteEntry:
        """Like ``upload``, but build the temporary from ``plan``: extents with a ``source``
        are copied on the server from the current ``path`` (the base), the rest are sent
        from ``fd``. ``plan`` must cover ``[0, size)`` in order without gaps.

        The rename is conditional on ``expected`` exactly as in ``upload`` (``Conflict``),
        and a base that is not ``expected`` any more is refused before anything is copied.
        A server that refuses server-side copies gets writes of the same ranges instead.
        ``resume_token`` names the temporary after the content (same token, same bytes):
        when a link loss or a cancellation interrupts the upload, the temporary stays on
        the server and a later call with the same token sends only what is missing.
        """

    def watch(self, path: bytes, *, tree: bool = True
              ) -> AbstractAsyncContextManager[AsyncIterator[list[Change]]]:
        """Watch the folder ``path`` (with ``tree``, everything below it too) for changes.

        ``async with up.watch(b"") as changes: async for batch in changes: ...``. Each batch
        lists changed names; an empty batch means the server lost track (too many changes):
        rescan everything. Changes that happen between two batches are queued by the
        server, not lost. Waiting for a batch holds no thread token and no deadline; a lost
        link raises ``UpstreamUnavailable``. Raises ``Unsupported`` (at entry or from the
        first batch) when the server or the implementation cannot watch: periodic scans
        must then do the job. The iterator stops when the watch ends on the server's side
        (the folder was deleted, or the upstream closed it to rename a folder above it).
        See the implementation for what a server reports.
        """

    async def mkdir(self, path: bytes) -> RemoteEntry:
        """Create a directory; ``Exists`` if the name is taken."""

    async def delete(self, path: bytes, *, is_dir: bool) -> None:
        """Delete a file or an empty directory; ``NotFound`` if already gone, ``NotEmpty``."""

    async def rename(self, old: bytes, new: bytes, *, replace: bool = False) -> RemoteEntry:
        """Rename within the target; ``Exists`` if ``new`` exists and not ``replace``."""

    async def set_mtime(self, path: bytes, mtime_ns: int) -> RemoteEntry:
        """Set the last-write time (for a times-only change); returns the new entry."""

    async def get_eas(self, path: bytes) -> tuple[tuple[bytes, bytes], ...]:
        """The sorted (name, value) extended attributes of ``path`` (``cscd.xattrs``)."""

    async def set_eas(self, path: bytes, eas: Mapping[bytes, bytes], *, fresh: bool = False) -> None:
        """Make ``eas`` the whole EA set of ``path``: the ones it has and ``eas`` lacks go.
        ``fresh``: ``path`` is a file this client's upload has just made, so it has no EAs
        yet and the current set need not be read first."""

    def statistics(self) -> UpstreamStatistics:
        """Counters since creation; cheap, never blocks."""

    # -- moving the target folder when its policy target changes (issue 6) ---------------------
    # ``to`` is another upstream of the same kind; an implementation that cannot reach it
    # from here (another server, another filesystem) raises ``Unsupported``.

    async def make_target(self) -> None:
        """Create the target folder and its missing parents (``mkdir -p``); fine if it exists."""

    async def rename_target(self, to: Upstream) -> RemoteEntry:
        """Rename the target folder itself to ``to``'s target in one server rename, keeping
        FileIds and content; missing parents are created and an empty folder at the new place
        is replaced. ``Exists`` if the new place holds files; ``Unsupported`` if one rename
        cannot do it (another share, server or filesystem)."""

    async def copy_to(self, path: bytes, to: Upstream) -> RemoteEntry:
        """Copy the file ``path`` to the same path below ``to``'s target without the content
        crossing the client (SMB: server-side copy on one server, any share), with the same
        write time, through a temporary renamed into place; returns the new entry. ``Exists``
        if the name is taken there, ``Unsupported`` if no server-side copy is possible."""

    async def remove_target(self) -> None:
        """Delete the target folder itself once it is empty (``NotEmpty`` otherwise)."""

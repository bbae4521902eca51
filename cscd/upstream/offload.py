"""Bulk transfers in worker processes, so the FUSE loop keeps the GIL to itself.

Owns ``OffloadedUpstream``: an ``SmbUpstream`` that sends its large uploads (and delta
uploads) to a small pool of worker processes (``trio_parallel``) and does everything else —
reads, listings, stats, renames, small uploads — itself, in the daemon. Reads stay here
because a reader waits on them and the pickled result crossing the pipe cost half of a first
read's speed; an upload runs in the background, which is where the GIL hurt.

Why: smbprotocol signs, encrypts and copies payloads in Python. In a thread of the daemon it
holds the GIL for most of a transfer, and cached reads through the mount fell to a fifth of
their speed during a large upload (bench/ case "upload-read": 118 vs 584 MB/s). In another
process it costs the daemon nothing but the pipe.

Each worker process keeps its own connection per target (reconnecting when it needs to) and
runs one ``trio.run`` per job. A job names the content by ``/proc/<daemon pid>/fd/<n>`` of
the daemon's open snapshot, so file data never crosses the pipe and a deleted file stays
readable.
Byte counters of the jobs are added to this object's ``statistics()``, so counts stay exact.
The upload cap of the in-process upstream travels with each job (a cap changed while a job
runs applies from the next job). Cancellation kills the worker (``kill_on_cancel``); an upload
killed half-way leaves at most a temporary file on the server, which a later upload removes.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import trio
import trio_parallel

from cscd.errors import UpstreamTimeout
from cscd.types import ServerSettings, UncTarget
from cscd.upstream import open_upstream
from cscd.upstream.base import UpstreamStatistics
from cscd.upstream.smb import SmbUpstream

#: Transfers at least this large go to a worker process; smaller ones are not worth the hop.
BULK_BYTES = 1 << 20

_CLIENTS: dict[tuple, Any] = {}


def _client(target: UncTarget, settings: ServerSettings) -> SmbUpstream:
    """The worker process's upstream for these parameters (made once per process)."""
    key = (target, settings)
    client = _CLIENTS.get(key)
    if client is None:
        # The one factory, asked for the in-process kind (this *is* the worker).
        client = open_upstream(target, dataclasses.replace(settings, offload=False))
        assert isinstance(client, SmbUpstream)
        _CLIENTS[key] = client
    return client


def _job(target: UncTarget, settings: ServerSettings, op: str, args: tuple, kwargs: dict,
         rate: float | None = None) -> tuple[Any, int, int, int]:
    """Run one transfer in the worker: (result, bytes read, written, copied on the server)."""
    client = _client(target, settings)
    client.set_upload_rate(rate)
    before = client.statistics()

    async def run() -> Any:
        path, source, *rest = args
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return await getattr(client, op)(path, fd, *rest, **kwargs)
        finally:
            os.close(fd)

    result = trio.run(run)
    after = client.statistics()
    return (result, after.bytes_read - before.bytes_read, after.bytes_written - before.bytes_written,
            after.bytes_copied - before.bytes_copied)


def _shared_path(fd: int) -> str:
    """A path another process opens to reach this process's ``fd`` — the same open file,
    even when it has no name (an unlinked or ``O_TMPFILE`` snapshot): ``/proc/PID/fd/N``.
    Reading the link's target instead (``/proc/self/fd/N``) gave a name that no longer
    existed once the file was deleted, and the worker's ``FileNotFoundError`` ended the daemon."""
    return f"/proc/{os.getpid()}/fd/{fd}"


class OffloadedUpstream(SmbUpstream):
    """An ``SmbUpstream`` whose bulk uploads run in worker processes; everything else is the
    in-process ``SmbUpstream`` it is."""

    def __init__(self, target: UncTarget, settings: ServerSettings, *, workers: int = 2,
                 job_timeout_s: float = 3600.0) -> None:
        assert settings.credentials is not None, "open_upstream checks the credentials"
        super().__init__(target, settings.credentials, port=settings.port, security=settings.security,
                         timeout_s=settings.timeout_s)
        self._job_settings = settings
        self._workers = trio.CapacityLimiter(workers)
        self._job_timeout_s = job_timeout_s
        self._read = 0
        self._written = 0
        self._copied = 0
        self._jobs = 0

    async def _in_worker(self, op: str, *args: Any, **kwargs: Any) -> Any:
        try:
            with trio.fail_after(self._job_timeout_s):
                result, read, written, copied = await trio_parallel.run_sync(
                    _job, self.target, self._job_settings, op, args, kwargs, self.upload_rate.bytes_per_s,
                    kill_on_cancel=True, limiter=self._workers)
        except trio.TooSlowError:
            raise UpstreamTimeout(f"{self.description}: a transfer took longer than "
                                  f"{self._job_timeout_s:g} s") from None
        except trio_parallel.BrokenWorkerError as exc:
            raise UpstreamTimeout(f"{self.description}: the transfer worker died: {exc}") from None
        self._jobs += 1
        self._read += read
        self._written += written
        self._copied += copied
        return result

    # Reads stay in the daemon (the inherited ``read``): someone is waiting for them, and
    # handing 8 MiB back through the worker's pipe halved a first read (bench case 3: 77-104
    # vs 151-180 MB/s).

    async def upload(self, path: bytes, fd: int, size: int, mtime_ns: int, **kwargs: Any) -> Any:
        if size < BULK_BYTES:
            return await super().upload(path, fd, size, mtime_ns, **kwargs)
        return await self._in_worker("upload", path, _shared_path(fd), size, mtime_ns, **kwargs)

    async def upload_delta(self, path: bytes, fd: int, size: int, mtime_ns: int, **kwargs: Any) -> Any:
        return await self._in_worker("upload_delta", path, _shared_path(fd), size, mtime_ns, **kwargs)

    def statistics(self) -> UpstreamStatistics:
        own = super().statistics()
        return dataclasses.replace(
            own, bytes_read=own.bytes_read + self._read, bytes_written=own.bytes_written + self._written,
            bytes_copied=own.bytes_copied + self._copied)

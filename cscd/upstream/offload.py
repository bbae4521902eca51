"""Bulk transfers in worker processes, so the FUSE loop keeps the GIL to itself.

Owns ``OffloadedUpstream``: an ``SmbUpstream`` that sends its uploads (large ones one by
one, small ones in batches, and delta uploads) to a small pool of worker processes
(``trio_parallel``) and does everything else — reads, listings, stats, renames — itself, in
the daemon. Reads stay here
because a reader waits on them and the pickled result crossing the pipe cost half of a first
read's speed; an upload runs in the background, which is where the GIL hurt.

Why: smbprotocol signs, encrypts and copies payloads in Python. In a thread of the daemon it
holds the GIL for most of a transfer, and cached reads through the mount fell to a fifth of
their speed during a large upload (bench/ case "upload-read": 118 vs 584 MB/s). In another
process it costs the daemon nothing but the pipe.

A worker process does not take the CPU and the disk from the mount either: its uploads make
way while the mount serves requests (``foreground.ForegroundClock``, named in the job's
settings), and it runs ``WORKER_NICENESS`` lower than the daemon.

Each worker process keeps its own connection per target (reconnecting when it needs to) and
runs one ``trio.run`` per job. A job names the content by ``/proc/<daemon pid>/fd/<n>`` of
the daemon's open snapshot, so file data never crosses the pipe and a deleted file stays
readable. A sealed snapshot (a large file of a sealed cache) travels with its content key,
and the worker reads its plain bytes through ``SealedReader``.
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

from cscd.errors import UpstreamTimeout, UpstreamUnavailable
from cscd.sealed_files import SealedKey, SealedReader, Source
from cscd.types import ServerSettings, UncTarget
from cscd.upstream import open_upstream
from cscd.upstream.base import UpstreamStatistics
from cscd.upstream.foreground import followed
from cscd.upstream.smb import SmbUpstream

#: Transfers at least this large go to a worker process one by one; smaller uploads go there
#: in batches (``_SmallUploads``): one hop and one ``trio.run`` for many files.
BULK_BYTES = 1 << 20
#: at most this many small uploads in one batch job
BATCH_MAX = 64

_CLIENTS: dict[tuple, Any] = {}

#: how much lower than the daemon a worker process runs (nice): background work yields the
#: CPU to the FUSE loop serving cached files on a busy machine (Windows runs its background
#: sync at low priority too)
WORKER_NICENESS = 10
_lowered = False


def lower_priority() -> None:
    """In a worker process: drop its CPU priority by ``WORKER_NICENESS``, once."""
    global _lowered
    if not _lowered:
        _lowered = True
        try:
            os.nice(WORKER_NICENESS)
        except OSError:  # a sandbox may forbid it; the work still runs
            pass


def run_in_background(fn: Any, *args: Any) -> Any:
    """The worker-side trampoline for a job of another module (chunking): ``fn(*args)`` at
    the workers' lower priority."""
    lower_priority()
    return fn(*args)


def _client(target: UncTarget, settings: ServerSettings) -> SmbUpstream:
    """The worker process's upstream for these parameters (made once per process)."""
    key = (target, settings)
    client = _CLIENTS.get(key)
    if client is None:
        # The one factory, asked for the in-process kind (this *is* the worker).
        client = open_upstream(target, dataclasses.replace(settings, offload=False, foreground_clock=None))
        assert isinstance(client, SmbUpstream)
        if settings.foreground_clock:
            client.upload_rate.foreground = followed(settings.foreground_clock)
        _CLIENTS[key] = client
    return client


def _job(target: UncTarget, settings: ServerSettings, op: str, args: tuple, kwargs: dict,
         rate: float | None = None) -> tuple[Any, int, int, int]:
    """Run one transfer in the worker: (result, bytes read, written, copied on the server)."""
    lower_priority()
    client = _client(target, settings)
    client.set_upload_rate(rate)
    before = client.statistics()

    async def run() -> Any:
        path, (source, content_key), *rest = args
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            local = fd if content_key is None else SealedReader(fd, content_key)
            return await getattr(client, op)(path, local, *rest, **kwargs)
        finally:
            os.close(fd)

    result = trio.run(run)
    after = client.statistics()
    return (result, after.bytes_read - before.bytes_read, after.bytes_written - before.bytes_written,
            after.bytes_copied - before.bytes_copied)


def _batch_job(target: UncTarget, settings: ServerSettings, items: list[tuple[bytes, str, int, int, dict]],
               rate: float | None = None) -> tuple[list[tuple[bool, Any]], int, int, int]:
    """Run small uploads in the worker, several at once on its connection: for each item
    (True, entry) or (False, the exception), then bytes read, written, copied."""
    lower_priority()
    client = _client(target, settings)
    client.set_upload_rate(rate)
    before = client.statistics()
    results: list[tuple[bool, Any]] = [(False, None)] * len(items)

    async def one(n: int, path: bytes, source: str, size: int, mtime_ns: int, kwargs: dict) -> None:
        try:
            fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
            try:
                results[n] = (True, await client.upload(path, fd, size, mtime_ns, **kwargs))
            finally:
                os.close(fd)
        except Exception as exc:  # noqa: BLE001 - handed back to the item's own caller
            results[n] = (False, exc)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            for n, item in enumerate(items):
                nursery.start_soon(one, n, *item)

    trio.run(run)
    after = client.statistics()
    return (results, after.bytes_read - before.bytes_read, after.bytes_written - before.bytes_written,
            after.bytes_copied - before.bytes_copied)


class _Item:
    """One small upload waiting for or in a batch. ``fd`` is its own duplicate of the
    caller's snapshot fd, named in ``args`` by ``/proc/PID/fd/N``: it stays open until no
    worker can open that path any more, so a caller that is cancelled and closes its
    snapshot can never make the number name another file (the next snapshot) meanwhile."""

    __slots__ = ("args", "done", "fd", "outcome")

    def __init__(self, path: bytes, fd: int, size: int, mtime_ns: int, kwargs: dict) -> None:
        self.fd = os.dup(fd)
        self.args = (path, _shared_path(self.fd), size, mtime_ns, kwargs)
        self.done = trio.Event()
        self.outcome: tuple[bool, Any] = (False, None)

    def finish(self, outcome: tuple[bool, Any]) -> None:
        self.outcome = outcome
        self.done.set()


class _SmallUploads:
    """Gathers small uploads into batch jobs for the worker processes.

    No task of its own: a caller that finds a worker free and uploads waiting becomes the
    batch's leader, takes up to ``BATCH_MAX`` of them (its own among them), runs the job and
    hands each caller its own result; the others park until their upload is done or they can
    lead the next batch. Under load the batches grow by themselves (everything that arrived
    while the workers were busy goes in the next one); one upload alone goes at once.
    A leader cancelled mid-job (shutdown) kills its worker; the other uploads of that batch
    fail with ``UpstreamUnavailable`` and are pushed again in a later round.
    """

    def __init__(self, owner: OffloadedUpstream, leaders: int) -> None:
        self._owner = owner
        self._leaders = leaders
        self._pending: list[_Item] = []
        self._lot = trio.lowlevel.ParkingLot()

    async def upload(self, path: bytes, fd: int, size: int, mtime_ns: int, kwargs: dict) -> Any:
        item = _Item(path, fd, size, mtime_ns, kwargs)
        self._pending.append(item)
        try:
            while not item.done.is_set():
                if self._leaders > 0 and self._pending:
                    await self._lead()
                else:
                    await self._lot.park()
        except BaseException:
            if item in self._pending:  # not taken by a batch: it never goes up
                self._pending.remove(item)
                os.close(item.fd)
            raise  # in a batch: its leader closes the fd when the job is over
        ok, value = item.outcome
        if not ok:
            raise value
        return value

    async def _lead(self) -> None:
        batch, self._pending = self._pending[:BATCH_MAX], self._pending[BATCH_MAX:]
        self._leaders -= 1
        try:
            results = await self._owner._in_worker_raw(_batch_job, [it.args for it in batch])
            for it, outcome in zip(batch, results, strict=True):
                it.finish(outcome)
        except BaseException as exc:
            err = exc if isinstance(exc, Exception) else UpstreamUnavailable(
                f"{self._owner.description}: the upload batch was interrupted; it is pushed again")
            for it in batch:
                if not it.done.is_set():
                    it.finish((False, err))
            raise
        finally:
            for it in batch:
                os.close(it.fd)  # the job is over: no worker opens these paths any more
            self._leaders += 1
            self._lot.unpark_all()


def _shared_source(local: Source) -> tuple[str, SealedKey | None]:
    """How a worker opens what an upload reads: the shared path of its descriptor, and the
    content key when it is a sealed file (the worker reads it through ``SealedReader``)."""
    if isinstance(local, int):
        return _shared_path(local), None
    return _shared_path(local.fd), local.content_key


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
        self._small = _SmallUploads(self, workers)

    async def _in_worker(self, op: str, *args: Any, **kwargs: Any) -> Any:
        return await self._in_worker_raw(_job, op, args, kwargs)

    async def _in_worker_raw(self, job: Any, *args: Any) -> Any:
        try:
            with trio.fail_after(self._job_timeout_s):
                result, read, written, copied = await trio_parallel.run_sync(
                    job, self.target, self._job_settings, *args, self.upload_rate.bytes_per_s,
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

    async def upload(self, path: bytes, fd: Source, size: int, mtime_ns: int, **kwargs: Any) -> Any:
        if size < BULK_BYTES and isinstance(fd, int):
            return await self._small.upload(path, fd, size, mtime_ns, kwargs)
        return await self._in_worker("upload", path, _shared_source(fd), size, mtime_ns, **kwargs)

    async def upload_delta(self, path: bytes, fd: Source, size: int, mtime_ns: int, **kwargs: Any) -> Any:
        return await self._in_worker("upload_delta", path, _shared_source(fd), size, mtime_ns, **kwargs)

    def statistics(self) -> UpstreamStatistics:
        own = super().statistics()
        return dataclasses.replace(
            own, bytes_read=own.bytes_read + self._read, bytes_written=own.bytes_written + self._written,
            bytes_copied=own.bytes_copied + self._copied)

"""``ProfileService``: the roaming profile as a daemon service.

Owns the background-upload task (``run``: sleep on trio's clock until the schedule says,
skip or upload, emit the PROFILE_UPLOAD_* events) and the entry points the control handlers
call (``logon``, ``logoff``, ``upload_now``), each returning a JSON-able dict. One lock makes
sure two runs never overlap for the home directory. The work itself is ``sync.py``; this
module only sequences it, counts it and reports it. It does not connect the upstream (the
daemon does; a lost link shows as ``UpstreamUnavailable``) and reads the link mode only
through the callable it is given.
"""

from __future__ import annotations

import datetime
import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import trio

from cscd.errors import CscdError, UpstreamTimeout, UpstreamUnavailable
from cscd.events import EventId, emit
from cscd.profile import signout
from cscd.profile.schedule import SKIP_UNAVAILABLE, UploadSchedule, skip_reason
from cscd.profile.settings import ProfileSettings
from cscd.profile.sync import EVENT_FOLDER, RoamReport, logoff, logon
from cscd.types import Mode
from cscd.upstream.base import Upstream

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProfileStatistics:
    """Counters since start; ``next_upload_at`` is on trio's clock (None: none scheduled)."""

    logons: int
    logoffs: int
    uploads: int
    skipped: int
    failed: int
    is_running: bool
    next_upload_at: float | None
    last_result: str | None


class ProfileService:
    """Roaming profile of one home directory against one server folder.

    ``mode`` returns the link mode of the profile's server now (the daemon passes a reader of
    the link monitor's state); ``prepare`` runs before each run to get the upstream connected
    (the daemon's creates the server folder the first time; default ``upstream.probe``, which
    reconnects lazily); ``rng`` and ``wall_clock`` are for tests.
    """

    def __init__(self, upstream: Upstream, home: Path, settings: ProfileSettings, *,
                 mode: Callable[[], Mode] = lambda: Mode.ONLINE,
                 prepare: Callable[[], Awaitable[object]] | None = None,
                 rng: random.Random | None = None,
                 wall_clock: Callable[[], datetime.datetime] = datetime.datetime.now) -> None:
        self.upstream = upstream
        self.home = Path(home)
        self._mode = mode
        self._prepare = prepare or upstream.probe
        self._rng = rng or random.Random()
        self._wall_clock = wall_clock
        self._schedule = UploadSchedule(settings, self._rng)
        self._lock = trio.Lock()
        self._wake = trio.Event()
        self._next_upload_at: float | None = None
        self._counts = {"logons": 0, "logoffs": 0, "uploads": 0, "skipped": 0, "failed": 0}
        #: told (a message) when the session starts before the start's pull finished
        self.on_pull_late: Callable[[str], None] | None = None
        self._last_result: str | None = None
        #: the pull the daemon runs at its start: set once it ended, whichever way
        self.start_pull_done = trio.Event()
        #: its report (``logon``'s answer), or {"error": message}
        self.start_pull: dict[str, Any] | None = None

    @property
    def settings(self) -> ProfileSettings:
        return self._schedule.settings

    def update_settings(self, settings: ProfileSettings) -> None:
        """Use new settings (policy reload); the schedule starts over from now."""
        self._schedule = UploadSchedule(settings, self._rng)
        self._wake.set()
        self._wake = trio.Event()

    def statistics(self) -> ProfileStatistics:
        return ProfileStatistics(**self._counts, is_running=self._lock.locked(),
                                 next_upload_at=self._next_upload_at,
                                 last_result=self._last_result)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> NoReturn:
        """Upload in the background on the schedule, forever; never raises for a failed
        upload (it becomes a PROFILE_UPLOAD_FAILED event). Ready at once."""
        task_status.started()
        while True:
            wake = self._wake
            delay = self._schedule.next_delay_s(self._wall_clock())
            self._next_upload_at = None if delay is None else trio.current_time() + delay
            with trio.move_on_after(math.inf if delay is None else delay) as timer:
                await wake.wait()
            if not timer.cancelled_caught:
                continue  # new settings: schedule anew
            self._next_upload_at = None
            await self.upload_now("schedule")

    async def upload_now(self, trigger: str = "manual") -> dict[str, Any]:
        """One background upload (home → server) with its events; waits on the network.

        Skipped (PROFILE_UPLOAD_SKIPPED) when the link mode forbids it or the server does not
        answer a probe; a failure midway is PROFILE_UPLOAD_FAILED. Never raises a
        ``CscdError``: the result dict says what happened.
        """
        reason = skip_reason(self._mode(), self.settings)
        if reason is not None:
            return self._skipped(reason)
        async with self._lock:
            try:
                await self._prepare()
            except (UpstreamUnavailable, UpstreamTimeout):
                return self._skipped(SKIP_UNAVAILABLE)
            except CscdError as exc:
                return self._failed(str(exc))
            return await self._push(trigger)

    async def logon(self) -> dict[str, Any]:
        """Pull the server's profile into the home directory (see ``sync.logon``); raises
        ``CscdError`` when the server cannot be reached or listed."""
        async with self._lock:
            await self._prepare()
            report = await logon(self.upstream, self.home, self.settings)
            await trio.to_thread.run_sync(signout.sign_in, self.home, self.settings.exclusions)
        self._counts["logons"] += 1
        self._last_result = "logon"
        return report.to_json()

    async def wait_start_pull(self, limit_s: float) -> dict[str, Any]:
        """For the session start (``cscd profile wait-logon``): wait up to ``limit_s`` for
        the daemon's start-time pull. ``result`` is ``finished`` (with its report), ``failed``
        or ``timed_out``; the pull goes on in the background after a time-out, and the
        session starts on the profile as it is cached. Never a second pull."""
        with trio.move_on_after(limit_s):
            await self.start_pull_done.wait()
        where = self.upstream.description
        report = self.start_pull
        if report is None or "error" in report:
            if self.settings.super_mandatory:
                why = "it is still coming down" if report is None else report["error"]
                return {"result": "timed_out" if report is None else "failed", "refuse_logon": True,
                        "message": f"the super-mandatory roaming profile from {where} could not be loaded "
                        f"({why}): the logon is refused"}
        if report is None:
            if self.on_pull_late is not None:
                self.on_pull_late(f"The roaming profile from {where} is still coming down: this session "
                                  "started with the copy on this computer.")
            return {"result": "timed_out", "message": f"the roaming profile from {where} is still "
                    f"coming down after {limit_s:g} s: the session starts on the cached profile; "
                    "the pull goes on in the background"}
        if "error" in report:
            if self.on_pull_late is not None:
                self.on_pull_late(f"The roaming profile from {where} could not be loaded "
                                  f"({report['error']}): this session uses the copy on this computer.")
            return {"result": "failed", "message": f"the roaming profile from {where} was not pulled "
                    f"({report['error']}): the session starts on the cached profile"}
        return {"result": "finished", **report, "message": f"roaming profile from {where} is up to date: "
                f"{report.get('files', 0)} files, {report.get('bytes', 0)} bytes pulled"}

    async def logoff(self, *, sign_out: bool = False) -> dict[str, Any]:
        """Push local changes to the server (see ``sync.logoff``), with the upload events;
        raises ``CscdError`` (after PROFILE_UPLOAD_FAILED) when the server is lost.

        ``sign_out``: the user's session ends (``cscd profile logoff``, not a daemon stop):
        then the local folders of ``redirections.xml`` exclusions are dropped as FSLogix does
        (``signout``); the answer names them under ``dropped``.
        """
        async with self._lock:
            try:
                await self._prepare()
            except CscdError as exc:
                self._failed(str(exc))
                raise
            result = await self._push("logoff", raises=True)
            if sign_out:
                pushed = not result.get("errors") and not result.get("pending")
                result["dropped"] = await trio.to_thread.run_sync(
                    lambda: signout.sign_out(self.home, self.settings.exclusions, pushed=pushed,
                                             state_file=self.settings.state_file(self.home),
                                             target=self.upstream.description))
                if result["dropped"]:
                    result["message"] += "; local-only folders dropped at sign-out: " + ", ".join(result["dropped"])
        self._counts["logoffs"] += 1
        return result

    # -- internals -----------------------------------------------------------------------------

    async def _push(self, trigger: str, *, raises: bool = False) -> dict[str, Any]:
        emit(EventId.PROFILE_UPLOAD_STARTED, folder=EVENT_FOLDER, trigger=trigger)
        kind = "logoff" if trigger == "logoff" else "background"
        try:
            report: RoamReport = await logoff(self.upstream, self.home, self.settings, kind=kind)
        except CscdError as exc:
            result = self._failed(str(exc))
            if raises:
                raise
            return result
        self._counts["uploads"] += 1
        self._last_result = "finished"
        emit(EventId.PROFILE_UPLOAD_FINISHED, folder=EVENT_FOLDER, trigger=trigger,
             files=report.files, bytes=report.bytes, duration_s=report.duration_s,
             deleted=report.deleted, conflicts=len(report.conflicts), errors=len(report.errors))
        return {"result": "finished", **report.to_json()}

    def _skipped(self, reason: str) -> dict[str, Any]:
        self._counts["skipped"] += 1
        self._last_result = f"skipped: {reason}"
        emit(EventId.PROFILE_UPLOAD_SKIPPED, folder=EVENT_FOLDER, reason=reason)
        return {"result": "skipped", "reason": reason}

    def _failed(self, reason: str) -> dict[str, Any]:
        self._counts["failed"] += 1
        self._last_result = f"failed: {reason}"
        emit(EventId.PROFILE_UPLOAD_FAILED, folder=EVENT_FOLDER, reason=reason)
        return {"result": "failed", "reason": reason}

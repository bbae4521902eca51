"""When the roaming profile is uploaded in the background, and when an upload is skipped.

Owns ``UploadSchedule`` (the delay until the next background upload: every interval, or at a
time of day, plus a random offset) and ``skip_reason`` (the link modes in which a background
upload does not run). Pure: no I/O, no sleeping, no clock of its own — the caller passes the
wall-clock time, which only a time of day needs; ``ProfileService`` sleeps on trio's clock.

Background upload is one-way, home → server, like a logoff; the server's changes still come
down only at logon.
"""

from __future__ import annotations

import datetime
import random

from cscd.profile.settings import ProfileSettings
from cscd.types import Mode

#: ``reason`` of PROFILE_UPLOAD_SKIPPED, by cause.
SKIP_SLOW_LINK = "slow link"
SKIP_UNAVAILABLE = "server unavailable"
SKIP_METERED = "metered network"
SKIP_WORKING_OFFLINE = "working offline"


class UploadSchedule:
    """The delays between background uploads for one ``ProfileSettings``."""

    def __init__(self, settings: ProfileSettings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self._rng = rng or random.Random()

    @property
    def is_enabled(self) -> bool:
        return self.settings.is_background_upload_on

    def offset_s(self) -> float:
        """A fresh random offset in ``[0, upload_max_offset_s]``."""
        return self._rng.uniform(0.0, self.settings.upload_max_offset_s)

    def next_delay_s(self, now: datetime.datetime) -> float | None:
        """Seconds from ``now`` (wall clock, for a time of day) to the next background upload,
        offset included; None when background upload is off.

        Interval: the interval, counted from now (the end of the previous run or the start).
        Time of day: the next occurrence strictly after ``now``, in ``now``'s time zone.
        """
        s = self.settings
        if s.upload_interval_s is not None:
            return s.upload_interval_s + self.offset_s()
        if s.upload_time_of_day is not None:
            at = datetime.datetime.combine(now.date(), s.upload_time_of_day, tzinfo=now.tzinfo)
            if at <= now:
                at = datetime.datetime.combine(now.date() + datetime.timedelta(days=1),
                                               s.upload_time_of_day, tzinfo=now.tzinfo)
            return (at - now).total_seconds() + self.offset_s()
        return None


def skip_reason(mode: Mode, settings: ProfileSettings) -> str | None:
    """Why a background upload must not run in ``mode``, or None when it may.

    Offline and working offline never upload; a slow link and a metered network upload only
    when the settings allow it. Always-offline mode is a policy choice, not a bad link: the
    background upload runs (as Offline Files' background sync does there).
    """
    if mode is Mode.OFFLINE:
        return SKIP_UNAVAILABLE
    if mode is Mode.WORKING_OFFLINE:
        return SKIP_WORKING_OFFLINE
    if mode is Mode.SLOW_LINK and not settings.upload_on_slow_link:
        return SKIP_SLOW_LINK
    if mode is Mode.METERED and not settings.upload_on_metered:
        return SKIP_METERED
    return None

"""The device's compliance with ``device.require_screen_lock``, followed while the daemon runs.

Owns the loop that asks ``cscd.screenlock.check`` every ``timings.compliance_interval_s`` (in a thread: a
few blocking D-Bus calls), remembers the verdict for ``cscd status`` and the metrics, says
each change once (event 7020 when the session stops complying, 7021 when it complies again),
and, where ``device.offline_when_noncompliant`` is false, shuts the offline cache while the
session does not comply (``Hydration.offline_refused``): cached files are then served only
while their server answers, as Work Folders keeps a non-compliant device from its files.
"""

from __future__ import annotations

import functools
import logging
import os

import trio

from cscd import screenlock
from cscd.cache.hydration import Hydration
from cscd.events import EventId, emit
from cscd.policy.config import DaemonConfig

log = logging.getLogger(__name__)


class ComplianceWatch:
    def __init__(self, config: DaemonConfig, hydration: Hydration, *, uid: int | None = None) -> None:
        self.device = config.device
        self.system_bus = config.logind_dbus
        self.session_bus = config.settings_dbus
        self.hydration = hydration
        self.uid = os.getuid() if uid is None else uid
        self.interval_s = config.timings.compliance_interval_s
        self.verdict: screenlock.Verdict | None = None

    @property
    def required(self) -> bool:
        return self.device.require_screen_lock

    def as_dict(self) -> dict[str, object]:
        v = self.verdict
        return {"required": self.required, "compliant": None if v is None else v.compliant,
                "reason": "" if v is None else v.reason,
                "offline_refused": self.hydration.offline_refused is not None}

    def gauge(self) -> float | None:
        """1 compliant, 0 not, None when nothing is required (no sample then)."""
        if not self.required or self.verdict is None:
            return None
        return float(self.verdict.compliant)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Check while the policy requires it (``device`` may change at a policy fetch)."""
        task_status.started()
        while True:
            if not self.required:
                self.verdict, self.hydration.offline_refused = None, None
            elif self.system_bus is None or self.session_bus is None:
                self._apply(screenlock.Verdict(False, "no D-Bus to ask (logind_dbus / settings_dbus: none)"))
            else:
                check = functools.partial(screenlock.check, self.uid, system_bus=self.system_bus,
                                          session_bus=self.session_bus,
                                          max_idle_s=self.device.screen_lock_max_idle_min * 60)
                try:
                    verdict = await trio.to_thread.run_sync(check)
                except Exception as exc:  # noqa: BLE001 - an odd answer on a bus must not end the daemon
                    log.warning("the screen-lock check failed: %s", exc, exc_info=True)
                    verdict = screenlock.Verdict(False, f"the check failed ({type(exc).__name__}: {exc})")
                self._apply(verdict)
            await trio.sleep(self.interval_s)

    def _apply(self, verdict: screenlock.Verdict) -> None:
        before, self.verdict = self.verdict, verdict
        if before is None or before.compliant != verdict.compliant:
            if verdict.compliant:
                emit(EventId.DEVICE_COMPLIANT, reason=verdict.reason)
            else:
                emit(EventId.DEVICE_NOT_COMPLIANT, reason=verdict.reason,
                     offline="refused until it complies" if not self.device.offline_when_noncompliant
                     else "still used (the policy only reports)")
        refuse = not verdict.compliant and not self.device.offline_when_noncompliant
        self.hydration.offline_refused = (f"the session does not comply with the device policy: {verdict.reason}"
                                          if refuse else None)


"""The link monitor: probes each folder's server and decides its mode.

Owns the writes to each folder's ``FolderLink``; everyone else only reads it. Probes run on
the redirected path itself (``Upstream.probe``), never on the share root, so a user without
rights on ``\\\\server\\share$`` but with rights on ``...\\share$\\alice`` stays online.
A probe never blocks a filesystem operation: it runs in its own task with a deadline.

The mode follows from a few inputs (``decide_mode``, pure): the user's "work offline"
switch (persisted in a small state file so it survives restarts), reachability, the
metered state, the always-offline policy and the smoothed round-trip time with hysteresis
(``SlowLinkDetector``, pure: the fastest of the last few probes decides). Server loss is
noticed at the first failed request — sync and on-demand reads report it — and probing goes
on with backoff (at most ``reconnect_max_s``), so the folder comes back online by itself.

While the folder is reachable, probes cost nothing as long as traffic flows (issue 16): every
``probe_interval_s`` the monitor asks the upstream what its traffic showed
(``Upstream.link_activity``) and feeds the fastest round trip of a small request to the
slow-link detector. Only a server silent for ``idle_probe_s`` gets a probe, the lightest one
(an SMB2 ECHO); a reported failure, a reconnect or the first look at a folder gets the full
one (open and close the folder, which also proves the rights on it).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import trio

from cscd.errors import AccessDenied, CscdError, TicketMissing
from cscd.events import EventId, emit
from cscd.types import FolderLink, Mode, OfflinePolicy
from cscd.upstream.base import Upstream

log = logging.getLogger(__name__)

#: Weight of a new RTT sample in the smoothed RTT (as TCP's SRTT, a bit faster).
RTT_ALPHA = 0.3


class SlowLinkDetector:
    """Round-trip time with hysteresis: one slow sample does not flip the mode.

    The link counts as slow when even the *fastest* of the last ``samples`` probes took longer
    than the threshold, and as fast again when the fastest of the last ``samples`` is under
    it. A busy machine or server delays some answers, never all of them; a long link delays
    every one (bench/ saw false slow links on loopback with a smoothed average).
    """

    def __init__(self, threshold_ms: float, samples: int) -> None:
        self.threshold_s = threshold_ms / 1000.0
        self.samples = max(1, samples)
        self.window: list[float] = []
        self.srtt_s: float | None = None
        self.is_slow = False

    def add(self, rtt_s: float) -> bool:
        """Feed one probe's RTT; return whether the link counts as slow now."""
        self.srtt_s = rtt_s if self.srtt_s is None else (1 - RTT_ALPHA) * self.srtt_s + RTT_ALPHA * rtt_s
        self.window = (self.window + [rtt_s])[-self.samples:]
        if len(self.window) == self.samples:
            fastest = min(self.window)
            if not self.is_slow and fastest > self.threshold_s:
                self.is_slow = True
            elif self.is_slow and fastest <= self.threshold_s:
                self.is_slow = False
        return self.is_slow

    def reset(self) -> None:
        self.window = []
        self.srtt_s = None
        self.is_slow = False


def decide_mode(*, reachable: bool, slow: bool, working_offline: bool, metered: bool,
                policy: OfflinePolicy) -> tuple[Mode, str]:
    """The mode for these inputs and why; the order is the precedence."""
    if working_offline:
        return Mode.WORKING_OFFLINE, "the user chose to work offline"
    if not reachable:
        return Mode.OFFLINE, "server unreachable"
    if metered and policy.cost_aware_sync and not policy.sync_on_metered:
        return Mode.METERED, "the network is metered and sync is cost-aware"
    if policy.works_always_offline:
        return Mode.ALWAYS_OFFLINE, ("always-offline policy" if policy.always_offline
                                     else f"slow-link latency {policy.slow_link_ms:g} ms (Always Offline)")
    if slow:
        return Mode.SLOW_LINK, f"round trip above {policy.slow_link_ms:g} ms"
    return Mode.ONLINE, "server answered"


class WorkingOfflineState:
    """The folders the user took offline by hand; a JSON file so a restart keeps them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.folders: set[str] = set(json.loads(path.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            self.folders = set()

    def set(self, folder: str, offline: bool) -> None:
        (self.folders.add if offline else self.folders.discard)(folder)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(self.folders)))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)


class LinkMonitor:
    """One probe loop per folder; a reported failure triggers an immediate re-probe."""

    def __init__(self, folders: dict[str, tuple[Upstream, FolderLink]], *, probe_interval_s: float,
                 reconnect_max_s: float, timeout_s: float, idle_probe_s: float = 60.0,
                 policies: dict[str, OfflinePolicy] | None = None,
                 working_offline: WorkingOfflineState | None = None,
                 is_metered: Callable[[], bool] = lambda: False) -> None:
        self.folders = folders
        self.probe_interval_s = probe_interval_s
        self.idle_probe_s = idle_probe_s
        #: folders a caller reported failing: their next look is a full probe
        self._failed: set[str] = set()
        self._no_ticket: set[str] = set()  # folders whose last logon lacked a Kerberos ticket
        self.probes_sent = 0
        self.reconnect_max_s = reconnect_max_s
        self.timeout_s = timeout_s
        self.policies = policies or {}
        self.working_offline = working_offline
        self.is_metered = is_metered
        self._wake: dict[str, trio.Event] = {name: trio.Event() for name in folders}
        self._slow = {
            name: SlowLinkDetector(self.policy(name).slow_link_ms, self.policy(name).slow_link_samples)
            for name in folders
        }
        self._reachable = {name: False for name in folders}
        #: called with (folder, old mode, new mode, reason) on every transition
        self.on_transition: Callable[[str, Mode, Mode, str], None] | None = None

    def policy(self, folder: str) -> OfflinePolicy:
        return self.policies.get(folder) or OfflinePolicy()

    def report_failure(self, folder: str) -> None:
        """Sync or a read saw the server fail: probe now instead of at the next tick."""
        self._failed.add(folder)
        ev = self._wake.get(folder)
        if ev is not None:
            ev.set()

    def wake_all(self) -> None:
        """Re-evaluate every folder now (metered state or a policy changed)."""
        for ev in self._wake.values():
            ev.set()

    def apply_policies(self) -> None:
        """``policies`` changed in place (a policy reload): take the new slow-link threshold
        and re-decide every folder now. The recent probes are kept, so hysteresis goes on."""
        for name, detector in self._slow.items():
            p = self.policy(name)
            detector.threshold_s = p.slow_link_ms / 1000.0
            detector.samples = max(1, p.slow_link_samples)
        self.wake_all()

    def set_working_offline(self, folder: str | None, offline: bool) -> list[str]:
        """The user's switch, for one folder or all; returns the folders changed."""
        names = [folder] if folder else list(self.folders)
        for name in names:
            if name not in self.folders:
                raise CscdError(f"no folder named {name!r}; folders: {', '.join(self.folders)}")
        for name in names:
            if self.working_offline is not None:
                self.working_offline.set(name, offline)
            self._update(name)
            self._wake[name].set()
        return names

    def is_working_offline(self, folder: str) -> bool:
        return self.working_offline is not None and folder in self.working_offline.folders

    def mark_reachable(self, folder: str, reachable: bool, reason: str | None = None) -> None:
        """Set reachability (the daemon's first connect, or a probe) and re-decide."""
        self._reachable[folder] = reachable
        self._update(folder, reason)

    def _update(self, folder: str, reason: str | None = None) -> None:
        link = self.folders[folder][1]
        mode, why = decide_mode(
            reachable=self._reachable[folder],
            slow=self._slow[folder].is_slow,
            working_offline=self.is_working_offline(folder),
            metered=self.is_metered(),
            policy=self.policy(folder),
        )
        if mode is Mode.OFFLINE and reason:
            why = reason
        old = link.mode
        if link.set(mode, why, trio.current_time()):
            level = logging.WARNING if mode is Mode.OFFLINE else logging.INFO
            log.log(level, "folder %s is now %s: %s", folder, mode.value, why)
            if self.on_transition is not None:
                self.on_transition(folder, old, mode, why)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for name in self.folders:
                nursery.start_soon(self._watch, name, name=f"link.{name}")
            task_status.started()

    async def _probe(self, upstream: Upstream, *, light: bool = False) -> float:
        with trio.fail_after(self.timeout_s + 2):
            if not upstream.statistics().connected:
                await upstream.connect()
                light = False
            self.probes_sent += 1
            return await upstream.probe(light=light)

    async def _look(self, name: str, upstream: Upstream, full: bool) -> float | None:
        """One look at a folder's link: a round trip to feed the detector, or None when
        traffic shows the link works but gave no sample (nothing is sent then)."""
        if full:
            upstream.link_activity()  # what traffic saw before this probe is old news
            return await self._probe(upstream)
        activity = upstream.link_activity()
        if activity.fastest_rtt_s is not None:
            return activity.fastest_rtt_s
        if activity.idle_s < self.idle_probe_s:
            return None
        return await self._probe(upstream, light=True)

    async def _watch(self, name: str) -> None:
        upstream, link = self.folders[name]
        backoff = 0.25
        checked = False  # the folder itself was probed since reachability last changed
        while True:
            if self.is_working_offline(name):
                self._update(name)
                checked = False
                wait = math.inf  # no traffic at all until the user says online
            else:
                full = not (checked and self._reachable[name]) or name in self._failed
                self._failed.discard(name)
                try:
                    rtt = await self._look(name, upstream, full)
                    checked = True
                    if rtt is not None:
                        link.rtt_s = rtt
                        self._slow[name].add(rtt)
                    self.mark_reachable(name, True)
                    self._no_ticket.discard(name)
                    backoff = 0.25
                    wait = self.probe_interval_s
                except trio.TooSlowError:
                    await upstream.close()
                    self._lost(name, f"{upstream.description} did not answer in time")
                    checked = False
                    wait = backoff
                except (CscdError, OSError) as exc:
                    reason = str(exc) or type(exc).__name__
                    if isinstance(exc, AccessDenied):
                        reason = f"access denied on {upstream.description}"
                    if isinstance(exc, TicketMissing):
                        reason = f"credentials expired: {exc}"
                        if name not in self._no_ticket:  # one event, not one per retry
                            self._no_ticket.add(name)
                            emit(EventId.CREDENTIALS_EXPIRED, folder=name, server=upstream.description,
                                 reason=str(exc))
                    self._lost(name, reason)
                    checked = False
                    wait = backoff
                backoff = min(self.reconnect_max_s, backoff * 2)
            ev = self._wake[name]
            with trio.move_on_after(wait if math.isfinite(wait) else 3600):
                await ev.wait()
            self._wake[name] = trio.Event()

    def _lost(self, name: str, reason: str) -> None:
        self._slow[name].reset()
        self.folders[name][1].rtt_s = None
        self.mark_reachable(name, False, reason)

"""The link monitor: probes each folder's server and decides its mode.

Owns the writes to each folder's ``FolderLink``; everyone else only reads it. Probes run on
the redirected path itself (``Upstream.probe``), never on the share root, so a user without
rights on ``\\\\server\\share$`` but with rights on ``...\\share$\\alice`` stays online.
A probe never blocks a filesystem operation: it runs in its own task with a deadline.

This slice knows online and offline. Slow link, always offline, working offline and metered
come with issue 4; they plug in as more inputs to ``_decide``.
"""

from __future__ import annotations

import logging
import math

import trio

from cscd.errors import AccessDenied, CscdError
from cscd.types import FolderLink, Mode
from cscd.upstream.base import Upstream

log = logging.getLogger(__name__)


class LinkMonitor:
    """One probe loop per folder; a reported failure triggers an immediate re-probe."""

    def __init__(self, folders: dict[str, tuple[Upstream, FolderLink]], *, probe_interval_s: float,
                 reconnect_max_s: float, timeout_s: float) -> None:
        self.folders = folders
        self.probe_interval_s = probe_interval_s
        self.reconnect_max_s = reconnect_max_s
        self.timeout_s = timeout_s
        self._wake: dict[str, trio.Event] = {name: trio.Event() for name in folders}

    def report_failure(self, folder: str) -> None:
        """Sync or a read saw the server fail: probe now instead of at the next tick."""
        ev = self._wake.get(folder)
        if ev is not None:
            ev.set()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for name in self.folders:
                nursery.start_soon(self._watch, name, name=f"link.{name}")
            task_status.started()

    def _set(self, name: str, link: FolderLink, mode: Mode, reason: str) -> None:
        if link.set(mode, reason, trio.current_time()):
            level = logging.WARNING if mode is Mode.OFFLINE else logging.INFO
            log.log(level, "folder %s is now %s: %s", name, mode.value, reason)

    async def _watch(self, name: str, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        upstream, link = self.folders[name]
        backoff = 0.25
        while True:
            try:
                with trio.fail_after(self.timeout_s + 2):
                    if not upstream.statistics().connected:
                        await upstream.connect()
                    rtt = await upstream.probe()
                link.rtt_s = rtt
                self._set(name, link, Mode.ONLINE, f"server answered in {rtt * 1000:.1f} ms")
                backoff = 0.25
                wait = self.probe_interval_s
            except trio.TooSlowError:
                self._set(name, link, Mode.OFFLINE, f"{upstream.description} did not answer in time")
                await upstream.close()
                wait = backoff
            except (CscdError, OSError) as exc:
                reason = str(exc) or type(exc).__name__
                if isinstance(exc, AccessDenied):
                    reason = f"access denied on {upstream.description}"
                self._set(name, link, Mode.OFFLINE, reason)
                wait = backoff
            backoff = min(self.reconnect_max_s, backoff * 2)
            ev = self._wake[name]
            with trio.move_on_after(wait if math.isfinite(wait) else 60):
                await ev.wait()
            self._wake[name] = trio.Event()

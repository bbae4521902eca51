"""Selective wipe, as the daemon carries it out (``device.wipe``, Work Folders' selective wipe).

Owns the order of what happens to a folder the device policy revokes, at start or at any
policy fetch after (``cscd reload``, SIGHUP, the periodic refresh):

1. it is not served any more: every call on it fails with EACCES (``Hydration.revoked``);
2. the changes waiting for its server go up first. Where the server cannot be reached,
   ``device.wipe_when_unreachable`` decides: ``wait`` (the default) keeps them, and the
   wipe, until it answers; ``wipe`` goes on and the changes are lost. Either way the log says
   which, with the count (event 7010);
3. its traffic stops (working offline, so no watch or listing brings names back);
4. its cached copy goes (``cache.wipe``): content overwritten, or in a sealed cache its
   folder's key destroyed, index rows removed (event 7011). Nothing outside the redirected folder is touched: not the home directory, not the
   other folders, not the server.

A folder stays revoked for the daemon's life; a policy that no longer revokes it takes a
restart to serve it again (it is then listed anew from the server).
"""

from __future__ import annotations

import logging

import trio

from cscd.cache.cache import Cache
from cscd.cache.wipe import wipe_folder
from cscd.errors import CscdError
from cscd.events import EventId, emit
from cscd.link import LinkMonitor
from cscd.operations.handlers import pending_by_folder
from cscd.policy.model import DevicePolicy
from cscd.sync.engine import MANUAL_MODES, SyncEngine
from cscd.types import ROOT_ID

log = logging.getLogger(__name__)

#: how often a revoked folder with changes looks again at its server
RETRY_S = 2.0
#: sync rounds in a row that upload nothing of a revoked folder before the rest is given up
STUCK_ROUNDS = 5


class WipeKeeper:
    def __init__(self, cache: Cache, engine: SyncEngine, monitor: LinkMonitor, device: DevicePolicy) -> None:
        self.cache, self.engine, self.monitor = cache, engine, monitor
        self.device = device
        self.state: dict[str, str] = {}  # folder → waiting, uploading, wiped
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.apply(self.device)
            task_status.started()
            await trio.sleep_forever()

    def apply(self, device: DevicePolicy) -> list[str]:
        """The policy in force now (start, each reload): start wiping what it newly revokes."""
        self.device = device
        started = []
        for name in device.wiped(list(self.monitor.folders)):
            if name in self.state or self._nursery is None:
                continue
            self.state[name] = "waiting"
            self.cache.hydration.revoked[name.encode()] = "revoked by the device policy (device.wipe)"
            self.cache.core.publish(("entry", ROOT_ID, name.encode()))
            self._nursery.start_soon(self._wipe, name, name=f"wipe:{name}")
            started.append(name)
        return started

    def as_dict(self) -> dict[str, str]:
        return dict(self.state)

    def _pending(self, name: str) -> int:
        return pending_by_folder(self.cache, [name])[name][0]

    async def _wipe(self, name: str) -> None:
        pending = self._pending(name)
        if not pending and not self.cache.namespace.has_content(name.encode()):
            # Wiped before (a start with the policy still in force), or never used here.
            self.monitor.set_working_offline(name, True)
            self.state[name] = "wiped"
            log.info("%s: revoked by the device policy; nothing of it is cached here", name)
            return
        emit(EventId.CACHE_WIPE_STARTED, folder=name, pending=pending,
             then="go to the server first" if self._reachable(name) or self.device.wipe_when_unreachable == "wait"
             else "are lost: the server cannot be reached (device.wipe_when_unreachable: wipe)")
        lost = await self._upload_first(name)
        self.monitor.set_working_offline(name, True)  # no watch or listing brings names back
        try:
            report = await wipe_folder(self.cache.core, name.encode())
        except OSError as exc:
            # The folder stays refused; the next start (or fetch after it) tries again.
            log.error("%s: revoked, but its cached copy could not be destroyed: %s", name, exc)
            self.state[name] = f"failed: {exc.strerror or exc}"
            return
        self.state[name] = "wiped"
        how = f"{report.bytes_overwritten} bytes overwritten"
        if report.keys_erased:
            how = f"its key destroyed (crypto-erase), {how}"
        emit(EventId.CACHE_WIPED, folder=name, files=report.files, how=how, lost=lost)

    async def _upload_first(self, name: str) -> int:
        """Push the folder's changes until none is left; returns how many are given up: all of
        them where the server cannot be reached and the policy says ``wipe``, and those the
        server keeps refusing (``STUCK_ROUNDS`` rounds without progress)."""
        said_waiting, stuck, last = False, 0, None
        while (pending := self._pending(name)) > 0:
            if self._reachable(name):
                self.state[name] = "uploading"
                stuck = stuck + 1 if pending == last else 0
                last = pending
                if stuck >= STUCK_ROUNDS:
                    log.warning("%s: revoked; %d changes are refused by the server round after round (see cscd "
                                "status): wiped without them", name, pending)
                    return pending
                try:
                    await self.engine.sync_now(name)
                except CscdError as exc:
                    log.info("%s: revoked, its %d changes did not go up yet: %s", name, pending, exc)
                if self._pending(name):
                    await trio.sleep(RETRY_S)
                continue
            if self.device.wipe_when_unreachable == "wipe":
                log.warning("%s: revoked and its server cannot be reached: wiped anyway as the policy says "
                            "(device.wipe_when_unreachable: wipe); %d changes are lost", name, pending)
                return pending
            if not said_waiting:
                log.warning("%s: revoked; its server cannot be reached, so its %d changes wait for it before "
                            "the wipe (device.wipe_when_unreachable: wait)", name, pending)
                said_waiting = True
            self.state[name] = "waiting"
            last, stuck = None, 0
            await trio.sleep(RETRY_S)
        return 0

    def _reachable(self, name: str) -> bool:
        link = self.monitor.folders[name][1]
        return link.mode in MANUAL_MODES

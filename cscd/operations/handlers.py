"""The control handlers: what each ``cscd`` command does inside the daemon, and the wiring of
``control``, ``events`` and ``metrics`` to the running services (``start_operations``).

Handlers resolve paths inside the mount to cache nodes; the cache and sync do the work.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
import trio.lowlevel

from cscd import control, metrics
from cscd.cache import filestate
from cscd.cache.cache import Cache
from cscd.cache.nodes import DirtyReason
from cscd.errors import CscdError, NotFound
from cscd.events import EventId, emit
from cscd.link import LinkMonitor
from cscd.operations import systemd
from cscd.operations.compliance import ComplianceWatch
from cscd.operations.desktop import DesktopNotifier, bus_address
from cscd.operations.jobs import Job, JobTable
from cscd.operations.policy_in_force import PolicyKeeper
from cscd.policy.config import DaemonConfig
from cscd.policy.model import ROAMING, Policy
from cscd.profile.service import ProfileService
from cscd.sync.engine import MANUAL_MODES, SyncEngine
from cscd.types import FolderLink, Mode

if TYPE_CHECKING:
    from cscd.operations.wipe import WipeKeeper

log = logging.getLogger(__name__)


@dataclass
class RedirectionStatus:
    """Where the logon's folder redirection stands, for ``cscd status`` (and the tests):
    ``none`` (nothing to do), ``running``, ``waiting`` (a removal waits for uploads),
    ``done`` (every step tried; see ``folders``)."""

    state: str = "none"
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "folders": self.folders}


def pending_by_folder(cache: Cache, names: Iterable[str]) -> dict[str, tuple[int, int]]:
    """Folder → (changes waiting to upload, their bytes), from the dirty set (local, fast)."""
    counts = {name: [0, 0] for name in names}
    for node, reasons in cache.sync.dirty_nodes():
        try:
            entry = counts.get(cache.core.folder_of(node)[0].decode())
        except NotFound:
            continue  # detached below a deleted directory; pushed with it
        if entry is not None:
            entry[0] += 1
            if not node.is_dir and not reasons & DirtyReason.DELETE:
                entry[1] += node.size
    return {name: (c, b) for name, (c, b) in counts.items()}


async def _observe(collector: metrics.Collector, interval_s: float = 0.5) -> None:
    while True:
        await trio.sleep(interval_s)
        collector.observe()


def _folder_of_path(mount: Path, path: str, links: dict[str, FolderLink]) -> str:
    try:
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(mount))
    except ValueError:
        raise control.ControlError("invalid_argument", f"{path} is not inside the mount {mount}") from None
    if not rel.parts or rel.parts[0] not in links:
        raise control.ControlError("invalid_argument", f"{path} is not inside a redirected folder of {mount}")
    return rel.parts[0]


def profile_status(profile: ProfileService) -> dict[str, Any]:
    """The roaming profile's part of ``cscd status``."""
    st = profile.statistics()
    upload = profile.settings
    return {"target": profile.upstream.description, "running": st.is_running,
            "logons": st.logons, "logoffs": st.logoffs, "uploads": st.uploads,
            "skipped": st.skipped, "failed": st.failed, "last_result": st.last_result,
            "background_upload": upload.is_background_upload_on,
            "next_upload_in_s": None if st.next_upload_at is None
            else round(max(0.0, st.next_upload_at - trio.current_time()), 1)}


async def roam(profile: ProfileService | None, policy: Policy, action: str, job: Job | None = None
               ) -> dict[str, Any]:
    """``cscd profile logon|logoff``: run it now and answer with its report. ``job`` counts
    the bytes the profile's link carries meanwhile (no file totals: the walk finds them)."""
    if profile is None:
        if not policy.is_primary_computer(ROAMING):
            why = f"{policy.subject.host} is not one of {policy.subject.user}'s primary computers"
        elif policy.roaming_profile.target is None:
            why = "the policy sets no roaming_profile.target for this user"
        else:
            why = "roaming_profile.enabled is false for this user"
        raise control.ControlError("not_configured", f"no roaming profile here: {why}")
    if job is not None:
        up = profile.upstream
        job.phase = "pulling" if action == "logon" else "pushing"
        job.count_from(nbytes=lambda: (lambda st: st.bytes_read + st.bytes_written)(up.statistics()))
    try:
        return await (profile.logon() if action == "logon" else profile.logoff(sign_out=True))
    except CscdError as exc:
        raise control.ControlError("unavailable", f"profile {action} did not finish: {exc}; "
                                   f"nothing was lost, run it again when the server answers") from None


async def wait_logon(profile: ProfileService | None, args: dict) -> dict[str, Any]:
    """``cscd profile wait-logon``: the session start waits (bounded) for the start's pull."""
    limit = args.get("limit_s", 120)
    if not isinstance(limit, (int, float)) or isinstance(limit, bool) or not 0 <= limit <= 3600:
        raise control.ControlError("invalid_argument", f"limit_s: expected seconds from 0 to 3600, got {limit!r}")
    if profile is None:
        return {"result": "no_profile", "message": "no roaming profile here: nothing to wait for"}
    return await profile.wait_start_pull(float(limit))


async def start_operations(nursery: trio.Nursery, config: DaemonConfig, cache: Cache, monitor: LinkMonitor,
                            engine: SyncEngine, links: dict[str, FolderLink], keeper: PolicyKeeper,
                            redirection: RedirectionStatus, profile: ProfileService | None = None,
                            compliance: ComplianceWatch | None = None, wipes: WipeKeeper | None = None) -> None:
    """Wire events, counters, systemd notifications and the control socket; start their tasks."""
    upstreams = {name: up for name, (up, _link) in monitor.folders.items()}
    collector = metrics.Collector(
        links=links, sync=engine, upstreams=upstreams, cache=cache.hydration, clock=trio.current_time,
        targets={n: up.description for n, up in upstreams.items()},
        cache_usage=lambda: (cache.used_bytes, cache.residency.limit_bytes),
        device_compliance=None if compliance is None else compliance.gauge)

    def on_transition(folder: str, old: Mode, new: Mode, reason: str) -> None:
        emit(EventId.MODE_CHANGED, folder=folder, mode=new.value, previous=old.value, reason=reason,
             cause=metrics.mode_cause(old, new))
        systemd.sd_notify(f"STATUS={systemd.modes_text(links)}")

    sessions: dict[str, object] = {}
    jobs = JobTable()

    def on_session(folder: str, kind: str, fields: dict) -> None:
        if kind == "started":
            sessions[folder] = collector.begin([folder], "background")
        elif folder in sessions:
            collector.end(sessions.pop(folder), pending=fields.get("pending"))

    monitor.on_transition = on_transition
    engine.on_session = on_session

    async def sync(args: dict) -> dict:
        path = control.argument(args, "path", str)
        folder = _folder_of_path(config.mount, path, links) if path else None
        folders = [folder] if folder else list(links)
        skipped = {n: f"{links[n].mode.value}: {links[n].reason}" for n in folders
                   if links[n].mode not in MANUAL_MODES}

        async def run() -> dict:
            before, t0 = engine.statistics(), trio.current_time()
            session = collector.begin([n for n in folders if n not in skipped], "manual")
            job = jobs.start(control.argument(args, "job", str), "sync", path or "all folders")
            waiting = pending_by_folder(cache, folders)
            job.add_total(sum(c for c, _ in waiting.values()), sum(b for _, b in waiting.values()))
            job.count_from(files=lambda: engine.statistics().files_uploaded,
                           nbytes=lambda: engine.statistics().bytes_uploaded)
            job.phase = "uploading"
            try:
                pending = await engine.sync_now(folder)
            except CscdError as exc:
                collector.end(session, error=str(exc))
                raise
            finally:
                jobs.finish(job)
            collector.end(session, pending=pending)
            after = engine.statistics()
            return {"folders": folders, "skipped": skipped, "pending": pending,
                    "files_uploaded": after.files_uploaded - before.files_uploaded,
                    "bytes_uploaded": after.bytes_uploaded - before.bytes_uploaded,
                    "duration_s": round(trio.current_time() - t0, 3)}

        if control.argument(args, "wait", bool, False):
            return await run()

        async def background() -> None:
            try:
                await run()
            except CscdError as exc:
                log.info("manual sync did not finish: %s", exc)

        nursery.start_soon(background, name="sync.manual")
        return {"started": True, "folders": folders, "skipped": skipped}

    async def working_offline(args: dict, offline: bool) -> dict:
        folder = control.argument(args, "folder", str)
        revoked = [n for n in ([folder] if folder else links) if n.encode() in cache.hydration.revoked]
        if not offline and revoked:
            raise control.ControlError("invalid_argument", f"{', '.join(revoked)}: revoked by the device policy "
                                       "(device.wipe): it stays offline until cscd restarts under a policy that "
                                       "no longer revokes it")
        changed = monitor.set_working_offline(folder, offline)
        state = {n: links[n].mode.value for n in changed}
        return {"folders": state, "message": "; ".join(f"{n}: {m}" for n, m in state.items())}

    async def status(args: dict) -> dict:
        answer = collector.status(pending_by_folder(cache, links))
        for name, folder in answer["folders"].items():
            folder["cached"] = name.encode() not in cache.residency.uncached_folders
            folder["changes"] = engine.change_tracking(name)
            up = upstreams.get(name)
            serving = getattr(up, "serving", None)
            # a DFS namespace path: which share serves it now (another after a failover)
            is_referred = serving is not None and serving != getattr(up, "target", None)
            folder["served_by"] = str(serving) if is_referred else None
            space = engine.space.of_folder(name)
            folder["space"] = None if space is None else space.as_dict(trio.current_time())
        disk = cache.core.store.statvfs()
        answer.setdefault("cache", {})["disk"] = {"total_bytes": disk.f_blocks * disk.f_frsize,
                                                  "available_bytes": disk.f_bavail * disk.f_frsize}
        answer["cache"]["protection"] = cache.protection.as_dict()
        if compliance is not None:
            answer["device"] = {"screen_lock": compliance.as_dict(),
                                "wiped": {} if wipes is None else wipes.as_dict()}
        answer["jobs"] = [j for j in jobs.listed() if not j["finished"]]
        answer.update(mount=str(config.mount), pid=os.getpid(), redirection=redirection.as_dict(),
                      is_primary_computer=keeper.policy.is_primary_computer(),
                      profile=None if profile is None else profile_status(profile))
        return answer

    async def stats(args: dict) -> dict:
        return collector.stats()

    async def reload_handler(args: dict) -> dict:
        answer = await keeper.reload("cscd reload")
        if not answer["reloaded"]:
            raise control.ControlError("policy_rejected", answer["message"])
        return answer

    async def policy_show(args: dict) -> dict:
        return keeper.show()

    async def node_at(args: dict):
        path = control.argument(args, "path", str)
        _folder_of_path(config.mount, path, links)
        # abspath is string work (and getcwd), no filesystem access: fine on the trio thread
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(config.mount))  # noqa: ASYNC240
        try:
            return await cache.namespace.resolve([os.fsencode(p) for p in rel.parts])
        except NotFound:
            raise control.ControlError("invalid_argument", f"{path}: no such file or directory") from None

    async def pin(args: dict, pinned: bool) -> dict:
        node = await node_at(args)
        cache.pin(node.id, pinned)
        missing = 0
        if pinned:
            # Like "Always available offline": answer once the content is here, however long
            # that takes (the CLI follows the job), or once it cannot be fetched now (then
            # sync.pins keeps trying while online).
            job = jobs.start(control.argument(args, "job", str), "pin", args["path"])
            job.count_from(nbytes=lambda: cache.hydration.bytes_fetched)
            try:
                missing = await engine.hydrate_pinned(job)
            finally:
                jobs.finish(job)
        return {"path": args["path"], "pinned": pinned, "files_missing": missing}

    async def info(args: dict) -> dict:
        """``cscd info PATH``: the file's offline state (``filestate``) and where it lives."""
        node = await node_at(args)
        state = filestate.describe(cache.core, node.id, engine.pusher).as_dict()
        try:
            folder, server_path = cache.core.remote_path(node)
        except NotFound:  # not on the server yet
            state["server_path"] = None
        else:
            up = upstreams.get(folder.decode())
            where = str(getattr(up, "serving", None) or getattr(up, "target", "") or "")
            rel = server_path.decode("utf-8", "surrogateescape").replace("/", "\\")
            state["server_path"] = "\\".join(p for p in (where, rel) if p) or None
        return dict(state, path=args["path"])

    async def free_space(args: dict) -> dict:
        node = await node_at(args)
        job = jobs.start(control.argument(args, "job", str), "free-space", args["path"])
        job.phase = "freeing"
        files = freed = 0
        try:
            todo = cache.residency.files_under(node.id)
            job.add_total(files=len(todo))
            for i, node_id in enumerate(todo):
                n = cache.residency.free_space(node_id)
                job.done(files=1, nbytes=n or 0)
                if n is not None:
                    files, freed = files + 1, freed + n
                if i % 64 == 63:
                    await trio.lowlevel.checkpoint()  # a folder of 100,000 files must not stop the mount
        finally:
            jobs.finish(job)
        return {"path": args["path"], "files": files, "bytes": freed}

    async def conflicts(args: dict) -> dict:
        mount = os.fsdecode(config.mount)
        return {"conflicts": [dict(c, copy=f"{mount}/{c['copy']}", original=f"{mount}/{c['original']}")
                              for c in cache.sync.list_conflicts()]}

    async def resolve(args: dict) -> dict:
        node = await node_at(args)
        keep = control.argument(args, "keep", str)
        result = await cache.sync.resolve_conflict(node, keep)
        emit(EventId.CONFLICT_RESOLVED, folder=_folder_of_path(config.mount, args["path"], links),
             path=args["path"], keep=keep)
        return result

    async def followed(args: dict, kind: str, target: str, work) -> dict:
        job = jobs.start(control.argument(args, "job", str), kind, target)
        try:
            return await work(job)
        finally:
            jobs.finish(job)

    async def jobs_handler(args: dict) -> dict:
        return {"jobs": jobs.listed()}

    handlers = {
        "status": status,
        "jobs": jobs_handler,
        "stats": stats,
        "events": control.events_handler(),
        "sync": sync,
        "reload": reload_handler,
        "offline": lambda args: working_offline(args, True),
        "online": lambda args: working_offline(args, False),
        "pin": lambda args: pin(args, True),
        "unpin": lambda args: pin(args, False),
        "free-space": free_space,
        "info": info,
        "conflicts": conflicts,
        "conflicts.resolve": resolve,
        "policy.show": policy_show,
        "profile.logon": lambda args: followed(args, "profile logon", "profile",
                                                lambda job: roam(profile, keeper.policy, "logon", job)),
        "profile.logoff": lambda args: followed(args, "profile logoff", "profile",
                                                 lambda job: roam(profile, keeper.policy, "logoff", job)),
        "profile.wait_logon": lambda args: wait_logon(profile, args),
    }
    desktop = DesktopNotifier(
        enabled=lambda folder: (engine.policies[folder].notifications if folder in engine.policies
                                else keeper.policy.offline_files.notifications),
        conflicts=lambda: [dict(c, copy=f"{os.fsdecode(config.mount)}/{c['copy']}",
                                original=f"{os.fsdecode(config.mount)}/{c['original']}")
                           for c in cache.sync.list_conflicts()],
        cache_usage=lambda: (cache.used_bytes, cache.residency.limit_bytes),
        bus=bus_address(config.notify_dbus))
    nursery.start_soon(desktop.run, name="desktop-notifications")
    if profile is not None:
        profile.on_pull_late = desktop.profile_pull_timed_out
    collector.observe()  # the baseline: what happens from now on is news
    nursery.start_soon(_observe, collector, name="metrics")
    path = control.socket_path(config.path, config.cache)
    await nursery.start(control.serve_control, path, handlers, name="control")
    interval = systemd.watchdog_interval_s()
    if interval is not None:
        nursery.start_soon(systemd.watchdog, interval, name="watchdog")

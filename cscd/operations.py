"""The daemon's operations: what each ``cscd`` command does inside the daemon, plus events,
counters and systemd notifications (READY, STATUS, WATCHDOG).

Owns the control handlers and the wiring of ``control``, ``events`` and ``metrics`` to the
running services. Split from ``daemon.py`` (which builds the services and mounts) so each
stays one owner; like ``daemon``, it may import every layer, and only ``daemon`` imports it.
Handlers resolve paths inside the mount to cache nodes; the cache and sync do the work.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import trio

from cscd import control, metrics
from cscd.cache.cache import Cache
from cscd.cache.nodes import DirtyReason
from cscd.errors import CscdError, NotFound
from cscd.events import EventId, emit
from cscd.link import LinkMonitor
from cscd.policy.config import DaemonConfig
from cscd.sync.engine import MANUAL_MODES, SyncEngine
from cscd.types import FolderLink, Mode

log = logging.getLogger(__name__)


def sd_notify(message: str) -> None:
    """Send one notification to systemd if it asked for them (no library needed)."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message.encode())
    except OSError as exc:
        log.debug("sd_notify failed: %s", exc)


def modes_text(links: dict[str, FolderLink]) -> str:
    return ", ".join(f"{n}: {link.mode.value}" for n, link in links.items())


async def wait_mount_answers(mount: Path, timeout_s: float = 30.0) -> None:
    """Stat the mountpoint from a thread: it returns only once ``pyfuse3.main`` answers."""
    try:
        with trio.fail_after(timeout_s):
            await trio.to_thread.run_sync(os.stat, mount, abandon_on_cancel=True)
    except (OSError, trio.TooSlowError) as exc:
        raise CscdError(f"{mount}: the mount does not answer: {exc or 'timed out'}") from None


def reload(source: str) -> dict:
    """SIGHUP and ``cscd reload``; policy reload arrives with issue 6."""
    message = "nothing to reload yet: policy files come with issue 6"
    log.info("%s: %s", source, message)
    emit(EventId.RELOADED, result=message, source=source)
    return {"reloaded": False, "message": message}


def _watchdog_interval_s() -> float | None:
    """Half of ``$WATCHDOG_USEC`` when systemd asked this process for watchdog pings."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    try:
        if not usec or (pid and int(pid) != os.getpid()) or int(usec) <= 0:
            return None
        return int(usec) / 2e6
    except ValueError:
        return None


async def _watchdog(interval_s: float) -> None:
    # Runs on the trio loop, so a ping proves the loop (and with it FUSE) is not stuck.
    while True:
        sd_notify("WATCHDOG=1")
        await trio.sleep(interval_s)


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


async def start_operations(nursery: trio.Nursery, config: DaemonConfig, cache: Cache, monitor: LinkMonitor,
                            engine: SyncEngine, links: dict[str, FolderLink]) -> None:
    """Wire events, counters, systemd notifications and the control socket; start their tasks."""
    upstreams = {name: up for name, (up, _link) in monitor.folders.items()}
    collector = metrics.Collector(
        links=links, sync=engine, upstreams=upstreams, cache=cache, clock=trio.current_time,
        targets={n: up.description for n, up in upstreams.items()},
        cache_usage=lambda: (cache.used_bytes, cache.residency.limit_bytes))

    def on_transition(folder: str, old: Mode, new: Mode, reason: str) -> None:
        emit(EventId.MODE_CHANGED, folder=folder, mode=new.value, previous=old.value, reason=reason,
             cause=metrics.mode_cause(old, new))
        sd_notify(f"STATUS={modes_text(links)}")

    sessions: dict[str, object] = {}

    def on_session(folder: str, kind: str, fields: dict) -> None:
        if kind == "started":
            sessions[folder] = collector.begin([folder], "background")
        elif folder in sessions:
            collector.end(sessions.pop(folder), pending=fields.get("pending"))

    monitor.on_transition = on_transition
    engine.on_session = on_session

    def pending_by_folder() -> dict[str, tuple[int, int]]:
        counts = {name: [0, 0] for name in links}
        for node, reasons in cache.dirty_nodes():
            try:
                entry = counts.get(cache.folder_of(node)[0].decode())
            except NotFound:
                continue  # detached below a deleted directory; pushed with it
            if entry is not None:
                entry[0] += 1
                if not node.is_dir and not reasons & DirtyReason.DELETE:
                    entry[1] += node.size
        return {name: (c, b) for name, (c, b) in counts.items()}

    async def sync(args: dict) -> dict:
        path = control.argument(args, "path", str)
        folder = _folder_of_path(config.mount, path, links) if path else None
        folders = [folder] if folder else list(links)
        skipped = {n: f"{links[n].mode.value}: {links[n].reason}" for n in folders
                   if links[n].mode not in MANUAL_MODES}

        async def run() -> dict:
            before, t0 = engine.statistics(), trio.current_time()
            session = collector.begin([n for n in folders if n not in skipped], "manual")
            try:
                pending = await engine.sync_now(folder)
            except CscdError as exc:
                collector.end(session, error=str(exc))
                raise
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
        changed = monitor.set_working_offline(control.argument(args, "folder", str), offline)
        state = {n: links[n].mode.value for n in changed}
        return {"folders": state, "message": "; ".join(f"{n}: {m}" for n, m in state.items())}

    async def status(args: dict) -> dict:
        answer = collector.status(pending_by_folder())
        answer.update(mount=str(config.mount), pid=os.getpid())
        return answer

    async def stats(args: dict) -> dict:
        return collector.stats()

    async def reload_handler(args: dict) -> dict:
        return reload("cscd reload")

    async def node_at(args: dict):
        path = control.argument(args, "path", str)
        _folder_of_path(config.mount, path, links)
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(config.mount))
        try:
            return await cache.resolve([os.fsencode(p) for p in rel.parts])
        except NotFound:
            raise control.ControlError("invalid_argument", f"{path}: no such file or directory") from None

    async def pin(args: dict, pinned: bool) -> dict:
        node = await node_at(args)
        cache.pin(node.id, pinned)
        if pinned:
            nursery.start_soon(engine.hydrate_pinned, name="sync.pins-now")
        return {"path": args["path"], "pinned": pinned}

    async def free_space(args: dict) -> dict:
        node = await node_at(args)
        files, freed = cache.free_space(node.id)
        return {"path": args["path"], "files": files, "bytes": freed}

    async def conflicts(args: dict) -> dict:
        mount = os.fsdecode(config.mount)
        return {"conflicts": [dict(c, copy=f"{mount}/{c['copy']}", original=f"{mount}/{c['original']}")
                              for c in cache.list_conflicts()]}

    async def resolve(args: dict) -> dict:
        node = await node_at(args)
        keep = control.argument(args, "keep", str)
        result = await cache.resolve_conflict(node, keep)
        emit(EventId.CONFLICT_RESOLVED, folder=_folder_of_path(config.mount, args["path"], links),
             path=args["path"], keep=keep)
        return result

    handlers = {
        "status": status,
        "stats": stats,
        "events": control.events_handler(),
        "sync": sync,
        "reload": reload_handler,
        "offline": lambda args: working_offline(args, True),
        "online": lambda args: working_offline(args, False),
        "pin": lambda args: pin(args, True),
        "unpin": lambda args: pin(args, False),
        "free-space": free_space,
        "conflicts": conflicts,
        "conflicts.resolve": resolve,
        "policy.show": control.not_implemented("policy show", 6, "the effective policy with file and line"),
        "profile.logon": control.not_implemented("profile logon", 7, "the roaming profile is not built yet"),
        "profile.logoff": control.not_implemented("profile logoff", 7, "the roaming profile is not built yet"),
    }
    collector.observe()  # the baseline: what happens from now on is news
    nursery.start_soon(_observe, collector, name="metrics")
    path = control.socket_path(config.path, config.cache)
    await nursery.start(control.serve_control, path, handlers, name="control")
    interval = _watchdog_interval_s()
    if interval is not None:
        nursery.start_soon(_watchdog, interval, name="watchdog")

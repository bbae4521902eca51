"""The daemon's operations: what each ``cscd`` command does inside the daemon, plus events,
counters and systemd notifications (READY, STATUS, WATCHDOG).

Owns the control handlers and the wiring of ``control``, ``events`` and ``metrics`` to the
running services, and the policy in force (``PolicyKeeper``: read at start, replaced on
SIGHUP / ``cscd reload`` only by a valid policy, shown by ``cscd policy show``). Split from
``daemon.py`` (which builds the services and mounts) so each stays one owner; like
``daemon``, it may import every layer, and only ``daemon`` imports it. Handlers resolve paths
inside the mount to cache nodes; the cache and sync do the work.

What a reload can change while running: the Offline Files values (slow-link threshold,
background-sync interval and offset, always offline, fetch on slow link, cost-aware sync and
its override, the cache size limit, the maximum file size). Everything else — the folder set
and targets, primary computers, the per-folder redirection keys (``offline`` included),
security and credentials, and ``offline_files.exclude_patterns`` (changing which names sync
sees needs every directory re-listed and the local-only files looked at again) — is decided
at start: the reply of ``cscd reload`` lists those keys and asks for a restart.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from cscd import control, metrics
from cscd.cache.cache import Cache
from cscd.cache.nodes import DirtyReason
from cscd.errors import ConfigError, CscdError, NotFound
from cscd.events import EventId, emit
from cscd.link import LinkMonitor
from cscd.policy.central import MANIFEST, CentralPolicyRejected, copy_central_policy
from cscd.policy.config import DaemonConfig
from cscd.policy.machine import changed_keys, current_subject, daemon_config, load_policy, policy_rows
from cscd.policy.model import Policy, Subject
from cscd.profile.service import ProfileService
from cscd.sync.engine import MANUAL_MODES, SyncEngine
from cscd.types import FolderLink, Mode, OfflinePolicy
from cscd.upstream import open_upstream

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
    return ", ".join(f"{n}: {link.mode.value}" for n, link in links.items()) or "no folders"


async def wait_mount_answers(mount: Path, timeout_s: float = 30.0) -> None:
    """Stat the mountpoint from a thread: it returns only once ``pyfuse3.main`` answers."""
    try:
        with trio.fail_after(timeout_s):
            await trio.to_thread.run_sync(os.stat, mount, abandon_on_cancel=True)
    except (OSError, trio.TooSlowError) as exc:
        raise CscdError(f"{mount}: the mount does not answer: {exc or 'timed out'}") from None


# ---------------------------------------------------------------- policy in force

#: Roaming-profile keys that choose the server connection: applied at the next start.
RESTART_ROAMING_KEYS = frozenset({"roaming_profile.target", "roaming_profile.enabled"})
#: Offline Files keys that a policy may set but nothing enforces yet (shown, not applied).
NOT_ENFORCED_KEYS: frozenset[str] = frozenset()
#: Offline Files keys that take effect only at the next start.
RESTART_OFFLINE_KEYS = frozenset({"offline_files.exclude_patterns"})
_LOCATED = re.compile(r"^(?P<file>(?:/|\\\\)[^:]*):(?P<line>\d+): (?:(?P<key>[A-Za-z0-9_.%$-]+): )?(?P<reason>.*)$",
                      re.DOTALL)


def effective_config(base: DaemonConfig, policy: Policy) -> DaemonConfig:
    """The daemon's YAML with the policy laid over it (``machine.daemon_config``), plus the
    cache size limit where a policy file sets it. Pure."""
    config = daemon_config(base, policy)
    if policy.origin("offline_files.cache_size_limit") is not None:
        limit = policy.offline_files.cache_size_limit
        config = replace(config, cache_limit_bytes=limit.size_bytes,
                         cache_limit_fraction=(limit.percent or 0.0) / 100)
    return config


def cache_limit_bytes(config: DaemonConfig) -> int:
    """The content-store limit in bytes: the configured size, or a share of the cache's
    filesystem (one ``statvfs``, fast and local)."""
    if config.cache_limit_bytes is not None:
        return config.cache_limit_bytes
    st = os.statvfs(config.cache)
    return int(st.f_blocks * st.f_frsize * config.cache_limit_fraction)


def located_fields(message: str) -> dict[str, str]:
    """``FILE:LINE: KEY: reason`` → the POLICY_REJECTED fields (``?`` for a missing part)."""
    m = _LOCATED.match(message)
    if m is None:
        return {"file": "?", "line": "?", "key": "?", "reason": message}
    return {"file": m["file"], "line": m["line"], "key": m["key"] or "?", "reason": m["reason"]}


@dataclass
class PolicyKeeper:
    """The machine policy in force for this user, and what a reload may change live.

    ``open`` reads it at start (a ConfigError there stops the daemon). ``reload`` reads the
    files again and, only if they are valid, replaces the policy, updates the shared
    per-folder ``policies`` dict in place (the link monitor, sync and the folder source hold
    the same dict) and the cache size limit, and says which changed keys wait for a restart.
    Reading the files is a few small local reads, done on the trio thread.

    The central policy (``central_source`` in the local files): both ``open`` and ``reload``
    first bring its local copy (``CACHE/central-policy``) up to date from the server
    (``policy.central``: only changed files are read), within ``CENTRAL_TIMEOUT_S``; then the
    copy is read as the last files of the file order. A central file that does not validate
    is never copied: WARNING and POLICY_REJECTED name the server file, line and key, and the
    last good copy stays in force — one typo on the server must not stop a fleet's starts. A
    source that cannot be reached leaves the last copy in force too (WARNING); with no copy
    yet only the local files apply.
    """

    base: DaemonConfig
    policy: Policy
    #: folder → the Offline Files values it runs with; shared with monitor, sync and source
    policies: dict[str, OfflinePolicy] = field(default_factory=dict)
    monitor: LinkMonitor | None = None
    cache: Cache | None = None
    #: applies a new policy's roaming-profile settings to the running profile service
    profile: Callable[[Policy], None] | None = None
    #: what the last refresh of the central copy did, for ``cscd policy show``
    central: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def subject(base: DaemonConfig) -> Subject:
        """This user on this machine, with the configured home directory."""
        try:
            subject = current_subject()
        except KeyError:
            raise ConfigError(f"uid {os.getuid()} has no entry in the password database; machine policy "
                              f"needs a user name") from None
        return replace(subject, home=str(base.home_dir))

    @classmethod
    async def open(cls, base: DaemonConfig) -> PolicyKeeper:
        """Refresh the central copy, then read the policy for start-up; raises ConfigError
        (``FILE:LINE: KEY: message``). Waits on the network at most ``CENTRAL_TIMEOUT_S``."""
        central = await refresh_central_copy(base)
        return cls(base, cls.read(base), central=central)

    @classmethod
    def read(cls, base: DaemonConfig) -> Policy:
        """The local files plus, where they name a central source, its last local copy."""
        subject = cls.subject(base)
        if base.policy_dir is None:
            return Policy(subject)
        policy = load_policy(subject, base.policy_dir)
        if policy.central_source is None:
            return policy
        return load_policy(subject, base.policy_dir, central_dir=central_dir(base))

    def config(self) -> DaemonConfig:
        return effective_config(self.base, self.policy)

    def attach(self, policies: dict[str, OfflinePolicy], monitor: LinkMonitor, cache: Cache) -> None:
        """Give the keeper the live objects a reload updates."""
        self.policies, self.monitor, self.cache = policies, monitor, cache

    async def reload(self, source: str) -> dict[str, Any]:
        """Refresh the central copy and re-read the policy (SIGHUP, ``cscd reload``). On an
        error the last good policy stays, a WARNING says why and POLICY_REJECTED is emitted;
        the answer then has ``reloaded: false`` and ``error``. Never raises. Waits on the
        network at most ``CENTRAL_TIMEOUT_S`` (only when a central source is set)."""
        self.central = await refresh_central_copy(self.base)
        try:
            new = self.read(self.base)
        except ConfigError as exc:
            log.warning("%s: policy rejected; the last good policy stays in force: %s", source, exc)
            emit(EventId.POLICY_REJECTED, source=source, **located_fields(str(exc)))
            return {"reloaded": False, "error": str(exc),
                    "message": f"policy rejected; the last good policy stays in force: {exc}"}
        old, self.policy = self.policy, new
        changed = changed_keys(old, new)
        central_note = (f"; central policy rejected, its last good copy stays in force: {self.central['error']}"
                        if self.central.get("state") == "rejected" else "")
        before, after = effective_config(self.base, old), effective_config(self.base, new)
        applied = [k for k in changed if k.startswith("offline_files.")
                   and k not in NOT_ENFORCED_KEYS | RESTART_OFFLINE_KEYS]
        roaming = [k for k in changed if k.startswith("roaming_profile.") and k not in RESTART_ROAMING_KEYS]
        if roaming and self.profile is not None:
            self.profile(new)  # the profile's settings (schedule, include, patterns) change live
            applied += roaming
        restart = [k for k in changed if (not k.startswith("offline_files.") or k in RESTART_OFFLINE_KEYS)
                   and k not in applied]
        not_enforced = [k for k in changed if k in NOT_ENFORCED_KEYS]
        if after.offline != before.offline:
            for name in self.policies:
                self.policies[name] = after.offline
            if self.monitor is not None:
                self.monitor.apply_policies()
        if self.cache is not None and (after.cache_limit_bytes, after.cache_limit_fraction) != (
                before.cache_limit_bytes, before.cache_limit_fraction):
            self.cache.residency.limit_bytes = cache_limit_bytes(after)
        if self.cache is not None:
            self.cache.residency.max_file_bytes = after.max_file_size_bytes
        if not changed:
            message = "policy reloaded: nothing changed"
        else:
            parts = [f"policy reloaded: {len(changed)} key(s) changed"]
            if applied:
                parts.append(f"applied now: {', '.join(applied)}")
            if restart:
                parts.append(f"restart cscd to apply (systemctl --user restart cscd): {', '.join(restart)}")
            if not_enforced:
                parts.append(f"not enforced yet: {', '.join(not_enforced)}")
            message = "; ".join(parts)
        message += central_note
        log.info("%s: %s", source, message)
        emit(EventId.RELOADED, result=message, source=source)
        return {"reloaded": True, "changed": changed, "applied": applied, "restart_needed": restart,
                "not_enforced": not_enforced, "message": message}

    def show(self) -> dict[str, Any]:
        """The answer of ``cscd policy show``: every key, its value and where it came from."""
        p = self.policy
        return {
            "user": p.subject.user, "host": p.subject.host, "groups": list(p.subject.groups),
            "policy_dir": None if self.base.policy_dir is None else str(self.base.policy_dir),
            "files": [str(f) for f in p.files],
            "is_primary_computer": p.is_primary_computer(),
            "rows": [{"key": r.key, "value": r.value, "origin": self._origin(r.origin)} for r in policy_rows(p)],
            "central": self.central,
        }

    def _origin(self, origin: str) -> str:
        """``file:line``, marked ``central`` with its source for a file of the central copy."""
        copy = str(central_dir(self.base)) + os.sep
        if self.central.get("source") and origin.startswith(copy):
            return f"{origin} (central: {self.central['source']})"
        return origin


#: How long a start or reload waits for the central policy source before using the last copy.
CENTRAL_TIMEOUT_S = 10.0


def central_dir(base: DaemonConfig) -> Path:
    """Where the local, read-only copy of the central policy lives (per user, in the cache)."""
    return base.cache / "central-policy"


async def refresh_central_copy(base: DaemonConfig) -> dict[str, Any]:
    """Bring the local copy of the central policy up to date, if the local files name a source.

    Waits on the network, at most ``CENTRAL_TIMEOUT_S``. Never raises: invalid local files
    are left for ``PolicyKeeper.read`` to report; a source that cannot be reached (or holds a
    file too big to be a policy) is logged (WARNING) and the last copy stays. Returns what
    happened, for ``cscd policy show``.
    """
    if base.policy_dir is None:
        return {}
    try:
        local = load_policy(PolicyKeeper.subject(base), base.policy_dir)
    except ConfigError:
        return {}
    if local.central_source is None:
        return {}
    config, where = effective_config(base, local), central_dir(base)
    state: dict[str, Any] = {"source": str(local.central_source), "copy": str(where)}
    try:
        if config.credentials is None:
            raise ConfigError(f"{base.path}: credentials: missing; the central policy source needs them")
        up = open_upstream(local.central_source,
                           config.server_settings(offload=False, timeout_s=CENTRAL_TIMEOUT_S / 2))
        try:
            with trio.fail_after(CENTRAL_TIMEOUT_S):
                done = await copy_central_policy(up, b"", where)
        finally:
            with trio.move_on_after(1, shield=True):
                await up.close()
    except CentralPolicyRejected as exc:
        last = (where / MANIFEST).exists()
        log.warning("central policy rejected; %s: %s", "its last good copy stays in force" if last
                    else "no good copy yet: only the local policy applies", exc)
        emit(EventId.POLICY_REJECTED, source=f"central {local.central_source}", **located_fields(str(exc)))
        return dict(state, state="rejected", error=str(exc), last_copy=last)
    except (CscdError, OSError, trio.TooSlowError) as exc:
        last = (where / MANIFEST).exists()
        log.warning("central policy %s: not copied (%s); %s", local.central_source, exc or "no answer in time",
                    "the last copy stays in force" if last else "no copy yet: only the local policy applies")
        return dict(state, state="unreachable", error=str(exc) or "no answer in time", last_copy=last)
    log.info("central policy %s: %s", local.central_source,
             f"copied {', '.join(done.copied)}" if done.copied or done.removed else "unchanged")
    return dict(state, state="copied" if done.copied or done.removed else "unchanged",
                copied=list(done.copied), removed=list(done.removed), unchanged=list(done.unchanged))


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


async def roam(profile: ProfileService | None, policy: Policy, action: str) -> dict[str, Any]:
    """``cscd profile logon|logoff``: run it now and answer with its report."""
    if profile is None:
        if not policy.is_primary_computer():
            why = f"{policy.subject.host} is not one of {policy.subject.user}'s primary computers"
        elif policy.roaming_profile.target is None:
            why = "the policy sets no roaming_profile.target for this user"
        else:
            why = "roaming_profile.enabled is false for this user"
        raise control.ControlError("not_configured", f"no roaming profile here: {why}")
    try:
        return await (profile.logon() if action == "logon" else profile.logoff())
    except CscdError as exc:
        raise control.ControlError("unavailable", f"profile {action} did not finish: {exc}; "
                                   f"nothing was lost, run it again when the server answers") from None


async def start_operations(nursery: trio.Nursery, config: DaemonConfig, cache: Cache, monitor: LinkMonitor,
                            engine: SyncEngine, links: dict[str, FolderLink], keeper: PolicyKeeper,
                            redirection: RedirectionStatus, profile: ProfileService | None = None) -> None:
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
        answer = collector.status(pending_by_folder(cache, links))
        for name, folder in answer["folders"].items():
            folder["cached"] = name.encode() not in cache.residency.uncached_folders
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
            return await cache.resolve([os.fsencode(p) for p in rel.parts])
        except NotFound:
            raise control.ControlError("invalid_argument", f"{path}: no such file or directory") from None

    async def pin(args: dict, pinned: bool) -> dict:
        node = await node_at(args)
        cache.pin(node.id, pinned)
        missing = 0
        if pinned:
            # Like "Always available offline": answer once the content is here (or cannot
            # be fetched now: then sync.pins keeps trying while online).
            with trio.move_on_after(300):
                missing = await engine.hydrate_pinned()
        return {"path": args["path"], "pinned": pinned, "files_missing": missing}

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
        "policy.show": policy_show,
        "profile.logon": lambda args: roam(profile, keeper.policy, "logon"),
        "profile.logoff": lambda args: roam(profile, keeper.policy, "logoff"),
    }
    collector.observe()  # the baseline: what happens from now on is news
    nursery.start_soon(_observe, collector, name="metrics")
    path = control.socket_path(config.path, config.cache)
    await nursery.start(control.serve_control, path, handlers, name="control")
    interval = _watchdog_interval_s()
    if interval is not None:
        nursery.start_soon(_watchdog, interval, name="watchdog")

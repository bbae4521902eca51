"""The daemon: builds every object, runs them in one trio nursery, mounts last.

Owns wiring, start-up checks and signals; the control handlers, events and systemd
notifications live in ``operations/``. Nothing imports it but ``cli``.

Start-up order: read configuration, machine policy (``policy_dir``; an invalid policy stops
the start with its ``FILE:LINE: KEY: message``, exit 2) and credentials; plan the logon's
folder redirection and move the folders whose target changed; open the cache (re-pointing
a copied folder's bases at the copy); connect each folder's server with a deadline — an
unreachable server is fine when the folder has a cache (we start offline and come back by
ourselves), and an error only on a first start with nothing cached; then start the cache
timer, the link monitor, sync and the invalidation task, mount, and send ``READY=1``. Then,
in a worker thread (never on the trio thread, which serves the mount the thread writes
through), carry out the redirection plan. SIGHUP re-reads the policy (``operations.policy_in_force``).
SIGTERM/SIGINT: stop taking requests (``pyfuse3.terminate``), cancel everything, unmount,
close the index. Work in flight is safe to cancel: the dirty set lives in LMDB and uploads
only rename a complete temporary file.

What is mounted: the YAML's folders, with the policy's redirected folders added or replacing
those of the same name (``machine.daemon_config``); only the policy's folders are
*redirected* (known folder and ``user-dirs.dirs`` pointed into the mount, content moved in),
the YAML's are only mounted. A folder whose policy target changed is moved on the server
before anything is mounted (``move_targets``: one rename on the same share, a server-side copy
to another share of the same server; the cache is kept and nothing is downloaded again) and
then mounted from its new target; if the move cannot happen now (a server does not answer,
another server, a name taken at the new place) it stays on its recorded target and the next
start tries again. A folder whose redirection is being removed is mounted from its recorded
target until the removal is done.

Primary computers: on a machine that is not one of the user's primary computers the daemon
still starts and serves the mount (``cscd status`` and the control socket keep working, the
unit does not fail or restart in a loop), but with no folder in it besides those being
brought back; it logs why, and removes earlier redirections by their removal action.

Redirection runs after READY, in the background (``cscd status`` shows its progress): a
first move of a large folder must not hold up the session or trip systemd's start timeout.
The mount accepts the files while the server is down (they are cached and upload later). A
removal waits until the folder has nothing left to upload, so no change is stranded in a
cache that stops being mounted. Not supported: stopping the daemon in the middle of a move
leaves the file being copied twice — the original at home and a partial copy in the mount;
the next start keeps both (the partial one under its name, the complete one as a conflict
copy), so nothing is lost but the partial copy must be deleted by hand.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import signal
from dataclasses import replace
from pathlib import Path

import pyfuse3
import trio

from cscd.cache.cache import Cache
from cscd.cache.protection import CacheProtection, is_encrypted, protect
from cscd.errors import AccessDenied, ConfigError, CscdError
from cscd.events import EventId, emit
from cscd.fs import CscdFs, mount_options
from cscd.link import LinkMonitor, WorkingOfflineState
from cscd.network import MeteredWatcher
from cscd.operations import garbage, handlers, policy_in_force, systemd
from cscd.operations.compliance import ComplianceWatch
from cscd.operations.wipe import WipeKeeper
from cscd.policy.cache_key import KeyUnavailable, cache_key
from cscd.policy.config import DaemonConfig, FolderConfig
from cscd.policy.model import DevicePolicy, Policy
from cscd.profile.from_policy import profile_service, profile_settings
from cscd.profile.service import ProfileService
from cscd.profile.session_end import SessionEndWatcher
from cscd.redirect import (
    RECORD,
    USER_DIRS,
    RedirectError,
    RedirectPlan,
    StepKind,
    StepResult,
    apply_plan,
    load_record,
    plan_redirection,
)
from cscd.redirect.move import move_target
from cscd.sync.engine import SyncEngine
from cscd.sync.exclusions import ExclusionMatcher
from cscd.sync.source import FolderSource, WriteThroughPusher
from cscd.types import FolderLink, Mode, ServerSettings, UncTarget
from cscd.upstream import open_upstream
from cscd.upstream.base import RemoteEntry, Upstream
from cscd.upstream.foreground import CLOCK_FILE, ForegroundClock

log = logging.getLogger(__name__)

GRACE_S = 5.0
#: How much longer systemd should wait for the start while one folder's content moves.
MOVE_EXTEND_S = 300.0
#: The longest logoff push at stop; systemd's TimeoutStopSec is 30 s.
PROFILE_LOGOFF_S = 10.0


def check_mountpoint(path: Path) -> None:
    """Refuse a mountpoint that is already mounted or is not an empty directory we own."""
    if os.path.ismount(path):
        raise ConfigError(f"{path}: something is already mounted there; unmount it first "
                          f"(fusermount3 -u {path})")
    if not path.exists():
        try:
            path.mkdir(parents=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot create the mountpoint: {exc.strerror}") from None
    if not path.is_dir():
        raise ConfigError(f"{path}: the mountpoint is not a directory")
    if any(path.iterdir()):
        raise ConfigError(f"{path}: the mountpoint is not empty; cscd mounts only on an empty directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{path}: no write access to the mountpoint")
    if not os.path.exists("/dev/fuse"):
        raise ConfigError("/dev/fuse is missing: install fuse3 and load the fuse module")


def build_upstreams(config: DaemonConfig) -> dict[str, Upstream]:
    """One upstream per folder. The credentials file is read only if a folder is on SMB.
    Uploads in worker processes make way for the mount's requests (``ForegroundClock``)."""
    if any(isinstance(f.target, UncTarget) for f in config.folders):
        settings = config.server_settings()
        if settings.offload:
            settings = replace(settings, foreground_clock=str(config.cache / CLOCK_FILE))
    else:
        settings = ServerSettings(None, timeout_s=config.timings.request_timeout_s)
    return {f.name: open_upstream(f.target, settings) for f in config.folders}


async def _first_connect(name: str, upstream: Upstream, monitor: LinkMonitor, timeout_s: float) -> None:
    """Connect once before mounting; an unreachable server is recorded, not raised."""
    try:
        with trio.fail_after(timeout_s):
            await upstream.connect()
        monitor.mark_reachable(name, True)
    except AccessDenied as exc:
        raise ConfigError(f"{upstream.description}: access denied: {exc}") from None
    except (CscdError, OSError, trio.TooSlowError) as exc:
        monitor.mark_reachable(name, False, str(exc) or "no answer")


async def run_daemon(config: DaemonConfig, *, on_ready=None) -> None:
    """Mount and serve until SIGTERM/SIGINT or an unmount; raises ConfigError for bad input."""
    # The receiver stays open until everything is closed: a second SIGTERM while we unmount
    # must not fall back to the default action and kill us half-way.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        await _run(config, on_ready, signals)


_REMOVALS = (StepKind.REMOVE_LEAVE, StepKind.REMOVE_BACK)


def plan_logon(config: DaemonConfig, policy: Policy) -> tuple[RedirectPlan | None, tuple[FolderConfig, ...]]:
    """The logon's redirection plan (None: nothing to do) and the folders to mount for it.

    Reads the record of applied redirections and ``user-dirs.dirs`` (small local files).
    Without machine policy (``policy_dir`` None, as in ``cscd demo``) nothing is planned: the
    record in the home directory belongs to the daemon that runs with the policy. A damaged
    record is logged (ERROR) and stops redirection, not the daemon.
    """
    if config.policy_dir is None:
        return None, config.folders
    home = config.home_dir
    try:
        record = load_record(home / RECORD)
        try:
            user_dirs = (home / USER_DIRS).read_text(encoding="utf-8")
        except FileNotFoundError:
            user_dirs = None
    except (RedirectError, OSError, UnicodeDecodeError) as exc:
        log.error("folder redirection is not applied: %s", exc)
        return None, config.folders
    plan = plan_redirection(policy, home, config.mount, record=record, user_dirs_text=user_dirs)
    if not plan.steps:
        return None, config.folders
    folders = {f.name: f for f in config.folders}
    for step in plan.steps:
        if step.kind in _REMOVALS:
            folders[step.name] = FolderConfig(step.name, record[step.name].target)
    return plan, tuple(folders.values())


async def move_targets(config: DaemonConfig, plan: RedirectPlan | None, folders: tuple[FolderConfig, ...]
                       ) -> tuple[RedirectPlan | None, tuple[FolderConfig, ...], dict[str, dict[bytes, RemoteEntry]]]:
    """Move the content of every folder whose policy target changed, on the server, before
    anything is mounted (``redirect.move``: a rename, or a server-side copy). Waits on the network.

    A moved folder is mounted from its new target (its step gets ``moved``, so ``apply_plan``
    records the new target); the third value holds, per folder, the new tree for
    ``Cache.adopt_moved_bases`` after a copy. A move that cannot happen now — a server that
    does not answer, another server, a name taken — is logged (WARNING); the folder is mounted
    from its old target, its record is kept, and the next start tries again. Pending changes
    need no wait: a rename keeps every FileId and a copy's bases are re-pointed, so they upload
    to the new target.
    """
    if plan is None or not any(s.kind is StepKind.MOVE_TARGET for s in plan.steps):
        return plan, folders, {}
    byname, steps, moved = {f.name: f for f in folders}, [], {}
    for step in plan.steps:
        if step.kind is not StepKind.MOVE_TARGET:
            steps.append(step)
            continue
        assert step.move is not None
        old_target = step.move.old
        systemd.sd_notify(f"EXTEND_TIMEOUT_USEC={int(MOVE_EXTEND_S * 1e6)}\n"
                             f"STATUS=moving {step.name} from {old_target} to {step.move.new}")
        old, new = (_move_upstream(config, t) for t in (old_target, step.move.new))
        try:
            result = await move_target(step.move, old, new)
        except (CscdError, OSError) as exc:
            log.warning("%s: not moved from %s to %s: %s; it stays on the old target for now and the "
                        "move is tried again at the next start", step.name, old_target, step.move.new, exc)
            byname[step.name] = replace(byname.get(step.name, FolderConfig(step.name, old_target)),
                                        target=old_target)
            steps.append(replace(step, note=str(exc)))
            continue
        finally:
            with trio.move_on_after(GRACE_S, shield=True):
                await old.close()
                await new.close()
        done = (f"{result.how}: {result.files} files, {result.bytes_copied} bytes copied on the server"
                if result.how != "renamed" else "renamed: one rename on the server")
        log.info("%s: moved from %s to %s (%s; no content through this machine)", step.name, old_target,
                 step.move.new, done)
        if result.left_on_old:
            log.warning("%s: moved, but left on %s (delete it by hand): %s", step.name, old_target,
                        "; ".join(result.left_on_old))
        moved[step.name] = result.entries
        steps.append(replace(step, moved=done))
    return replace(plan, steps=tuple(steps)), tuple(byname.values()), moved


def _move_upstream(config: DaemonConfig, target: UncTarget) -> Upstream:
    """A connection of its own for a move (not offloaded: a move sends no content)."""
    return open_upstream(target, config.server_settings(offload=False))


def _adopt_moved(cache: Cache, moved: dict[str, dict[bytes, RemoteEntry]]) -> None:
    for name, entries in moved.items():
        if entries:
            n = cache.sync.adopt_moved_bases(name.encode(), entries)
            log.info("%s: the cache keeps %d entries across the move (no download)", name, n)


async def _run(base: DaemonConfig, on_ready, signals) -> None:
    keeper = await policy_in_force.PolicyKeeper.open(base)
    policy = keeper.policy
    config = keeper.config()
    plan, folders = plan_logon(config, policy)
    plan, folders, moved = await move_targets(config, plan, folders)
    config = replace(config, folders=folders)
    if not policy.is_primary_computer():
        log.info("%s is not one of %s's primary computers (%s): no folder is redirected here%s",
                 policy.subject.host, policy.subject.user, ", ".join(policy.primary_computers),
                 "; earlier redirections are removed" if plan else "")
    elif not config.folders:
        if not policy.files:
            raise ConfigError(f"{base.path}: folders: no folder to mount: none in this file and no policy "
                              f"files in {base.policy_dir}")
        log.info("the policy redirects no folder for %s and %s names none: the mount stays empty",
                 policy.subject.user, base.path)
    protection = await trio.to_thread.run_sync(_protect_cache, config)
    if protection.online_only:
        config = replace(config, folders=tuple(replace(f, offline=False) for f in config.folders))
    upstreams = build_upstreams(config)
    check_mountpoint(config.mount)
    links = {name: FolderLink() for name in upstreams}
    policies = {f.name: config.offline_for(f) for f in config.folders if f.name in upstreams}
    metered = MeteredWatcher(bus=config.metered_dbus, file=config.metered_file,
                             roaming_poll_s=config.timings.roaming_poll_s)
    config.cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    foreground = ForegroundClock.create(config.cache)
    monitor = LinkMonitor(
        {n: (upstreams[n], links[n]) for n in upstreams},
        probe_interval_s=config.timings.probe_interval_s,
        reconnect_max_s=config.timings.reconnect_max_s,
        timeout_s=config.timings.request_timeout_s,
        idle_probe_s=config.timings.idle_probe_s,
        policies=policies,
        working_offline=WorkingOfflineState(config.cache / "working-offline.json"),
        is_metered=metered.is_metered,
    )
    metered.on_change = monitor.wake_all
    profile = profile_service(config, policy, exclude_paths=_never_roams(config, plan),
                              mode=functools.partial(_profile_mode, policy, config, links, metered))
    matcher = ExclusionMatcher(config.exclude_patterns)
    source = FolderSource(upstreams, links, fetch_timeout_s=config.timings.fetch_timeout_s,
                          on_link_error=monitor.report_failure, policies=policies, matcher=matcher)
    cache = Cache(config.cache, [n.encode() for n in upstreams], source,
                  limit_bytes=policy_in_force.cache_limit_bytes(config),
                  uncached=[f.name.encode() for f in config.folders if not f.offline],
                  max_file_bytes=config.max_file_size_bytes, sealer=protection.sealer)
    cache.protection = protection
    _adopt_moved(cache, moved)
    keeper.attach(policies, monitor, cache)
    if profile is not None:
        keeper.profile = functools.partial(_update_profile, profile, config.central_copy_dir)
    try:
        async with trio.open_nursery() as nursery:
            for name, up in upstreams.items():
                nursery.start_soon(_first_connect, name, up, monitor, config.timings.request_timeout_s)
        for name, link in links.items():
            if link.mode is Mode.OFFLINE:
                if not cache.namespace.has_content(name.encode()):
                    raise ConfigError(
                        f"{upstreams[name].description}: cannot reach the server and nothing is cached "
                        f"yet for {name} ({link.reason}); check the server name, port and network",
                        exit_code=3,
                    )
                log.warning("folder %s starts offline from its cache: %s", name, link.reason)
        engine = SyncEngine(
            cache.sync, upstreams, links,
            upload_delay_s=config.timings.upload_delay_s,
            scan_interval_s=config.timings.scan_interval_s,
            poll_max_s=config.timings.poll_max_s,
            revalidate_interval_s=config.timings.revalidate_interval_s,
            space_interval_s=config.timings.space_interval_s,
            directory_watches=config.directory_watches,
            on_link_error=monitor.report_failure,
            policies=policies,
            matcher=matcher,
            foreground=foreground,
        )
        source.arm_watch = engine.notifier.arm_before_listing
        ops = CscdFs(cache, write_through=WriteThroughPusher(source, engine.pusher), sync_view=engine.pusher,
                     share_space=engine.space.tightest, foreground=foreground)
        pyfuse3.init(ops, str(config.mount), mount_options())
        try:
            await _serve(config, cache, monitor, engine, ops, links, on_ready, signals, metered, keeper, plan,
                         profile)
        finally:
            pyfuse3.close(unmount=True)  # synchronous: nothing to shield
    finally:
        with trio.move_on_after(GRACE_S, shield=True):
            for up in (*upstreams.values(), *([profile.upstream] if profile else [])):
                await up.close()
        cache.close()
        protection.lock()


def _protect_cache(config: DaemonConfig) -> CacheProtection:
    """The cache encrypted at rest where the device policy asks for it (or where it already
    is: a policy that stops asking does not decrypt what is there). Blocking."""
    device = config.device
    if not device.encrypt_cache and not is_encrypted(config.cache):
        return CacheProtection()
    # A plain cache is copied once into its encrypted twin: give systemd's start timeout room.
    systemd.sd_notify(f"EXTEND_TIMEOUT_USEC={int(MOVE_EXTEND_S * 1e6)}\nSTATUS=encrypting the cache if needed")
    try:
        key, problem = cache_key(device.cache_key, config.cache, wait_s=config.timings.keyring_wait_s,
                                 on_wait=lambda: systemd.sd_notify("STATUS=waiting for the keyring")), ""
    except KeyUnavailable as exc:
        key, problem = None, str(exc)
    protection = protect(config.cache, key, problem, way=device.encrypt_with)
    if protection.online_only:
        emit(EventId.CACHE_NOT_ENCRYPTED, reason=protection.reason)
    else:
        emit(EventId.CACHE_ENCRYPTED, how=protection.as_dict()["how"])
    return protection


async def _serve(config, cache, monitor, engine, ops, links, on_ready, signals, metered, keeper, plan,
                 profile) -> None:
    redirection = handlers.RedirectionStatus()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, signals, nursery.cancel_scope, keeper, profile, name="signals")
        await nursery.start(cache.run, name="cache.flush")
        await nursery.start(metered.run, name="network.metered")
        await nursery.start(monitor.run, name="link")
        await nursery.start(engine.run, name="sync")
        await nursery.start(ops.serve_invalidations, name="fs.notify")
        if profile is not None:
            await nursery.start(profile.run, name="profile.background")
            session_end = SessionEndWatcher(functools.partial(_session_end_push, profile), bus=config.logind_dbus)
            await nursery.start(session_end.run, name="profile.session_end")

        async def fuse_main():
            await pyfuse3.main()
            nursery.cancel_scope.cancel()  # unmounted from outside, or terminate()

        nursery.start_soon(fuse_main, name="fuse")
        compliance = ComplianceWatch(config, cache.hydration)
        await nursery.start(compliance.run, name="device.compliance")
        wipes = WipeKeeper(cache, engine, monitor, config.device)
        await nursery.start(wipes.run, name="device.wipe")

        def on_device(device: DevicePolicy) -> None:
            compliance.device = device
            wipes.apply(device)

        keeper.on_device = on_device
        nursery.start_soon(_refresh_policy, keeper, config.timings.policy_refresh_s, name="policy.refresh")
        await handlers.start_operations(nursery, config, cache, monitor, engine, links, keeper, redirection,
                                          profile, compliance, wipes)
        modes = systemd.modes_text(links)
        log.info("mounted %s (%s)", config.mount, modes)
        await systemd.wait_mount_answers(config.mount)
        systemd.sd_notify(f"READY=1\nSTATUS={modes}")
        emit(EventId.DAEMON_READY, mount=str(config.mount), modes=modes)
        garbage.settle()
        nursery.start_soon(garbage.collect_in_pauses, ops.foreground, name="gc.full")
        if on_ready is not None:
            on_ready()
        if plan is not None:
            nursery.start_soon(redirect_folders, plan, cache, redirection, name="redirect")
        if profile is not None:
            nursery.start_soon(_logon, profile, name="profile.logon")


async def _refresh_policy(keeper: policy_in_force.PolicyKeeper, interval_s: float) -> None:
    """Fetch the policy again every ``interval_s`` plus up to a third of it (Group Policy's 90
    minutes and 0-30 of offset), so a revoked device hears of it without a restart."""
    while True:
        await trio.sleep(interval_s + random.uniform(0, interval_s / 3))
        await keeper.reload("policy refresh")


# ---------------------------------------------------------------- roaming profile


def _never_roams(config: DaemonConfig, plan: RedirectPlan | None) -> list[Path]:
    """Local paths the roaming profile must not walk into: the mount (the redirected folders
    would go up twice), the cache, and the redirected folders' local places."""
    return [config.mount, config.cache, *(s.local for s in plan.steps)] if plan else [config.mount, config.cache]


def _profile_mode(policy: Policy, config: DaemonConfig, links: dict[str, FolderLink],
                  metered: MeteredWatcher) -> Mode:
    """The link mode for the profile's server: that of a mounted folder on the same server,
    else metered or online (the service probes before it uploads, so a lost server shows)."""
    target = policy.roaming_profile.target
    for f in config.folders:
        if isinstance(f.target, UncTarget) and target is not None and f.name in links \
                and f.target.server.casefold() == target.server.casefold():
            return links[f.name].mode
    return Mode.METERED if metered.is_metered() and policy.offline_files.cost_aware_sync else Mode.ONLINE


def _update_profile(profile: ProfileService, central_copy: Path, policy: Policy) -> None:
    try:
        profile.update_settings(profile_settings(policy, exclude_paths=profile.settings.exclude_paths,
                                                 central_copy=central_copy))
    except ConfigError as exc:
        log.warning("roaming profile: the new settings are not applied: %s", exc)


async def _logon(profile: ProfileService) -> None:
    """The logon's profile pull, after READY (a laptop away from the office must not wait for
    it; the session's ``cscd profile wait-logon`` waits for it, bounded). A failure is logged;
    ``cscd profile logon`` runs it again."""
    try:
        report = await profile.logon()
    except CscdError as exc:
        log.warning("roaming profile: logon pull from %s did not run: %s; local files are used as they "
                    "are (cscd profile logon to try again)", profile.upstream.description, exc)
        profile.start_pull = {"error": str(exc)}
        profile.start_pull_done.set()
        return
    except BaseException:  # the daemon stops first: whoever waits must not wait on
        profile.start_pull = {"error": "the daemon stopped"}
        profile.start_pull_done.set()
        raise
    profile.start_pull = report
    profile.start_pull_done.set()
    log.info("roaming profile: logon pull from %s: %s files, %s bytes, %s conflicts",
             profile.upstream.description, report.get("files"), report.get("bytes"),
             len(report.get("conflicts", ())))


async def _session_end_push(profile: ProfileService) -> None:
    """The sign-out push when the user's last session ends while the daemon lives on (linger)."""
    try:
        result = await profile.logoff(sign_out=True)
    except CscdError as exc:
        log.warning("roaming profile: the push at the end of the session did not finish: %s; it goes "
                    "at the next logoff", exc)
        return
    log.info("roaming profile: pushed at the end of the session: %s", result.get("message"))


async def _logoff(profile: ProfileService) -> None:
    """The logoff push at SIGTERM, bounded so systemd's stop timeout (30 s) is kept; what does
    not make it goes at the next logoff (the state file remembers what was agreed)."""
    with trio.move_on_after(PROFILE_LOGOFF_S) as timer:
        try:
            await profile.logoff()
        except CscdError as exc:
            log.warning("roaming profile: logoff push did not finish: %s; it runs again at the next stop", exc)
    if timer.cancelled_caught:
        log.warning("roaming profile: logoff push cut off after %.0f s; the rest goes at the next stop",
                    PROFILE_LOGOFF_S)


async def redirect_folders(plan: RedirectPlan, cache: Cache, status: handlers.RedirectionStatus, *,
                           poll_s: float = 1.0) -> None:
    """Carry out the logon's redirection plan in a worker thread, through the mount.

    Redirections (move-in, user-dirs) go first. Each removal waits until its folder has
    nothing left to upload, then runs. A failed step is logged (WARNING) and tried again at
    the next start; nothing here raises. Cancellation abandons the thread (it cannot be
    stopped between files; see the module docstring).
    """
    status.state = "running"
    first = tuple(s for s in plan.steps if s.kind not in _REMOVALS)
    later = [s for s in plan.steps if s.kind in _REMOVALS]
    if first:
        _report(status, await _apply(replace(plan, steps=first)))
    while later:
        pending = handlers.pending_by_folder(cache, [s.name for s in later])
        ready = tuple(s for s in later if pending[s.name][0] == 0)
        if not ready:
            if status.state != "waiting":
                log.info("removing the redirection of %s once its changes are uploaded (%s)",
                         ", ".join(s.name for s in later),
                         ", ".join(f"{s.name}: {pending[s.name][0]} waiting" for s in later))
            status.state = "waiting"
            await trio.sleep(poll_s)
            continue
        status.state = "running"
        later = [s for s in later if s not in ready]
        _report(status, await _apply(replace(plan, steps=ready)))
    status.state = "done"


async def _apply(plan: RedirectPlan) -> tuple[StepResult, ...]:
    return await trio.to_thread.run_sync(functools.partial(apply_plan, plan), abandon_on_cancel=True)


_DONE_TEXT = {
    StepKind.REDIRECT: "redirected into {mounted}",
    StepKind.KEEP: "redirected into {mounted} (as before)",
    StepKind.MOVE_TARGET: "redirected into {mounted}; its content moved to the new target on the server",
    StepKind.REMOVE_LEAVE: "no longer redirected: its content stays on the server; {local} is a local folder again",
    StepKind.REMOVE_BACK: "no longer redirected: its content was copied home to {local}",
}


def _report(status: handlers.RedirectionStatus, results: tuple[StepResult, ...]) -> None:
    for r in results:
        step = r.step
        moved = ""
        if r.report is not None and (r.report.files or r.report.identical):
            moved = f" ({r.report.files} files, {r.report.bytes} bytes"
            moved += f"; {r.report.identical} already there" if r.report.identical else ""
            moved += f"; kept under conflict names: {', '.join(r.report.renamed)}" if r.report.renamed else ""
            moved += ")"
        if r.report is not None and r.report.skipped:
            log.warning("%s: left in %s (symlinks and special files are not moved): %s",
                        step.name, step.local, ", ".join(r.report.skipped))
        if r.done:
            text = _DONE_TEXT[step.kind].format(mounted=step.mounted, local=step.local) + moved
            (log.debug if step.kind is StepKind.KEEP else log.info)("%s: %s", step.name, text)
        else:
            text = f"not done: {r.message}"
            # A target change was already reported as a warning when the logon was planned.
            level = logging.INFO if step.kind is StepKind.MOVE_TARGET else logging.WARNING
            log.log(level, "%s: %s; tried again at the next start", step.name, r.message)
        status.folders[step.name] = {"step": step.kind.value, "done": r.done, "message": text,
                                     "local": str(step.local), "mounted": str(step.mounted)}


async def _watch_signals(signals, cancel_scope: trio.CancelScope, keeper: policy_in_force.PolicyKeeper,
                         profile: ProfileService | None) -> None:
    stopping = False
    async for signum in signals:
        if signum == signal.SIGHUP:
            await keeper.reload("SIGHUP")
            continue
        if stopping:
            log.info("%s: already unmounting", signal.Signals(signum).name)
            continue
        stopping = True
        log.info("%s: unmounting", signal.Signals(signum).name)
        systemd.sd_notify("STOPPING=1")
        emit(EventId.DAEMON_STOPPING, reason=signal.Signals(signum).name)
        if profile is not None:
            await _logoff(profile)
        pyfuse3.terminate()
        cancel_scope.cancel()

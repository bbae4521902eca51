"""The daemon: builds every object, runs them in one trio nursery, mounts last.

Owns wiring, start-up checks and signals; the control handlers, events and systemd
notifications live in ``operations.py``. Nothing imports it but ``cli``.

Start-up order: read configuration and credentials (errors are one line, exit 2); open the
cache; connect each folder's server with a deadline — an unreachable server is fine when the
folder has a cache (we start offline and come back by ourselves), and an error only on a
first start with nothing cached; then start the cache timer, the link monitor, sync and the
invalidation task, mount, and send ``READY=1``. SIGTERM/SIGINT: stop taking requests
(``pyfuse3.terminate``), cancel everything, unmount, close the index. Work in flight is safe
to cancel: the dirty set lives in LMDB and uploads only rename a complete temporary file.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pyfuse3
import trio

from cscd import operations
from cscd.cache.cache import Cache
from cscd.errors import AccessDenied, ConfigError, CscdError
from cscd.events import EventId, emit
from cscd.fs import CscdFs, mount_options
from cscd.link import LinkMonitor, WorkingOfflineState
from cscd.network import MeteredWatcher
from cscd.policy.config import DaemonConfig
from cscd.policy.credentials import load_credentials
from cscd.sync.engine import SyncEngine
from cscd.sync.source import FolderSource
from cscd.types import FolderLink, Mode
from cscd.upstream.base import Upstream
from cscd.upstream.smb import SmbUpstream

log = logging.getLogger(__name__)

GRACE_S = 5.0


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
    creds = None
    out: dict[str, Upstream] = {}
    for folder in config.folders:
        if isinstance(folder.target, Path):
            from cscd.upstream.local import LocalUpstream

            out[folder.name] = LocalUpstream(folder.target, timeout_s=config.timings.request_timeout_s)
            continue
        if creds is None:
            if config.credentials is None:
                raise ConfigError(f"{config.path}: credentials: missing; SMB folders need a credentials file")
            creds = load_credentials(config.credentials)
        out[folder.name] = SmbUpstream(
            folder.target, creds, port=config.port, security=config.security,
            timeout_s=config.timings.request_timeout_s,
        )
    return out


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


async def _run(config: DaemonConfig, on_ready, signals) -> None:
    upstreams = build_upstreams(config)
    check_mountpoint(config.mount)
    links = {name: FolderLink() for name in upstreams}
    policies = {name: config.offline for name in upstreams}
    metered = MeteredWatcher(bus=config.metered_dbus, file=config.metered_file)
    config.cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    monitor = LinkMonitor(
        {n: (upstreams[n], links[n]) for n in upstreams},
        probe_interval_s=config.timings.probe_interval_s,
        reconnect_max_s=config.timings.reconnect_max_s,
        timeout_s=config.timings.request_timeout_s,
        policies=policies,
        working_offline=WorkingOfflineState(config.cache / "working-offline.json"),
        is_metered=metered.is_metered,
    )
    metered.on_change = monitor.wake_all
    source = FolderSource(upstreams, links, fetch_timeout_s=config.timings.fetch_timeout_s,
                          on_link_error=monitor.report_failure, policies=policies)
    limit = config.cache_limit_bytes
    if limit is None:
        st = os.statvfs(config.cache)
        limit = int(st.f_blocks * st.f_frsize * config.cache_limit_fraction)
    cache = Cache(config.cache, [n.encode() for n in upstreams], source, limit_bytes=limit)
    try:
        async with trio.open_nursery() as nursery:
            for name, up in upstreams.items():
                nursery.start_soon(_first_connect, name, up, monitor, config.timings.request_timeout_s)
        for name, link in links.items():
            if link.mode is Mode.OFFLINE:
                if not cache.has_content(name.encode()):
                    raise ConfigError(
                        f"{upstreams[name].description}: cannot reach the server and nothing is cached "
                        f"yet for {name} ({link.reason}); check the server name, port and network",
                        exit_code=3,
                    )
                log.warning("folder %s starts offline from its cache: %s", name, link.reason)
        engine = SyncEngine(
            cache, upstreams, links,
            upload_delay_s=config.timings.upload_delay_s,
            scan_interval_s=config.timings.scan_interval_s,
            full_scan_interval_s=config.timings.full_scan_interval_s,
            on_link_error=monitor.report_failure,
            policies=policies,
        )
        ops = CscdFs(cache)
        pyfuse3.init(ops, str(config.mount), mount_options())
        try:
            await _serve(config, cache, monitor, engine, ops, links, on_ready, signals, metered)
        finally:
            with trio.CancelScope(shield=True):
                pyfuse3.close(unmount=True)
    finally:
        with trio.move_on_after(GRACE_S, shield=True):
            for up in upstreams.values():
                await up.close()
        cache.close()


async def _serve(config, cache, monitor, engine, ops, links, on_ready, signals, metered) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, signals, nursery.cancel_scope, name="signals")
        await nursery.start(cache.run, name="cache.flush")
        await nursery.start(metered.run, name="network.metered")
        await nursery.start(monitor.run, name="link")
        await nursery.start(engine.run, name="sync")
        await nursery.start(ops.serve_invalidations, name="fs.notify")

        async def fuse_main():
            await pyfuse3.main()
            nursery.cancel_scope.cancel()  # unmounted from outside, or terminate()

        nursery.start_soon(fuse_main, name="fuse")
        await operations.start_operations(nursery, config, cache, monitor, engine, links)
        modes = operations.modes_text(links)
        log.info("mounted %s (%s)", config.mount, modes)
        await operations.wait_mount_answers(config.mount)
        operations.sd_notify(f"READY=1\nSTATUS={modes}")
        emit(EventId.DAEMON_READY, mount=str(config.mount), modes=modes)
        if on_ready is not None:
            on_ready()


async def _watch_signals(signals, cancel_scope: trio.CancelScope) -> None:
    stopping = False
    async for signum in signals:
        if signum == signal.SIGHUP:
            operations.reload("SIGHUP")
            continue
        if stopping:
            log.info("%s: already unmounting", signal.Signals(signum).name)
            continue
        stopping = True
        log.info("%s: unmounting", signal.Signals(signum).name)
        operations.sd_notify("STOPPING=1")
        emit(EventId.DAEMON_STOPPING, reason=signal.Signals(signum).name)
        pyfuse3.terminate()
        cancel_scope.cancel()

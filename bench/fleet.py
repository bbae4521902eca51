"""Fleet cases (issue 16): what an idle client costs the server, and many daemons on one smbd.

- ``fleet``: the run's cscd and rclone mounts, idle, after touching N = 0, 50 and 5,000
  directories (each side its own tree of 5,050 directories, made on the server's disk before
  the mounts start). SMB requests are counted as NetBIOS frames from the client
  (``TcpProxy.frames_to_server``: a compound or an encrypted request is one frame), over
  ``Options.fleet_window_s`` (120 s; 20 s with ``--quick``) at each step, once the client has
  settled (no frame for 5 s, or 60 s at most). The rows give requests per minute; the notes
  the load of 1,000 such clients.
- ``fleet-sim``: ``FLEET_DAEMONS`` cscd daemons at their defaults (small caches, one folder
  each, 20 used directories each) against the run's one smbd, through one proxy: idle for
  the same window, then as long again with one daemon in 20 editing (a save every 5 s:
  write a temporary, rename over, as editors do). Reports smbd's CPU seconds (all its
  processes, from ``/proc``) and requests per client per minute in each phase, and what they
  come to for 1,000 clients.

Both run with the defaults (``Timings``); the tests (``tests/test_fleet.py``) check the same
behaviour with shortened intervals.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.cases import Options
from bench.harness import Env
from bench.report import CaseResult
from tests.helpers.daemon import DaemonProcess
from tests.helpers.proxy import TcpProxy

SETTLE_S = 5.0
SETTLE_MAX_S = 60.0
STEPS = (0, 50, 5000)
FLEET_DAEMONS = 20
SIM_DIRS = 20
EDIT_EVERY_S = 5.0


def _tree(root: Path, count: int) -> None:
    for i in range(count):
        d = root / f"d{i:04d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "notes.txt").write_text(f"note {i}\n")


def prepare_fleet(env: Env, o: Options) -> None:
    for side in ("cscd", "rclone"):
        _tree(env.server_dir(side) / "fleet", max(STEPS))


def _settle(proxies: list[TcpProxy]) -> None:
    t_end = time.monotonic() + SETTLE_MAX_S
    while time.monotonic() < t_end:
        for p in proxies:
            p.reset_counters()
        time.sleep(SETTLE_S)
        if all(p.frames_to_server == 0 for p in proxies):
            return


def run_fleet(env: Env, o: Options, res: CaseResult, _state: None) -> None:
    sides = {}
    for name in ("cscd", "rclone"):
        try:
            sides[name] = env.side(name)
        except RuntimeError as exc:
            res.cell(f"n0_{name}", "req/min").fail(exc)
    touched = 0
    for n in STEPS:
        for name, side in sides.items():
            try:
                for i in range(touched, n):  # as a file manager opening each directory
                    (side.root / "fleet" / f"d{i:04d}" / "notes.txt").stat()
                    os.listdir(side.root / "fleet" / f"d{i:04d}")
            except OSError as exc:
                res.cell(f"n{n}_{name}", "req/min").fail(exc)
        touched = n
        proxies = [s.proxy for s in sides.values()]
        _settle(proxies)
        for p in proxies:
            p.reset_counters()
        time.sleep(o.fleet_window_s)
        for name, side in sides.items():
            res.cell(f"n{n}_{name}", "req/min").add(side.proxy.frames_to_server * 60.0 / o.fleet_window_s)
        res.row(f"idle client after touching {n} directories: SMB requests per minute",
                f"n{n}_cscd", f"n{n}_rclone", "rclone", higher_is_better=False)
    for n in STEPS:
        c = res.cell(f"n{n}_cscd", "req/min").median
        if c is not None:
            res.note(f"N={n}: 1,000 idle cscd clients send the server {c * 1000 / 60:.1f} requests/s")
    res.note(f"frames from the client counted by the loopback proxy over {o.fleet_window_s:g} s per step, "
             f"after {SETTLE_S:g} s without any; cscd at its defaults (one revalidation listing a minute, "
             "one echo after a silent minute, change notifications outstanding); rclone mount "
             "--vfs-cache-mode full at its defaults")


def _smbd_cpu_s(conf: Path) -> float:
    """User + system CPU seconds of every smbd process serving ``conf``, with the reaped
    children's (``cutime``/``cstime``): a connection's process that exits takes its own
    counters with it, but they reappear in its parent's, so the sum never goes back."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"smbd" not in cmdline or str(conf).encode() not in cmdline:
                continue
            fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15]) / tick  # utime stime cutime cstime
        except (OSError, IndexError, ValueError):
            continue
    return total


def run_fleet_sim(env: Env, o: Options, res: CaseResult, _state: None) -> None:
    samba = env.samba
    assert samba is not None
    proxy = TcpProxy((samba.host, samba.port))
    daemons: list[DaemonProcess] = []
    base = env.workdir / "fleet-sim"
    credentials = samba.write_credentials_file(env.workdir / "fleet-credentials")
    try:
        for k in range(FLEET_DAEMONS):
            server = samba.share_dir / "fleet-sim" / f"u{k:02d}" / "Documents"
            _tree(server, SIM_DIRS)
            d = DaemonProcess(base / f"u{k:02d}", name="cscd",
                              folders={"Documents": samba.unc(f"fleet-sim\\u{k:02d}\\Documents")},
                              credentials=credentials, port=proxy.port,
                              extra={"cache_limit": "64M"})
            d.start()
            daemons.append(d)
        for d in daemons:
            for i in range(SIM_DIRS):
                os.listdir(d.mount / "Documents" / f"d{i:04d}")
        _settle([proxy])

        def phase(edit: bool) -> tuple[float, float]:
            proxy.reset_counters()
            cpu0, t0 = _smbd_cpu_s(samba.conf_path), time.monotonic()
            n = 0
            while time.monotonic() - t0 < o.fleet_window_s:
                if edit:
                    folder = daemons[0].mount / "Documents" / "d0000"
                    tmp = folder / ".notes.txt.swp"
                    tmp.write_text(f"edit {n}\n" * 100)
                    os.replace(tmp, folder / "notes.txt")
                    n += 1
                time.sleep(EDIT_EVERY_S if edit else 1.0)
            took = time.monotonic() - t0
            return (proxy.frames_to_server * 60.0 / took / FLEET_DAEMONS,
                    (_smbd_cpu_s(samba.conf_path) - cpu0) / took * 60.0 / FLEET_DAEMONS)

        for name, edit in (("idle", False), ("edit", True)):
            try:
                req, cpu = phase(edit)
                res.cell(f"{name}_req", "req/client/min").add(req)
                res.cell(f"{name}_cpu", "ms/client/min").add(cpu * 1000)
            except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                res.cell(f"{name}_req", "req/client/min").fail(exc)
        res.row(f"{FLEET_DAEMONS} daemons, one smbd: requests per client per minute, idle vs one editing",
                "idle_req", "edit_req", "one in 20 editing", higher_is_better=False)
        res.row("smbd CPU ms per client per minute, idle vs one editing", "idle_cpu", "edit_cpu",
                "one in 20 editing", higher_is_better=False)
        for name in ("idle", "edit"):
            req = res.cell(f"{name}_req", "req/client/min").median
            cpu = res.cell(f"{name}_cpu", "ms/client/min").median
            if req is not None and cpu is not None:
                res.note(f"{name}: 1,000 such clients send {req * 1000 / 60:.1f} requests/s and cost smbd "
                         f"{cpu * 1000 / 60_000:.2f} CPU cores")
        alive = sum(d.is_running() for d in daemons)
        res.note(f"{alive} of {FLEET_DAEMONS} daemons alive at the end; smbd CPU from /proc of every smbd "
                 f"process of the run, over {o.fleet_window_s:g} s per phase")
    finally:
        for d in daemons:
            try:
                d.stop()
            except Exception:  # noqa: BLE001, S110 - best effort at the end of a case
                pass
            d.close()
        proxy.close()

"""Case 9, ``scale``: an index of ``--scale-files`` files (default 1,000,000).

Owns the scale case: what it puts on the server (N empty files in 10 directories, the first
holding min(100,000, N/2) entries, the other nine sharing the rest), how every client lists
them all once, and what is measured afterwards:

(a) the first listing of the biggest directory (page cache dropped; for cscd and rclone the
    first listing ever, so it comes from the server) and a second ``os.listdir`` at once,
    cscd vs the local disk vs rclone; also the first listing of everything (the "index");
(b) the daemon restarted: the time from process start until the mount answers
    (``os.path.ismount`` + a listing of the folder's top directory), page cache warm and
    dropped, cscd vs rclone; then the first listing of the biggest directory after the restart;
(c) the daemon's RSS (``VmRSS`` of ``/proc/PID/status``) after listing everything and after a
    restart, vs rclone's, and the size of cscd's LMDB index on disk;
(d) ``lstat`` latency of a random file of a listed directory: median of 1,000 distinct
    random files per run (``info`` has p99 and the longest).

The local-disk reference is the share's own directory on the server's disk (the same files;
no second copy). rclone sees the same tree through a symbolic link on the server
(``share/bench/rclone/scale`` → ``../Documents/scale``; smbd follows links inside the share),
so the files are made once.

Order, so that no client's background work lands in another client's samples: rclone first
(cold listing, index, warm, stat, RSS), then the local disk, then cscd (which afterwards
re-lists the directories it saw used in the last minute every 3 s, big ones less often;
``info.busy_after_index`` shows what that costs, watched until cscd is idle: see
``_busy_until_idle``). For the restarts both clients are stopped, then each is started alone
and timed. The case's server files are removed at tear-down (``Env.cleanups``), after the
mounts are gone, also with ``--keep``.
"""

from __future__ import annotations

import bisect
import os
import random
import shutil
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from bench.cases import Options, _need_cold
from bench.fileio import can_drop_caches, drop_caches
from bench.harness import CscdMount, Env, RcloneMount
from bench.report import CaseResult

DIRS = 10
BIG_MAX = 100_000
STAT_SAMPLE = 1_000
#: cscd counts as idle once, for this long in a row, it has re-listed no directory, has nothing
#: pending and used under ``IDLE_PERCENT`` CPU: longer than its 3 s rescan interval. The watch
#: ends there or at ``Options.busy_cap_s`` (90 s: longer than the 60 s a listed directory stays
#: "recent"; ``--quick``: 10 s).
QUIET_S = 4.0
IDLE_PERCENT = 5.0
POLL_S = 0.25
MB = 1e6
CLIENTS = ("rclone", "cscd")  # measured in this order (see the module doc)


def layout(n_files: int) -> list[tuple[str, int]]:
    """(directory name, entries) of the tree: d00 the biggest, the rest spread over d01-d09."""
    big = min(BIG_MAX, n_files // 2)
    rest = n_files - big
    out = [("d00", big)]
    for d in range(1, DIRS):
        out.append((f"d{d:02d}", rest // (DIRS - 1) + (1 if d - 1 < rest % (DIRS - 1) else 0)))
    return out


def file_name(k: int) -> str:
    return f"file-{k:07d}.txt"


def _make_dir(path: Path, count: int) -> None:
    """``count`` empty files in ``path``: one open/close each, relative to a directory fd."""
    path.mkdir(parents=True, exist_ok=True)
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    op, cl = os.open, os.close
    try:
        for k in range(count):
            cl(op(file_name(k), flags, 0o644, dir_fd=dfd))
    finally:
        os.close(dfd)


def _remove_tree(path: Path) -> None:
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def prepare_scale(env: Env, o: Options) -> dict[str, Any]:
    """Make the N files on the server's disk (two threads, ~20 µs a file) and rclone's link."""
    root = env.server_dir("cscd") / "scale"
    link = env.server_dir("rclone") / "scale"
    # Registered first, so that even a half-made tree goes at tear-down.
    env.cleanups.append(("remove the scale case's server files", lambda: (_remove_tree(link), _remove_tree(root))))
    dirs = layout(o.scale_files)
    t0 = time.perf_counter()
    errors: list[BaseException] = []

    def work(part: list[tuple[str, int]]) -> None:
        try:
            for name, count in part:
                _make_dir(root / name, count)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    # d00 alone on one thread, the other nine on the other: about even in the full run.
    threads = [threading.Thread(target=work, args=(part,), name=f"scale-make-{i}")
               for i, part in enumerate((dirs[:1], dirs[1:]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    link.symlink_to(Path("..") / root.parent.name / "scale")
    return {"dirs": dirs, "files": o.scale_files, "created_s": round(time.perf_counter() - t0, 1)}


# ------------------------------------------------------------------ helpers


def _count(path: Path) -> int:
    """List ``path`` once with ``os.scandir`` (names and types only); the number of entries."""
    with os.scandir(path) as it:
        return sum(1 for _ in it)


def _count_until_first(path: Path) -> tuple[int, float]:
    """``_count``, and the seconds until ``os.scandir`` gave the first entry."""
    t0 = time.perf_counter()
    first = 0.0
    n = 0
    with os.scandir(path) as it:
        for _ in it:
            if not n:
                first = time.perf_counter() - t0
            n += 1
    return n, first


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak), RssAnon and RssFile (mapped files: LMDB's pages) of ``pid`` in bytes."""
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _children_rss(pid: int) -> int:
    """Sum of VmRSS of the direct children of ``pid`` (cscd's transfer worker processes)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            if ppid == pid:
                total += _proc_status(int(entry)).get("VmRSS", 0)
        except (OSError, ValueError, IndexError):
            continue
    return total


def _mount(env: Env, name: str) -> CscdMount | RcloneMount:
    mount = env.cscd if name == "cscd" else env.rclone
    if mount is None:
        raise RuntimeError(env.errors.get(name) or f"{name} is not running")
    return mount


def _rss(env: Env, name: str, res: CaseResult, key: str) -> None:
    """Cell ``key.name`` = VmRSS in MB; ``info`` gets VmHWM and the children's RSS."""
    def take() -> float:
        proc = _mount(env, name).proc
        if proc is None or proc.poll() is not None:
            raise RuntimeError(f"{name} is not running")
        st = _proc_status(proc.pid)
        res.info.setdefault(f"{key}_detail.{name}", []).append({
            "vm_rss_mb": round(st["VmRSS"] / MB, 1), "vm_hwm_mb": round(st["VmHWM"] / MB, 1),
            "rss_anon_mb": round(st.get("RssAnon", 0) / MB, 1), "rss_file_mb": round(st.get("RssFile", 0) / MB, 1),
            "children_rss_mb": round(_children_rss(proc.pid) / MB, 1)})
        return st["VmRSS"] / MB

    res.cell(f"{key}.{name}", "MB").sample(take)


def _busy_until_idle(env: Env, name: str, cap_s: float) -> dict[str, Any]:
    """Watch ``name`` (cscd) until it has nothing left to do or ``cap_s`` passes.

    Idle means: for ``QUIET_S`` in a row no directory re-listed (its ``dirs_scanned_total``
    counter, read over the control socket every ``POLL_S``), no change pending
    (``pending_changes``) and under ``IDLE_PERCENT`` CPU (which also catches a long listing still
    on its way). Returns when it went quiet (None if it never did), its CPU seconds, listings
    and wire bytes meanwhile.
    """
    side = env.side(name)
    mount = _mount(env, name)
    assert isinstance(mount, CscdMount), "only cscd has counters to watch"
    side.proxy.reset_counters()
    t0 = time.perf_counter()
    cpu0 = env.cpu_seconds().get(name, 0.0)
    first = last = mount.counters()
    quiet_since, cpu_quiet = t0, cpu0
    idle_at = None
    cpu = cpu0
    while time.perf_counter() - t0 < cap_s:
        time.sleep(POLL_S)
        now = time.perf_counter()
        c = mount.counters()
        cpu = env.cpu_seconds().get(name, cpu)
        active = (c.get("dirs_scanned_total") != last.get("dirs_scanned_total")
                  or c.get("pending_changes", 0) > 0)
        last = c
        if active:
            quiet_since, cpu_quiet = now, cpu
        elif now - quiet_since >= QUIET_S:
            if (cpu - cpu_quiet) / (now - quiet_since) * 100 < IDLE_PERCENT:
                idle_at = quiet_since - t0
                break
            quiet_since, cpu_quiet = now, cpu  # busy without a finished listing: watch on
    return {
        "seconds_until_idle": None if idle_at is None else round(idle_at, 1),
        "still_busy_after_s": None if idle_at is not None else cap_s,
        "cpu_s": round(cpu - cpu0, 2),
        "dirs_listed": int(last.get("dirs_scanned_total", 0) - first.get("dirs_scanned_total", 0)),
        "wire_bytes_from_server": side.proxy.bytes_to_client,
        "wire_bytes_to_server": side.proxy.bytes_to_server,
    }


def _stat_sample(dirs: list[tuple[str, int]], seed: int) -> list[tuple[str, str]]:
    """``STAT_SAMPLE`` distinct random (directory, file name) pairs over the whole tree."""
    total = sum(c for _, c in dirs)
    ends = []
    acc = 0
    for _, c in dirs:
        acc += c
        ends.append(acc)
    picks = random.Random(seed).sample(range(total), min(STAT_SAMPLE, total))
    out = []
    for p in picks:
        i = bisect.bisect_right(ends, p)
        start = ends[i - 1] if i else 0
        out.append((dirs[i][0], file_name(p - start)))
    return out


def _lstat_latencies(root: Path, sample: list[tuple[str, str]]) -> list[float]:
    out = []
    for d, f in sample:
        path = os.path.join(root, d, f)
        t0 = time.perf_counter()
        os.lstat(path)
        out.append(time.perf_counter() - t0)
    return out


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _log_since(path: Path, offset: int, started: float, limit: int = 40) -> list[str]:
    """The log lines written after byte ``offset`` (the first ``limit``), each prefixed with its
    time after ``started`` (wall clock, from the line's own time stamp)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read(256 * 1024).decode("utf-8", "replace")
    except OSError:
        return []
    out = []
    for line in [ln for ln in text.splitlines() if ln.strip()][:limit]:
        try:
            stamp = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000
            out.append(f"+{stamp - started:.3f} s  {line[24:]}")
        except ValueError:
            out.append(line)
    return out


def _index_bytes(cache: Path) -> tuple[int, int]:
    """(allocated, apparent) bytes of the LMDB files in ``cache/index``."""
    alloc = size = 0
    for p in (cache / "index").iterdir():
        st = p.stat()
        alloc += st.st_blocks * 512
        size += st.st_size
    return alloc, size


# ------------------------------------------------------------------ the case


def run_scale(env: Env, o: Options, res: CaseResult, state: dict[str, Any]) -> None:
    dirs: list[tuple[str, int]] = [tuple(d) for d in state["dirs"]]  # type: ignore[misc]
    n_files = state["files"]
    big_name, big_count = dirs[0]
    res.info["files"] = n_files
    res.info["layout"] = {d: c for d, c in dirs}
    res.info["created_s"] = state["created_s"]
    server_root = env.server_dir("cscd") / "scale"
    roots: dict[str, Any] = {"local": lambda: server_root}
    for name in CLIENTS:
        roots[name] = lambda name=name: env.side(name).root / "scale"

    def listing(kind: str, name: str, path: Path, expected: int, cold: bool) -> float:
        if cold:
            _need_cold()
            drop_caches()
        t0 = time.perf_counter()
        if kind == "warm":
            n = len(os.listdir(path))
        else:
            n, first = _count_until_first(path)
            res.cell(f"first_entry.{name}", "s").add(first)
        dt = time.perf_counter() - t0
        if n != expected:
            raise RuntimeError(f"{name}: {path} has {n} entries, expected {expected}")
        return dt

    # -------------------------------------------------- (a), (c), (d) per side, one side at a time
    units = {"cold": "s", "index": "s", "warm": "s", "stat": "µs", "rss": "MB"}
    for name in ("rclone", "local", "cscd"):
        cold = res.cell(f"cold.{name}", "s")
        try:
            root = roots[name]()
            t_big = cold.sample(lambda root=root, name=name: listing("cold", name, root / big_name, big_count, True))
            if t_big is None:  # no cold sample (not root?): the first listing still has to happen
                t_big = listing("first", name, root / big_name, big_count, False)
            t0 = time.perf_counter()
            _count(root)  # the top of the tree
            for d, count in dirs[1:]:
                got = _count(root / d)
                if got != count:
                    raise RuntimeError(f"{name}: {root / d} has {got} entries, expected {count}")
            res.cell(f"index.{name}", "s").add(t_big + time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001
            for key, unit in units.items():
                if key == "rss" and name == "local":
                    continue
                c = res.cell(f"{key}.{name}", unit)
                if not c.values and not c.errors:
                    c.fail(exc)
            continue
        for _ in range(o.repeat):
            res.cell(f"warm.{name}", "s").sample(
                lambda root=root, name=name: listing("warm", name, root / big_name, big_count, False))
        lat_all: list[float] = []
        for i in range(o.repeat):
            sample = _stat_sample(dirs, seed=1000 * i + {"rclone": 1, "local": 2, "cscd": 3}[name])

            def stat_run(root: Path = root, sample: list[tuple[str, str]] = sample, name: str = name,
                         lat_all: list[float] = lat_all) -> float:
                if name == "local":  # warm: inodes in memory (a FUSE mount would answer from the kernel)
                    _lstat_latencies(root, sample)
                lat = _lstat_latencies(root, sample)
                lat_all.extend(lat)
                return statistics.median(lat) * 1e6

            res.cell(f"stat.{name}", "µs").sample(stat_run)
        if lat_all:
            res.info[f"lstat_us.{name}"] = {"p90": round(_pct(lat_all, 0.9) * 1e6, 1),
                                            "p99": round(_pct(lat_all, 0.99) * 1e6, 1),
                                            "max": round(max(lat_all) * 1e6, 1), "n": len(lat_all)}
        if name != "local":
            _rss(env, name, res, "rss")
    try:
        alloc, size = _index_bytes(_mount(env, "cscd").cache)
        res.cell("index_mb.cscd", "MB").add(alloc / MB)
        res.info["index_bytes"] = {"allocated": alloc, "apparent": size,
                                   "allocated_per_file": round(alloc / n_files, 1)}
    except Exception as exc:  # noqa: BLE001
        res.cell("index_mb.cscd", "MB").fail(exc)
    # What cscd does on its own after a listing of everything (it rescans "recent" directories).
    try:
        res.info["busy_after_index.cscd"] = _busy_until_idle(env, "cscd", o.busy_cap_s)
        _rss(env, "cscd", res, "rss_idle")
    except Exception as exc:  # noqa: BLE001
        res.info["busy_after_index.cscd"] = str(exc)

    # -------------------------------------------------- (b) restarts
    start_timeout = 60.0 + n_files / 10_000  # 160 s at a million files
    kinds = ["warm", "cold"] if can_drop_caches() else ["warm"]
    if "cold" not in kinds:
        for name in CLIENTS:
            res.cell(f"start_cold.{name}", "s").fail("cold starts need root (drop_caches)")
    for i in range(o.repeat):
        for kind in kinds:
            for name in CLIENTS:  # both down: each starts alone
                try:
                    m = _mount(env, name)
                    t0 = time.perf_counter()
                    m.stop()
                    res.info.setdefault(f"stop_s.{name}", []).append(round(time.perf_counter() - t0, 2))
                    if m.exit_problem:
                        res.info.setdefault(f"stop_problem.{name}", []).append(m.exit_problem)
                        m.exit_problem = None
                except Exception as exc:  # noqa: BLE001
                    res.cell(f"start_{kind}.{name}", "s").fail(exc)
            for name in CLIENTS:
                cell = res.cell(f"start_{kind}.{name}", "s")
                try:
                    m = _mount(env, name)
                    if kind == "cold":
                        drop_caches()
                    offset = _log_size(m.log_path)
                    wall0 = time.time()
                    t0 = time.perf_counter()
                    m.start(timeout_s=start_timeout)
                    t_mounted = time.perf_counter() - t0
                    os.listdir(env.side(name).root)
                    cell.add(time.perf_counter() - t0)
                    res.info.setdefault(f"start_{kind}_ismount_s.{name}", []).append(round(t_mounted, 3))
                    if name == "cscd" and i == 0:
                        res.info[f"log_at_start_{kind}.cscd"] = _log_since(m.log_path, offset, wall0)
                except Exception as exc:  # noqa: BLE001
                    cell.fail(exc)
    # After the last start: the first listing of the biggest directory, then RSS; rclone has to
    # list it on the server again, cscd serves it from its index.
    for name in ("rclone", "cscd"):
        try:
            env.side(name)  # running?
            root = roots[name]()
        except Exception as exc:  # noqa: BLE001
            res.cell(f"relist.{name}", "s").fail(exc)
            res.cell(f"rss_restart.{name}", "MB").fail(exc)
            continue
        if name == "cscd":
            _rss(env, name, res, "rss_started")  # before the listing: what the start alone costs
        res.cell(f"relist.{name}", "s").sample(
            lambda root=root, name=name: listing("first", name, root / big_name, big_count, False))
        _rss(env, name, res, "rss_restart")
    try:
        res.info["busy_after_start.cscd"] = _busy_until_idle(env, "cscd", o.busy_cap_s)
        _rss(env, "cscd", res, "rss_end")
    except Exception as exc:  # noqa: BLE001
        res.info["busy_after_start.cscd"] = str(exc)

    # -------------------------------------------------- rows
    big = f"{big_count:,}-entry directory"
    for kind, label in (("cold", f"first listing of a {big}, page cache dropped (s)"),
                        ("warm", f"os.listdir of the {big} again (s)"),
                        ("index", f"first listing of all {n_files:,} files in {DIRS} directories (s)")):
        res.row(label, f"{kind}.cscd", f"{kind}.local", "local disk", higher_is_better=False)
        res.row(label, f"{kind}.cscd", f"{kind}.rclone", "rclone", higher_is_better=False)
    label = f"first listing of a {big}: until the first entry (s)"
    res.row(label, "first_entry.cscd", "first_entry.local", "local disk", higher_is_better=False)
    res.row(label, "first_entry.cscd", "first_entry.rclone", "rclone", higher_is_better=False)
    label = f"lstat of a random file of a listed directory, median of {STAT_SAMPLE:,} (µs)"
    res.row(label, "stat.cscd", "stat.local", "local disk", higher_is_better=False)
    res.row(label, "stat.cscd", "stat.rclone", "rclone", higher_is_better=False)
    res.row(f"daemon RSS after listing {n_files:,} files (MB)", "rss.cscd", "rss.rclone", "rclone",
            higher_is_better=False)
    res.row(f"LMDB index on disk, {n_files:,} files (MB)", "index_mb.cscd", "", "no reference",
            higher_is_better=False)
    res.row("restart: start until the mount answers, page cache warm (s)", "start_warm.cscd", "start_warm.rclone",
            "rclone", higher_is_better=False)
    res.row("restart: start until the mount answers, page cache dropped (s)", "start_cold.cscd",
            "start_cold.rclone", "rclone", higher_is_better=False)
    res.row(f"after the restart: first listing of the {big} (s)", "relist.cscd", "relist.rclone", "rclone",
            higher_is_better=False)
    res.row("after the restart and that listing: daemon RSS (MB)", "rss_restart.cscd", "rss_restart.rclone",
            "rclone", higher_is_better=False)
    res.note(f"{n_files:,} empty files: {big_count:,} in {big_name}, the rest in {DIRS - 1} directories; local disk "
             "= the share's directory on the server's disk; rclone reads the same tree through a link on the server. "
             "'the mount answers' = os.path.ismount + os.listdir of the folder's top directory. lstat: 1,000 distinct "
             "random files per run, first lookup through the mount (the local disk's inodes warmed first). RSS = "
             "VmRSS, which counts the LMDB pages cscd has mapped (info.*_detail: rss_anon_mb / rss_file_mb)")

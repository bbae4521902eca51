"""``python -m bench``: set everything up, run the cases, print the table, write latest.json.

Owns the command line, the case order and the run's life cycle: start Samba and the proxies,
put every selected case's test data on the server, start the cscd and rclone mounts, run each
case (a failing case records its error and the run goes on), then always tear everything
down, keep the client logs next to the JSON, and print the table.

Exit codes: 0 every case ran (single measurements may still show errors in the table),
1 a case failed as a whole or the set-up failed, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import at_rest, cases, churn, fleet, programs, scale, stress
from bench.cases import Case, Options
from bench.fileio import GiB, KiB, MiB
from bench.harness import REPO_ROOT, Env
from bench.report import CaseResult, markdown_table, table_lines, write_json

CASES: list[Case] = [
    # First: an idle client's requests after touching nothing is only meaningful before the other
    # cases touched anything. What it leaves (256 open watches, one listing a minute) costs the
    # cases after it nothing measurable.
    Case("fleet", "11. an idle client's SMB requests per minute after touching N directories",
         fleet.run_fleet, fleet.prepare_fleet),
    Case("fleet-sim", "12. 20 daemons on one smbd: requests and server CPU, idle and one editing",
         fleet.run_fleet_sim),
    Case("read", "1. sequential read of a cached file", cases.run_read, cases.prepare_read),
    Case("write", "2. sequential write through the mount, until on the server", cases.run_write),
    Case("first-read", "3. first read of an uncached server file", cases.run_first_read,
         cases.prepare_first_read),
    Case("small", "5. small files until all on the server", cases.run_small),
    Case("delta", "6. bytes on the wire per byte changed", cases.run_delta, cases.prepare_delta),
    Case("hashing", "7. xxh3-128 hashing vs xxhsum", cases.run_hashing, needs_mounts=False),
    Case("upload-read", "extra: cached reads while a large upload runs", stress.run_upload_read,
         stress.prepare_upload_read),
    Case("at-rest", "13. the encrypted cache against a plain one (device.encrypt_cache)", at_rest.run_at_rest),
    # After the data cases: cscd re-lists every recently used directory every 3 s for a minute, so
    # the 200+ directories walked here would load the daemon during the cases after it (see README).
    Case("metadata", "4. ls -lR / find over many files", cases.run_metadata, cases.prepare_metadata),
    Case("programs", "14. git, grep, du, find, tar, md5sum on a cached tree", programs.run_programs,
         programs.prepare_programs),
    Case("program-writes", "15. tar x, cp -a, git clone, rm -rf, until on the server", programs.run_program_writes,
         programs.prepare_programs),
    Case("churn", "10. fio and stress-ng jobs through the mount (ops/s)", churn.run_churn),
    # Last: it kills smbd, and a client that does not recover would spoil the cases after it.
    Case("server-loss", "8. smbd killed: stalls on cached data, recovery", stress.run_server_loss,
         stress.prepare_server_loss),
    # After everything: a million-file index slows every case after it (cscd rescans the big
    # directories it listed, and re-lists everything once after each restart), and it restarts
    # both clients.
    Case("scale", "9. an index of many files: listing, stat, RSS, restart", scale.run_scale, scale.prepare_scale),
]
ALIASES = {"hash": "hashing", "small-files": "small", "meta": "metadata", "loss": "server-loss",
           "first": "first-read", "cached-read": "read", "index": "scale",
           "encrypted-cache": "at-rest"}
RESULTS_DIR = REPO_ROOT / "bench" / "results"

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``1G``, ``32M``, ``512MiB``, ``4k`` or plain bytes (binary units)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 32M or 1G)")
    mult = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1 << 40}[m[2].lower()]
    size = int(float(m[1]) * mult)
    if size < MiB:
        raise argparse.ArgumentTypeError(f"size {text!r} is below 1 MiB")
    return size


def _case_list(text: str) -> list[str]:
    names = [ALIASES.get(n.strip(), n.strip()) for n in text.split(",") if n.strip()]
    known = {c.name for c in CASES}
    bad = [n for n in names if n not in known]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown case {', '.join(bad)}; known: {', '.join(sorted(known))}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="small sizes, one run each, N=1,000, 200 small files, 20,000 files in the scale case "
                        "(under 2 minutes)")
    p.add_argument("--size", type=parse_size, help="big-file size (default 1G; --quick: 32M)")
    p.add_argument("--repeat", type=int, help="runs per measurement, the median is reported (default 3; --quick: 1)")
    p.add_argument("--files", type=int, help="files in the metadata tree, in 100 directories (default 10000; "
                                             "--quick: 1000)")
    p.add_argument("--small-files", type=int, help="files in the small-files case (default 1000; --quick: 200)")
    p.add_argument("--scale-files", type=int, help="empty files in the scale case, in 10 directories, the biggest "
                                                   "min(100000, N/2) (default 1000000; --quick: 20000)")
    p.add_argument("--only", type=_case_list, help="comma-separated cases to run (default: all)")
    p.add_argument("--skip", type=_case_list, default=[], help="comma-separated cases to leave out")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--loss-window", type=float, default=3.0, help="seconds of probing while smbd is down")
    p.add_argument("--workdir", type=Path, help="where the temporary run directory goes (default: $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the run directory (caches, logs, share)")
    p.add_argument("--json", type=Path, default=RESULTS_DIR / "latest.json", help="where the results go")
    p.add_argument("--no-encryption", action="store_true",
                   help="run cscd (and the smbprotocol reference) without SMB3 encryption; default: as shipped "
                        "(encryption required)")
    p.add_argument("--rclone-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for rclone mount, e.g. --rclone-arg=--vfs-write-back=0s (repeatable)")
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    return p


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def _meta(args: argparse.Namespace, o: Options, names: list[str]) -> dict[str, Any]:
    from cscd import __version__

    return {
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "quick": args.quick,
        "cases": names,
        "size_bytes": o.size,
        "repeat": o.repeat,
        "metadata_files": o.meta_files,
        "small_files": o.small_files,
        "scale_files": o.scale_files,
        "cscd_encryption": not args.no_encryption,
        "rclone_args": ["--vfs-cache-mode", "full", *args.rclone_arg],
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB, 1),
        },
        "versions": {
            "cscd": __version__,
            "rclone": _version(["rclone", "version"]),
            "smbd": _version(["smbd", "--version"]),
            "xxhsum": _version(["xxhsum", "--version"]),
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _keep_logs(env: Env, json_path: Path) -> dict[str, str]:
    """Copy the client and server logs next to the JSON as ``<stem>-cscd.log`` etc.

    (``bench/.gitignore`` ignores them in ``bench/results``.)
    """
    kept = {}
    sources = {"cscd": env.workdir / "cscd.log", "rclone": env.workdir / "rclone.log"}
    if env.samba is not None:
        sources["smbd"] = env.samba.log_path
    for name in ("cscd", "rclone", "smbd"):
        (json_path.parent / f"{json_path.stem}-{name}.log").unlink(missing_ok=True)
    for name, src in sources.items():
        if src.exists():
            dst = json_path.parent / f"{json_path.stem}-{name}.log"
            try:
                shutil.copyfile(src, dst)
                kept[name] = str(dst)
            except OSError:
                kept[name] = str(src)
    return kept


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        for c in CASES:
            print(f"{c.name:12} {c.title}")
        return 0
    quick = args.quick
    o = Options(
        size=args.size or (32 * MiB if quick else GiB),
        repeat=max(1, args.repeat or (1 if quick else 3)),
        meta_files=max(100, args.files or (1000 if quick else 10_000)),
        small_files=max(1, args.small_files or (200 if quick else 1000)),
        loss_window_s=args.loss_window,
        loss_cap_s=10.0 if quick else 30.0,
        scale_files=max(100, args.scale_files or (20_000 if quick else 1_000_000)),
        busy_cap_s=5.0 if quick else 90.0,
        stress_s=3 if quick else 10,
        fleet_window_s=20.0 if quick else 120.0,
    )
    idle_s = 1.0 if quick else 3.0  # how long each client is watched doing nothing, at start and end
    names = args.only or [c.name for c in CASES]
    selected = [c for c in CASES if c.name in names and c.name not in args.skip]
    signal.signal(signal.SIGTERM, _on_sigterm)
    meta = _meta(args, o, [c.name for c in selected])
    env = Env(args.workdir, keep=args.keep, encryption=not args.no_encryption, rclone_args=args.rclone_arg)
    results: list[CaseResult] = []
    t_run = time.perf_counter()
    failed = False
    print(f"bench: run directory {env.workdir}", file=sys.stderr, flush=True)
    try:
        states: dict[str, Any] = {}
        if any(c.needs_mounts for c in selected):
            try:
                env.start_server()
            except Exception as exc:  # noqa: BLE001 - every case that needs it reports this
                env.errors["server"] = f"smbd did not start: {exc}"
            else:
                for c in selected:
                    if c.prepare is None:
                        continue
                    try:
                        states[c.name] = c.prepare(env, o)
                    except Exception as exc:  # noqa: BLE001
                        states[c.name] = exc
                env.start_mounts()
            for what, err in env.errors.items():
                print(f"bench: {what}: {err}", file=sys.stderr, flush=True)
            meta["idle_after_start"] = env.idle_cost(idle_s)
        for c in selected:
            res = CaseResult(c.name, c.title)
            print(f"bench: {c.title} ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                if c.needs_mounts and "server" in env.errors:
                    raise RuntimeError(env.errors["server"])
                state = states.get(c.name)
                if isinstance(state, BaseException):
                    raise RuntimeError(f"putting the test data on the server failed: {state}") from state
                cpu0 = env.cpu_seconds()
                c.run(env, o, res, state)
                cpu1 = env.cpu_seconds()
                res.info["client_cpu_s"] = {n: round(cpu1[n] - cpu0[n], 2) for n in cpu1 if n in cpu0}
            except Exception as exc:  # noqa: BLE001 - the table shows it, the run goes on
                res.fail(exc)
                failed = True
            res.seconds = time.perf_counter() - t0
            print(f"bench: {c.name} took {res.seconds:.1f} s" + (f" — ERROR {res.error}" if res.error else ""),
                  file=sys.stderr, flush=True)
            results.append(res)
            write_json(args.json, results, {**meta, "partial": True})
        if env.cscd is not None or env.rclone is not None:
            meta["idle_at_end"] = env.idle_cost(idle_s)
    except KeyboardInterrupt:
        print("bench: interrupted; cleaning up", file=sys.stderr, flush=True)
        failed = True
    finally:
        shutdown = env.close()
        logs = _keep_logs(env, args.json)
        if not args.keep:
            env.remove_workdir()
    meta.update({
        "partial": False,
        "seconds": round(time.perf_counter() - t_run, 1),
        "setup_errors": env.errors,
        "shutdown": shutdown,
        "logs": logs,
        "run_directory": str(env.workdir) if args.keep else None,
    })
    write_json(args.json, results, meta)
    print("\n".join(table_lines(results)))
    if args.markdown:
        print()
        print(markdown_table(results))
    print()
    for name in ("cscd", "rclone"):
        info = shutdown.get(name)
        if not isinstance(info, dict):
            continue
        problems = info.get("log_problems") or []
        exit_problem = info.get("exit_problem")
        print(f"{name}: {len(problems)} warning/error lines in its log ({logs.get(name, info['log'])})"
              + (f"; at shutdown it {exit_problem}" if exit_problem else ""))
        for line in problems[:5]:
            print(f"  {line[:200]}")
    print(f"total {meta['seconds']:.0f} s; results in {args.json}")
    if env.errors:
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The commands that ask the running daemon (``status``, ``sync``, ``events``, ``stats``,
``pin``, ``free-space``, ``info``, ``conflicts``, ``policy``, ``profile``), and how each
shows the answer.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from cscd import progress
from cscd.cli.common import (
    EXIT_PENDING,
    EXIT_REFUSED,
    _abs,
    _call,
    _client,
    _emit_json,
    _follow,
    _policy_dir,
    _simple,
    _user_label,
    _when,
    parse_since,
)
from cscd.control import ControlClient, ControlError
from cscd.errors import ConfigError
from cscd.metrics import prometheus, write_prometheus_textfile

log = logging.getLogger("cscd")


def _cmd_status(args: argparse.Namespace) -> int:
    status = _call(args, "status")
    if args.json:
        _emit_json(status)
        return 0
    for name, f in status.get("folders", {}).items():
        rtt = f" (rtt {f['rtt_ms']:.1f} ms)" if f.get("rtt_ms") is not None else ""
        uncached = "" if f.get("cached", True) else " (not cached: offline: false)"
        print(f"{name}: {f['mode']} — {f['reason']}{rtt}{uncached}")
        if f.get("target"):
            print(f"  target     {f['target']}")
        if f.get("served_by"):
            print(f"  served by  {f['served_by']} (DFS)")
        pending = ("?" if f.get("pending_changes") is None
                   else f"{f['pending_changes']} changes, {progress.size(f.get('pending_bytes'))}")
        print(f"  pending    {pending}")
        up, down = progress.size(f.get("bytes_uploaded")), progress.size(f.get("bytes_downloaded"))
        print(f"  traffic    {up} up, {down} down")
        print(f"  last sync  {_when(f.get('last_sync'))}")
        sp = f.get("space")
        if sp:
            print(f"  space      {progress.size(sp['available_bytes'])} free of "
                  f"{progress.size(sp['total_bytes'])} on the share")
        ch = f.get("changes") or {}
        if ch.get("mode") == "notify":
            print(f"  changes    notified by the server ({ch['directory_watches']} directory watches)")
        elif ch.get("mode") == "polling":
            print(f"  changes    polled: the server does not notify ({ch['polled_directories']} "
                  "directories polled, backing off to minutes)")
    s = status.get("sync", {})
    print(f"sync: {s.get('pending_changes', 0)} changes pending, {s.get('files_uploaded', 0)} files "
          f"uploaded, {s.get('conflicts', 0)} conflicts since start")
    problems = s.get("problems") or []
    if problems:
        print(f"sync problems: {len(problems)} file(s) keep failing (cached here, retried):")
        for p in problems:
            kind = "" if p.get("kind", "error") == "error" else f"[{p['kind']}] "
            print(f"  {p['folder']}/{p['path'].split('/', 1)[-1]}: {kind}{p['reason']} "
                  f"({p['failures']} tries, next in {p['retry_in_s']} s)")
    c = status.get("cache", {})
    limit = "no limit" if c.get("limit_bytes") is None else f"limit {progress.size(c['limit_bytes'])}"
    print(f"cache: {progress.size(c.get('used_bytes'))} used, {limit}; {c.get('hits', 0)} hits, "
          f"{c.get('misses', 0)} misses")
    if c.get("disk"):
        print(f"cache disk: {progress.size(c['disk']['available_bytes'])} free of "
              f"{progress.size(c['disk']['total_bytes'])}")
    protection = c.get("protection") or {}
    if protection.get("state") in ("encrypted", "sealed"):
        print(f"cache protection: encrypted at rest ({protection['how']})")
    elif protection.get("state") == "online only":
        print(f"cache protection: none possible, so nothing is cached (online only): {protection['reason']}")
    lock = (status.get("device") or {}).get("screen_lock") or {}
    if lock.get("required"):
        verdict = {True: "complies", False: "does NOT comply", None: "not checked yet"}[lock.get("compliant")]
        shut = "; the offline cache is shut until it does" if lock.get("offline_refused") else ""
        print(f"screen lock: the session {verdict} with device.require_screen_lock: {lock.get('reason')}{shut}")
    for folder, state in ((status.get("device") or {}).get("wiped") or {}).items():
        print(f"revoked: {folder} by the device policy (device.wipe): {state}")
    for j in status.get("jobs") or []:
        print(f"running: {j['kind']} {j['target']}: " + (", ".join(progress.describe(j)) or j["phase"]))
    prof = status.get("profile")
    if prof:
        nxt = prof.get("next_upload_in_s")
        upload = "background upload off" if nxt is None else f"next background upload in {nxt / 60:.0f} min"
        print(f"roaming profile: {prof['target']}; {prof['logons']} logons, {prof['logoffs']} logoffs, "
              f"{prof['uploads']} uploads, {prof['failed']} failed; last: {prof.get('last_result') or 'none'}; "
              f"{upload}")
    return 0


def _cmd_sync(args: argparse.Namespace) -> int:
    request = {"path": _abs(args.path) if args.path else None, "wait": args.wait}
    if not args.wait:
        result = _call(args, "sync", request)
        if args.json:
            _emit_json(result)
        else:
            print(f"sync: requested for {', '.join(result.get('folders', [])) or 'no folder'}")
        return 0
    if not args.json and not sys.stderr.isatty():
        print("sync: started", flush=True)
    result = _follow(args, "sync", request, "sync")
    if args.json:
        _emit_json(result)
    else:
        print(f"sync: finished in {result.get('duration_s', 0):.1f} s: {result.get('files_uploaded', 0)} "
              f"files, {progress.size(result.get('bytes_uploaded', 0))} uploaded; "
              f"{result.get('pending', 0)} changes pending")
        for name, why in (result.get("skipped") or {}).items():
            print(f"sync: {name} skipped: {why}")
    return EXIT_PENDING if result.get("pending") else 0


def _print_event(e: dict[str, Any]) -> None:
    stamp = dt.datetime.fromtimestamp(e["time"]).strftime("%Y-%m-%d %H:%M:%S")
    print(f"{stamp} {e['level']:<7} {e['id']} {e['name']:<24} {e['message']}", flush=True)


def _cmd_events(args: argparse.Namespace) -> int:
    request: dict[str, Any] = {}
    if args.since:
        request["since"] = parse_since(args.since)
    if args.limit:
        request["limit"] = args.limit
    with _client(args, max(35.0, args.timeout or 0)) as client:
        answer = client.call("events", request)
        if args.json and not args.follow:
            _emit_json(answer)
            return 0
        last = answer["last_seq"]
        for e in answer["events"]:
            print(json.dumps(e, sort_keys=True), flush=True) if args.json else _print_event(e)
        while args.follow:
            answer = client.call("events", {"after_seq": last, "wait_s": 25})
            for e in answer["events"]:
                print(json.dumps(e, sort_keys=True), flush=True) if args.json else _print_event(e)
                last = max(last, e["seq"])
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    if args.all_users:
        return _stats_of_all_users(Path(args.all_users))
    stats = _call(args, "stats")
    user = os.path.expandvars(args.user) if args.user else _user_label(os.getuid())
    if args.textfile:
        write_prometheus_textfile(Path(args.textfile), stats, user=user)
    if args.json:
        _emit_json(stats)
    elif args.prometheus:
        sys.stdout.write(prometheus(stats, user=user))
    elif not args.textfile:
        for fam in stats["metrics"]:
            for s in fam["samples"]:
                label = f"{{{s['labels']['folder']}}}" if s["labels"].get("folder") else ""
                value = s["value"]
                shown = f"{value:.3f}" if isinstance(value, float) and value != int(value) else f"{value:.0f}"
                print(f"{fam['name'] + label:<48} {shown}")
    return 0


def _stats_of_all_users(directory: Path) -> int:
    """Root's collector (``cscd-metrics.timer``): ``DIR/cscd-USER.prom`` for every user whose
    daemon answers under ``/run/user/UID/cscd/``; the files of users without one go, so
    Prometheus sees no frozen counters."""
    root = Path(os.environ.get("CSCD_RUN_USER_ROOT", "/run/user"))
    written: set[str] = set()
    for run_dir in sorted(root.glob("[0-9]*/cscd")):
        uid = int(run_dir.parent.name)
        for sock in sorted(run_dir.glob("*.sock")):
            if sock.lstat().st_uid != uid:
                continue  # not that user's own: never trusted
            try:
                with ControlClient([sock], timeout_s=10.0) as client:
                    stats = client.call("stats")
            except (ControlError, OSError) as exc:
                print(f"cscd: {sock}: {exc}", file=sys.stderr)
                continue
            user = _user_label(uid)
            name = f"cscd-{user}.prom" if sock.name == "control.sock" else f"cscd-{user}-{sock.stem}.prom"
            write_prometheus_textfile(directory / name, stats, user=user)
            written.add(name)
    for old in directory.glob("cscd-*.prom"):
        if old.name not in written:
            old.unlink(missing_ok=True)
    return 0


def _cmd_free_space(args: argparse.Namespace) -> int:
    result = _follow(args, "free-space", {"path": _abs(args.path)}, "free-space")
    if args.json:
        _emit_json(result)
    else:
        print(f"free-space: {result['files']} files, {progress.size(result['bytes'])} freed under {args.path}")
    return 0


def _cmd_pin(args: argparse.Namespace) -> int:
    result = _follow(args, "pin", {"path": _abs(args.path)}, "pin")
    if args.json:
        _emit_json(result)
    elif result.get("files_missing"):
        print(f"pin: {args.path} pinned; {result['files_missing']} files not here yet (fetched when the "
              "server answers)")
    else:
        print(f"pin: {args.path} pinned, all of it here")
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    if args.action in ("logon", "logoff"):
        result = _follow(args, f"profile.{args.action}", {}, f"profile {args.action}")
        if args.json:
            _emit_json(result)
        else:
            print(result.get("message") or json.dumps(result, indent=2, sort_keys=True))
        return 0
    if args.action != "wait-logon":
        return _simple(f"profile.{args.action}", lambda _: {})(args)
    # The session's unit runs this before the desktop: one line now, one at the end; exit 0
    # once the daemon answered, so that a slow server never holds up the session (but see
    # super-mandatory below).
    if not args.json:
        print(f"cscd: waiting up to {args.limit:g} s for the roaming profile", flush=True)
    result = _call(args, "profile.wait_logon", {"limit_s": args.limit}, timeout_s=args.limit + 30)
    if args.json:
        _emit_json(result)
    else:
        print(f"cscd: {result['message']}", file=sys.stderr if result.get("refuse_logon") else sys.stdout,
              flush=True)
    # A super-mandatory profile that did not load: the one case that fails the session (the
    # PAM snippet's "required" line then refuses the logon, as Windows does).
    return EXIT_REFUSED if result.get("refuse_logon") else 0


def _cmd_info(args: argparse.Namespace) -> int:
    """One block per path (``cscd.cache.filestate`` says what each state means)."""
    answers = [_call(args, "info", {"path": _abs(p)}) for p in args.paths]
    if args.json:
        _emit_json(answers if len(answers) > 1 else answers[0])
        return 0
    for a in answers:
        size = "folder" if a["is_dir"] else f"{a['bytes_cached']:,} of {a['size']:,} bytes here"
        extra = [f"pinned: {'yes' if a['pinned'] else 'no'}", size]
        if a["pending"]:
            extra.append("waiting to upload: " + ", ".join(a["pending"]))
        if a["conflict_with"]:
            extra.append(f"conflict with: {a['conflict_with']}")
        if a["problem"]:
            extra.append(f"problem: {a['problem']}")
        extra.append(f"on the server: {a['server_path'] if a['on_server'] else 'not yet'}")
        print(f"{a['path']}: {a['state']}\n  " + "\n  ".join(extra))
    return 0


def _cmd_conflicts(args: argparse.Namespace) -> int:
    if args.action == "resolve":
        return _simple("conflicts.resolve", lambda a: {"path": _abs(a.path), "keep": a.keep})(args)
    result = _call(args, "conflicts")
    if args.json:
        _emit_json(result)
        return 0
    items = result.get("conflicts", []) if isinstance(result, dict) else result
    if not items:
        print("no conflicts")
    for c in items:
        print("  ".join(f"{k}: {v}" for k, v in c.items()) if isinstance(c, dict) else c)
    return 0


def _cmd_policy(args: argparse.Namespace) -> int:
    """``policy show``: the policy in force in the daemon, key by key with file:line; computed
    from the files (``policy/report.py``) for another user or host, or when no daemon runs.
    ``policy check DIR``: are the files valid."""
    from cscd.control import DaemonNotRunning
    from cscd.policy import report
    from cscd.policy.machine import DEFAULT_ROOT, PolicyRow, format_rows

    root = Path(args.dir) if getattr(args, "dir", None) else None
    if args.action == "check":
        result = report.check(root or DEFAULT_ROOT)
        if args.json:
            _emit_json(result)
        else:
            print(f"policy: {len(result['files'])} file(s), {result['blocks']} block(s) in {result['policy_dir']}: "
                  "valid" if result["files"] else f"policy: no policy files in {result['policy_dir']}")
        return 0
    offline = args.for_user or args.host or args.groups or root
    result = None
    if not offline:
        try:
            result = _call(args, "policy.show")
        except (DaemonNotRunning, ConfigError):
            result = None  # gpresult needs no service either: compute it from the files
    if result is None:
        groups = tuple(g for g in args.groups.split(",") if g) if args.groups else None
        user = args.for_user or (os.path.expandvars(args.user) if args.user else None)
        subject = report.subject_for(user, args.host, groups)
        result = report.show(subject, root or _policy_dir(args) or DEFAULT_ROOT)
    if args.json:
        _emit_json(result)
        return 0
    if result.get("computed_from_files"):
        print("(computed from the policy files: no daemon asked)")
    primary = "" if result.get("is_primary_computer", True) else " (not a primary computer: nothing redirected)"
    print(f"policy for {result.get('user')} on {result.get('host')}{primary}")
    files = result.get("files") or []
    print(f"files: {', '.join(files)}" if files else f"files: none in {result.get('policy_dir')}; every key has "
          "its default")
    sys.stdout.write(format_rows(PolicyRow(r["key"], r["value"], r["origin"]) for r in result.get("rows", [])))
    return 0

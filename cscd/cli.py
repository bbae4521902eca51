"""The ``cscd`` command: argument parsing, one-line errors, exit codes.

``cscd daemon [--config FILE]`` runs the daemon in the foreground (for systemd); ``cscd
unmount`` detaches the mount a crashed daemon left behind (the units' ``ExecStopPost``).
``cscd demo`` starts a throwaway Samba on 127.0.0.1 and mounts a redirected ``Documents``
folder from it, for trying cscd (and the README's first command).

Every other command talks to the running daemon over its control socket (``control.py``):
``status``, ``sync [PATH] [--wait]``, ``events [--follow] [--since WHEN]``, ``stats
[--prometheus] [--textfile PATH]``, ``reload``, ``offline|online [FOLDER]``, ``pin|unpin
PATH``, ``free-space PATH``, ``info PATH…``, ``conflicts`` / ``conflicts resolve PATH --keep
local|remote|both``, ``policy show``, ``profile logon|logoff``. The socket is found from the
configuration (``--config``, default ``~/.config/cscd/cscd.yaml``) and ``$XDG_RUNTIME_DIR``,
or given with ``--socket``. ``--json`` prints the daemon's answer as JSON for scripts
(``events --follow --json``: one JSON object per line); on an error it prints
``{"error": {"code": …, "message": …}}`` and the error line still goes to stderr.

Exit codes:

- 0 success
- 1 internal error (a bug: a traceback is printed)
- 2 bad configuration or input (usage errors too)
- 3 server unreachable on a first start with nothing cached (``daemon``)
- 4 the daemon is not running (no control socket, or nobody answers on it)
- 5 the daemon refused or could not do the request (the message says why)
- 6 the daemon does not implement the command yet (the message names the issue)
- 7 ``sync --wait`` ended with changes still pending (a folder is offline, say)
- 130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import pwd
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import trio

from cscd import __version__, progress
from cscd.control import ControlClient, ControlError, default_config_path, socket_candidates
from cscd.errors import CacheLost, ConfigError, CscdError
from cscd.events import JournalHandler, journal_stream_is_stderr
from cscd.metrics import prometheus, write_prometheus_textfile

log = logging.getLogger("cscd")

EXIT_NOT_RUNNING = 4
EXIT_REFUSED = 5
EXIT_NOT_IMPLEMENTED = 6
EXIT_PENDING = 7


def _setup_logging(verbose: int) -> None:
    """INFO by default; ``-v``: cscd's own DEBUG; ``-vv``: everything, libraries included.

    Under systemd (stderr is the journal stream) records go to journald with structured
    fields instead, so events carry their MESSAGE_ID and CSCD_* fields.
    """
    level = logging.DEBUG if verbose >= 2 else logging.INFO
    if journal_stream_is_stderr():
        handler: logging.Handler = JournalHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logging.basicConfig(level=level, handlers=[handler])
    else:
        logging.basicConfig(level=level, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose == 1:
        logging.getLogger("cscd").setLevel(logging.DEBUG)
    if verbose < 2:
        # Their warnings (a reset socket, say) are failures cscd handles and reports itself.
        for noisy in ("smbprotocol", "spnego", "pyfuse3"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


def _cmd_daemon(args: argparse.Namespace) -> int:
    from cscd.daemon import run_daemon
    from cscd.policy.config import load_config

    config = load_config(Path(args.config) if args.config else default_config_path())
    trio.run(run_daemon, config)
    return 0


def _mounted(path: Path) -> bool:
    """Whether ``path`` is in the mount table (a dead FUSE mount too, unlike ``ismount``)."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split(" ", 5)[4])
            if point == target:
                return True
    return False


def _cmd_unmount(args: argparse.Namespace) -> int:
    """Detach the mount a crashed daemon left behind (the units' ExecStopPost)."""
    import subprocess

    from cscd.policy.config import load_config

    config = load_config(Path(args.config) if args.config else default_config_path())
    try:
        with ControlClient(socket_candidates(config.path, config.cache), timeout_s=2.0) as client:
            client.call("hello")
    except CscdError:
        pass  # not running, or hung: either way the mount is ours to clean up
    else:
        raise ControlError("running", f"cscd is running on {config.mount}; stop it with "
                                      "systemctl --user stop cscd")
    if not _mounted(config.mount):
        return 0
    for cmd in (["fusermount3", "-u", "-z", str(config.mount)], ["umount", "-l", str(config.mount)]):
        try:
            subprocess.run(cmd, capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if not _mounted(config.mount):
            print(f"cscd: unmounted {config.mount}")
            return 0
    raise CscdError(f"{config.mount}: could not unmount it (try: fusermount3 -u -z {config.mount})")


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "cscd-demo"


def _cmd_demo(args: argparse.Namespace) -> int:
    import yaml

    from cscd.daemon import run_daemon
    from cscd.policy.config import load_config
    from cscd.samba import EmbeddedSamba

    state = Path(args.state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    mount = Path(args.mount).resolve() if args.mount else state / "mnt"
    user_dir = "demo"
    with EmbeddedSamba(state / "samba") as samba:
        (samba.share_dir / user_dir / "Documents").mkdir(parents=True, exist_ok=True)
        readme = samba.share_dir / user_dir / "Documents" / "Welcome.txt"
        if not readme.exists():
            readme.write_text("This file lives on the embedded Samba server and is served by cscd.\n")
        creds = state / "credentials"
        samba.write_credentials_file(creds)
        # The demo's configuration is a real file, so 'cscd status --config STATE/demo.yaml'
        # (and, for the default state directory, plain 'cscd status') finds this daemon.
        # A throwaway demo: an empty policy directory and a home of its own, so no machine
        # policy and no folder redirection touch the user's real folders.
        for d in ("policy", "home"):
            (state / d).mkdir(exist_ok=True, mode=0o700)
        config_path = state / "demo.yaml"
        config_path.write_text(yaml.safe_dump({
            "mount": str(mount), "cache": str(state / "cache"), "credentials": str(creds),
            "port": samba.port, "folders": {"Documents": samba.unc(f"{user_dir}\\Documents")},
            "policy_dir": str(state / "policy"), "home": str(state / "home"),
        }, sort_keys=False), encoding="utf-8")
        config = load_config(config_path)

        def ready() -> None:
            print(f"cscd: Documents from {samba.unc(user_dir + chr(92) + 'Documents')} (port {samba.port}) "
                  f"is mounted at {mount}/Documents", flush=True)
            print(f"cscd: server side: {samba.share_dir / user_dir / 'Documents'}; cache: {state / 'cache'}",
                  flush=True)
            how = "" if state == _default_state_dir() else f" --config {config_path}"
            print(f"cscd: look at it with: cscd status{how}", flush=True)
            print(f"cscd: stop with Ctrl-C (or: fusermount3 -u {mount})", flush=True)

        trio.run(lambda: run_daemon(config, on_ready=ready))
    return 0


# ---------------------------------------------------------------- talking to the daemon


def _client(args: argparse.Namespace, timeout_s: float | None = None) -> ControlClient:
    """A client for the daemon of ``--socket``, or of ``--config`` (default config path)."""
    timeout = timeout_s if timeout_s is not None else args.timeout or 10.0
    sock = args.socket
    if sock:
        return ControlClient(Path(sock), timeout_s=timeout)
    if args.user:
        return ControlClient(_sockets_of_user(args), timeout_s=timeout)
    config_path = Path(getattr(args, "config", None) or default_config_path())
    cache_dir = None
    try:
        from cscd.policy.config import load_config

        cache_dir = load_config(config_path).cache
    except ConfigError as exc:
        problem = exc
    else:
        problem = None
    candidates = socket_candidates(config_path, cache_dir)
    if not getattr(args, "config", None):
        # No --config: the daemon of the default configuration, else a running 'cscd demo'
        # (of the default state directory), which listens where its demo.yaml says.
        demo = _default_state_dir() / "demo.yaml"
        candidates += [c for c in socket_candidates(demo, demo.parent / "cache") if c not in candidates]
    if not candidates:
        raise ConfigError(f"cannot find the daemon's control socket: {problem}; and $XDG_RUNTIME_DIR is "
                          "not set; pass --config FILE or --socket PATH")
    return ControlClient(candidates, timeout_s=timeout)


def _sockets_of_user(args: argparse.Namespace) -> list[Path]:
    """``--user NAME`` (root, or pam_exec with ``--user $PAM_USER``): where that user's daemon
    listens: ``/run/user/UID/cscd/``, or the cache directory a system unit's daemon uses."""
    name = os.path.expandvars(args.user)
    if not name or "$" in name:
        raise ConfigError(f"--user {args.user}: no user name (is $PAM_USER set? pam_exec sets it)")
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"--user {name}: no such user") from None
    if os.getuid() not in (0, pw.pw_uid):
        raise ConfigError(f"--user {name}: only root (or {name}) may talk to {name}'s daemon")
    home = Path(pw.pw_dir)
    config_path = Path(getattr(args, "config", None) or home / ".config" / "cscd" / "cscd.yaml")
    found = socket_candidates(config_path, home / ".local" / "state" / "cscd", uid=pw.pw_uid)
    if not found:
        raise ConfigError(f"--user {name}: {name} has no /run/user/{pw.pw_uid} (not logged on?) "
                          f"and no daemon state in {home}")
    return found


def _call(args: argparse.Namespace, cmd: str, cmd_args: dict[str, Any] | None = None,
          timeout_s: float | None = None) -> Any:
    with _client(args, timeout_s) as client:
        return client.call(cmd, cmd_args or {})


def _emit_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True), flush=True)


def _abs(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    ago = max(0, time.time() - epoch)
    stamp = dt.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")
    if ago < 120:
        return f"{stamp} ({ago:.0f} s ago)"
    if ago < 7200:
        return f"{stamp} ({ago / 60:.0f} min ago)"
    return f"{stamp} ({ago / 3600:.1f} h ago)"


def parse_since(text: str, *, now: float | None = None) -> float:
    """``--since``: ``30s``, ``10m``, ``2h``, ``1d`` ago, a plain number of seconds ago, or a
    local date/time (``2024-05-01 12:00``, ``2024-05-01T12:00:00``, ``12:00`` today)."""
    now = time.time() if now is None else now
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*(?:ago)?\s*", text)
    if m:
        return now - float(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]
    for fmt in ("%H:%M", "%H:%M:%S"):
        try:
            t = dt.datetime.strptime(text.strip(), fmt).time()
        except ValueError:
            continue
        return dt.datetime.combine(dt.datetime.fromtimestamp(now).date(), t).timestamp()
    try:
        return dt.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise ConfigError(f"--since {text!r}: write a time like 10m, 2h, 1d, 12:00 or "
                          "2024-05-01 12:00") from None


# ---------------------------------------------------------------- reporting commands


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


#: A followed command gives up after this long without progress (``--timeout`` sets it).
FOLLOW_STALL_S = 120.0


def _follow(args: argparse.Namespace, cmd: str, request: dict[str, Any], verb: str) -> Any:
    """Send a long request and follow its job (``operations/jobs.py``) until it answers:
    progress on stderr (a bar on a terminal, plain lines otherwise, nothing with ``--json``),
    no deadline while the counts move, an error once they stand still ``FOLLOW_STALL_S``
    (the work goes on in the daemon)."""
    token = f"{os.getpid()}-{time.monotonic_ns()}"
    box: dict[str, Any] = {}

    def call() -> None:
        try:
            box["result"] = _call(args, cmd, dict(request, job=token), timeout_s=30 * 86400.0)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            box["error"] = exc

    worker = threading.Thread(target=call, name=f"cscd-{cmd}", daemon=True)
    worker.start()
    stall_s = args.timeout or FOLLOW_STALL_S
    view = None if args.json else progress.ProgressView(verb, sys.stderr, terminal=sys.stderr.isatty())
    last_key, moved = None, time.monotonic()
    try:
        with _client(args, 10.0) as client:
            while worker.is_alive():
                worker.join(0.25)
                if not worker.is_alive():
                    break
                try:
                    listed = client.call("jobs", {})["jobs"]
                except ControlError:
                    listed = []  # an older daemon: no progress to show, and no stall to see
                    moved = time.monotonic()
                job = next((j for j in listed if j["token"] == token), None)
                if job is not None:
                    key = (job["files_done"], job["bytes_done"], job["files_total"], job["bytes_total"], job["phase"])
                    if key != last_key:
                        last_key, moved = key, time.monotonic()
                    if view is not None:
                        view.show(job)
                if time.monotonic() - moved > stall_s:
                    raise CscdError(f"{verb}: no progress for {stall_s:.0f} s; it goes on in the daemon "
                                    "('cscd status' shows it; --timeout S waits longer)")
    finally:
        if view is not None:
            view.close()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


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


def _user_label(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


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


def _simple(cmd: str, build) -> Any:
    """A command that sends ``build(args)`` and prints the answer's message (or JSON)."""
    def run(args: argparse.Namespace) -> int:
        result = _call(args, cmd, build(args))
        if args.json:
            _emit_json(result)
        elif isinstance(result, dict) and "message" in result:
            print(result["message"])
        elif isinstance(result, list):
            for item in result:
                print(item if not isinstance(item, dict) else
                      "  ".join(f"{k}={v}" for k, v in item.items()))
        else:
            print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    return run


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


def _print_doc(kind: str, shell: str | None) -> int:
    from cscd import manual

    parser = build_parser()
    sys.stdout.write(manual.manpage(parser, __version__) if kind == "manpage" else manual.completion(parser, shell))
    return 0


def _policy_dir(args: argparse.Namespace) -> Path | None:
    """The ``policy_dir`` of the configuration (``--config`` or the default), if it reads."""
    from cscd.policy.config import load_config

    try:
        return load_config(Path(getattr(args, "config", None) or default_config_path())).policy_dir
    except ConfigError:
        return None


def _cmd_doctor(args: argparse.Namespace) -> int:
    """One line per check (``cscd.doctor``); exit 1 if any failed."""
    from cscd import doctor

    config_path = Path(getattr(args, "config", None) or default_config_path())
    checks = trio.run(doctor.run_checks, config_path)
    if args.json:
        _emit_json([{"status": c.status, "check": c.what, "detail": c.detail} for c in checks])
    else:
        for c in checks:
            print(c.line())
    return 1 if any(c.status == doctor.FAIL for c in checks) else 0


def _cmd_ls(args: argparse.Namespace) -> int:
    """Reads the mount itself (``user.cscd.state`` of each entry): no daemon call, so it works
    for any user who can read the folder, as ``ls`` does."""
    rows = []
    with os.scandir(args.path) as it:
        for e in sorted(it, key=lambda e: e.name):
            try:
                state = os.getxattr(e.path, "user.cscd.state", follow_symlinks=False).decode()
            except OSError:
                state = "-"  # not in a cscd mount, or a link
            st = e.stat(follow_symlinks=False)
            rows.append({"name": e.name, "state": state, "is_dir": e.is_dir(follow_symlinks=False),
                         "size": st.st_size})
    for r in rows:
        if args.json:
            print(json.dumps(r, sort_keys=True))
        else:
            size = "" if r["is_dir"] else progress.size(r["size"])
            print(f"{r['state']:<11} {size:>10}  {r['name']}{'/' if r['is_dir'] else ''}")
    return 0


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


# ---------------------------------------------------------------- the parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cscd", description="Offline Files for Linux: redirected folders over SMB",
                                epilog="Exit codes: 0 ok, 1 bug, 2 bad input, 3 server unreachable at first "
                                       "start, 4 daemon not running, 5 request refused, "
                                       "6 daemon too old for this command, "
                                       "7 sync left changes pending.")
    p.add_argument("--version", action="version", version=f"cscd {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v: debug, -vv: libraries too)")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("daemon", help="mount the redirected folders and serve them (foreground)")
    d.add_argument("--config", help=f"YAML configuration file (default: {default_config_path()})")
    d.set_defaults(fn=_cmd_daemon)
    u = sub.add_parser("unmount", help="after a crash: detach the mount the daemon left behind")
    u.add_argument("--config", help=f"YAML configuration file (default: {default_config_path()})")
    u.set_defaults(fn=_cmd_unmount)
    m = sub.add_parser("demo", help="start a throwaway Samba on loopback and mount Documents from it")
    m.add_argument("--state-dir", default=str(_default_state_dir()), help="where the demo keeps its files")
    m.add_argument("--mount", help="mountpoint (default: STATE_DIR/mnt)")
    m.set_defaults(fn=_cmd_demo)

    # Options every client command takes, before or after its own arguments. SUPPRESS keeps
    # a nested parser's default from overwriting a value given earlier on the line.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help=f"the daemon's configuration file (default: {default_config_path()})")
    common.add_argument("--socket", default=argparse.SUPPRESS, help="the daemon's control socket")
    common.add_argument("--user", default=argparse.SUPPRESS, metavar="NAME",
                        help="the daemon of user NAME (as root; from pam_exec: --user '$PAM_USER')")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help="seconds to wait for an answer")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts")

    def client(name: str, fn, help: str, **kw: Any) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, parents=[common], **kw)
        c.set_defaults(fn=fn)
        return c

    client("status", _cmd_status, "per folder: mode and why, link, pending changes, last sync; the cache")
    s = client("sync", _cmd_sync, "sync now (the folder of PATH, or all)")
    s.add_argument("path", nargs="?", metavar="PATH")
    s.add_argument("--wait", action="store_true", help="wait until done (progress on a terminal)")
    e = client("events", _cmd_events, "the daemon's recent events (IDs as in cscd/events.py)")
    e.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    e.add_argument("--since", metavar="WHEN", help="10m, 2h, 1d, 12:00 or 2024-05-01 12:00")
    e.add_argument("--limit", type=int, help="at most this many (the newest)")
    st = client("stats", _cmd_stats, "performance counters and rates")
    st.add_argument("--prometheus", action="store_true", help="node_exporter textfile format")
    st.add_argument("--textfile", metavar="PATH", help="write the Prometheus text to PATH atomically")
    st.add_argument("--all-users", metavar="DIR", help="as root: DIR/cscd-USER.prom for every running daemon")
    client("reload", _simple("reload", lambda a: {}), "re-read policy (as SIGHUP)")
    for name, doc in (("offline", "work offline: no traffic until 'cscd online'"),
                      ("online", "end working offline")):
        o = client(name, _simple(name, lambda a: {"folder": a.folder}), doc)
        o.add_argument("folder", nargs="?", metavar="FOLDER", help="one folder (default: all)")
    pin = client("pin", _cmd_pin, "always available offline: fetch and keep PATH (progress on a terminal)")
    pin.add_argument("path", metavar="PATH")
    o = client("unpin", _simple("unpin", lambda a: {"path": _abs(a.path)}), "let PATH be evicted again")
    o.add_argument("path", metavar="PATH")
    o = client("free-space", _cmd_free_space, "drop the cached content of PATH (clean files only)")
    o.add_argument("path", metavar="PATH")
    m = sub.add_parser("manpage", help="print the cscd(1) man page (troff)")
    m.set_defaults(fn=lambda a: _print_doc("manpage", None))
    c = sub.add_parser("completion", help="print the shell completion script for SHELL")
    c.add_argument("shell", choices=("bash", "zsh", "tcsh"))
    c.set_defaults(fn=lambda a: _print_doc("completion", a.shell))
    client("doctor", _cmd_doctor, "check FUSE, configuration, credentials, servers, clock and cache")
    ls = client("ls", _cmd_ls, "list PATH (a folder in the mount) with each entry's offline state")
    ls.add_argument("path", nargs="?", default=".", metavar="PATH")
    i = client("info", _cmd_info, "offline state of each PATH: cached, partial, dirty, pinned, ...")
    i.add_argument("paths", nargs="+", metavar="PATH")
    c = client("conflicts", _cmd_conflicts, "list conflicts, or resolve one")
    c.set_defaults(action=None)
    csub = c.add_subparsers(dest="action")
    r = csub.add_parser("resolve", help="resolve the conflict of PATH", parents=[common])
    r.add_argument("path", metavar="PATH")
    r.add_argument("--keep", required=True, choices=("local", "remote", "both"))
    pol = client("policy", _cmd_policy, "policy")
    psub = pol.add_subparsers(dest="action", required=True)
    show = psub.add_parser("show", help="the effective policy and where each key comes from", parents=[common])
    show.add_argument("--for", dest="for_user", metavar="USER",
                      help="compute it for USER from the files (with --host, --user does too)")
    show.add_argument("--host", help="compute it as on HOST (from the files)")
    show.add_argument("--groups", metavar="G1,G2", help="with these groups instead of the user's")
    show.add_argument("--dir", metavar="DIR", help="policy directory to read (default: the configuration's)")
    check = psub.add_parser("check", help="are the policy files valid (file, line and key of a mistake)",
                            parents=[common])
    check.add_argument("dir", nargs="?", metavar="DIR", help="policy directory (default /etc/cscd)")
    prof = client("profile", _cmd_profile, "roaming profile")
    prsub = prof.add_subparsers(dest="action", required=True)
    for action in ("logon", "logoff"):
        prsub.add_parser(action, help=f"run the profile's {action} step now", parents=[common])
    wl = prsub.add_parser("wait-logon", parents=[common],
                          help="at session start: wait (up to --limit s) for the daemon's logon pull")
    wl.add_argument("--limit", type=float, default=120.0, metavar="S",
                    help="seconds to wait; then the session starts on the cached profile (default 120)")
    return p


_EXIT_BY_CODE = {"not_running": EXIT_NOT_RUNNING, "not_implemented": EXIT_NOT_IMPLEMENTED,
                 "invalid_argument": 2, "bad_request": 2}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name, default in (("json", False), ("timeout", None), ("socket", None), ("user", None)):
        if name not in args:
            setattr(args, name, default)
    _setup_logging(args.verbose)
    try:
        return args.fn(args)
    except BaseException as exc:  # noqa: BLE001 - unwrapped and re-raised below
        inner = _unwrap(exc)
        if isinstance(inner, ControlError):
            if args.json:
                _emit_json({"error": {"code": inner.code, "message": inner.message}})
            prefix = "" if inner.message.startswith("cscd ") else "cscd: "
            print(prefix + inner.message, file=sys.stderr)
            return _EXIT_BY_CODE.get(inner.code, EXIT_REFUSED)
        if isinstance(inner, ConfigError):
            print(f"cscd: {inner}", file=sys.stderr)
            return inner.exit_code
        if isinstance(inner, CacheLost):
            print(f"cscd: {inner}", file=sys.stderr)
            return 1  # not 2: systemd restarts it (the disk may be back)
        if isinstance(inner, CscdError):
            print(f"cscd: {inner}", file=sys.stderr)
            return 2
        if isinstance(inner, KeyboardInterrupt):
            return 130
        if isinstance(inner, BrokenPipeError):  # `cscd events --follow | head`
            return 0
        if isinstance(inner, OSError) and args.fn is _cmd_stats:
            print(f"cscd: {inner.filename or ''}: {inner.strerror or inner}", file=sys.stderr)
            return 2
        raise


def _unwrap(exc: BaseException) -> BaseException:
    """The single error inside nested exception groups (trio wraps nursery errors)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc

"""What every ``cscd`` command shares: finding and asking the daemon, following a long job,
JSON and time formats, exit codes.
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

from cscd import progress
from cscd.control import ControlClient, ControlError, default_config_path, socket_candidates
from cscd.errors import ConfigError, CscdError
from cscd.events import JournalHandler, journal_stream_is_stderr

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


def _user_label(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "cscd-demo"


def _policy_dir(args: argparse.Namespace) -> Path | None:
    """The ``policy_dir`` of the configuration (``--config`` or the default), if it reads."""
    from cscd.policy.config import load_config

    try:
        return load_config(Path(getattr(args, "config", None) or default_config_path())).policy_dir
    except ConfigError:
        return None

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
import logging
import sys
from typing import Any

from cscd import __version__
from cscd.cli.common import (
    EXIT_NOT_IMPLEMENTED,
    EXIT_NOT_RUNNING,
    EXIT_REFUSED,
    _abs,
    _default_state_dir,
    _emit_json,
    _setup_logging,
    _simple,
    parse_since,
)
from cscd.cli.local import (
    _cmd_daemon,
    _cmd_demo,
    _cmd_doctor,
    _cmd_ls,
    _cmd_unmount,
    _print_doc,
)
from cscd.cli.remote import (
    _cmd_conflicts,
    _cmd_events,
    _cmd_free_space,
    _cmd_info,
    _cmd_pin,
    _cmd_policy,
    _cmd_profile,
    _cmd_stats,
    _cmd_status,
    _cmd_sync,
)
from cscd.control import ControlError, default_config_path
from cscd.errors import CacheLost, ConfigError, CscdError

log = logging.getLogger("cscd")

__all__ = ["build_parser", "main", "parse_since"]


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

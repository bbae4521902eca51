"""The ``cscd`` command: argument parsing, one-line errors, exit codes.

``cscd daemon --config FILE`` runs the daemon in the foreground (for systemd).
``cscd demo`` starts a throwaway Samba on 127.0.0.1 and mounts a redirected ``Documents``
folder from it, for trying cscd (and the README's first command).

Exit codes: 0 success, 1 internal error, 2 bad configuration or input, 3 server unreachable
on a first start with nothing cached.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import trio

from cscd import __version__
from cscd.errors import ConfigError, CscdError

log = logging.getLogger("cscd")


def _setup_logging(verbose: int) -> None:
    """INFO by default; ``-v``: cscd's own DEBUG; ``-vv``: everything, libraries included."""
    logging.basicConfig(level=logging.DEBUG if verbose >= 2 else logging.INFO, stream=sys.stderr,
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

    config = load_config(Path(args.config))
    trio.run(run_daemon, config)
    return 0


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "cscd-demo"


def _cmd_demo(args: argparse.Namespace) -> int:
    from cscd.daemon import run_daemon
    from cscd.policy.config import DaemonConfig, FolderConfig
    from cscd.policy.unc import parse_unc
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
        config = DaemonConfig(
            path=state / "demo.yaml", mount=mount, cache=state / "cache", credentials=creds, port=samba.port,
            folders=(FolderConfig("Documents", parse_unc(samba.unc(f"{user_dir}\\Documents"))),),
        )

        def ready() -> None:
            print(f"cscd: Documents from {samba.unc(user_dir + chr(92) + 'Documents')} (port {samba.port}) "
                  f"is mounted at {mount}/Documents", flush=True)
            print(f"cscd: server side: {samba.share_dir / user_dir / 'Documents'}; cache: {state / 'cache'}",
                  flush=True)
            print(f"cscd: stop with Ctrl-C (or: fusermount3 -u {mount})", flush=True)

        trio.run(lambda: run_daemon(config, on_ready=ready))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cscd", description="Offline Files for Linux: redirected folders over SMB")
    p.add_argument("--version", action="version", version=f"cscd {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v: debug, -vv: libraries too)")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("daemon", help="mount the redirected folders and serve them (foreground)")
    d.add_argument("--config", required=True, help="YAML configuration file")
    d.set_defaults(fn=_cmd_daemon)
    m = sub.add_parser("demo", help="start a throwaway Samba on loopback and mount Documents from it")
    m.add_argument("--state-dir", default=str(_default_state_dir()), help="where the demo keeps its files")
    m.add_argument("--mount", help="mountpoint (default: STATE_DIR/mnt)")
    m.set_defaults(fn=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.fn(args)
    except BaseException as exc:  # noqa: BLE001 - unwrapped and re-raised below
        inner = _unwrap(exc)
        if isinstance(inner, ConfigError):
            print(f"cscd: {inner}", file=sys.stderr)
            return inner.exit_code
        if isinstance(inner, CscdError):
            print(f"cscd: {inner}", file=sys.stderr)
            return 2
        if isinstance(inner, KeyboardInterrupt):
            return 130
        raise


def _unwrap(exc: BaseException) -> BaseException:
    """The single error inside nested exception groups (trio wraps nursery errors)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc

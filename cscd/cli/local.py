"""The commands that need no running daemon: ``daemon``, ``unmount``, ``demo``, ``doctor``,
``ls``, ``manpage``, ``completion``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path

import trio

from cscd import __version__, progress
from cscd.cli.common import (
    _default_state_dir,
    _emit_json,
)
from cscd.control import ControlClient, ControlError, default_config_path, socket_candidates
from cscd.errors import CscdError

log = logging.getLogger("cscd")


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


def _print_doc(kind: str, shell: str | None) -> int:
    from cscd import manual
    from cscd.cli import build_parser  # the package's: it imports this module

    parser = build_parser()
    sys.stdout.write(manual.manpage(parser, __version__) if kind == "manpage" else manual.completion(parser, shell))
    return 0


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
    try:
        it = os.scandir(args.path)
    except OSError as exc:
        raise CscdError(f"{args.path}: {exc.strerror or exc}") from None
    with it:
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

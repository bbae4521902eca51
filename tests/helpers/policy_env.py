"""``PolicyEnv``: a ``MountEnv`` whose daemon has a policy directory and a home of its own.

Owns what the policy, central-policy, roaming-profile and target-move tests share: the
environment (made through conftest's ``mount_env`` factory, so the daemon is stopped, its
cache checked and its log judged by that fixture), a set of files (``FILES``), ``fill`` and
``tree`` to write and hash a folder, and ``redirect_documents``, the first phase of every
redirection test. The ``penv`` fixture in ``tests/conftest.py`` builds one per test. No
fixtures here, and no daemon is started until a test calls ``PolicyEnv.start``.
"""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
from collections.abc import Callable
from pathlib import Path

from cscd.redirect import RECORD, USER_DIRS, parse_user_dirs
from tests.helpers.mount_env import MountEnv
from tests.helpers.ops import wait_control
from tests.helpers.wait import wait_for

__all__ = ["FILES", "PolicyEnv", "documents_policy", "fill", "redirect_documents", "tree"]

FILES = {
    "report.txt": b"quarterly numbers\n",
    "empty.txt": b"",
    "deep/nested/notes.md": b"# notes\n" * 100,
    "big.bin": os.urandom(3 * 1024 * 1024 + 17),
    "with space and ünïcode.txt": "grüße".encode(),
}
"""What a redirected Documents holds in these tests: empty, nested, 3 MiB and non-ASCII names."""


class PolicyEnv:
    """A ``MountEnv`` (from ``make``, the ``mount_env`` factory) with ``policy_dir`` and ``home``
    under ``tmp_path``; the daemon is not started. With ``yaml_folders=False`` the daemon's YAML
    names no folder, so everything it mounts comes from the policy."""

    def __init__(self, make: Callable[..., MountEnv], tmp_path: Path, *,
                 yaml_folders: bool = True) -> None:
        self.policy_dir = tmp_path / "policy"
        self.policy_dir.mkdir()
        self.home = tmp_path / "home"
        self.home.mkdir()
        self.env = make(start=False, subdir="env",
                        extra={"policy_dir": str(self.policy_dir), "home": str(self.home)})
        if not yaml_folders:
            self.env.daemon.folders = {}
        self.smbd = self.env.smbd
        self.daemon = self.env.daemon
        self.mount = self.env.mount

    def unc(self, sub: str = "Documents") -> str:
        return self.smbd.unc(f"{self.env.user_dir}\\{sub}")

    def server_dir(self, sub: str = "Documents") -> Path:
        return self.smbd.share_dir / self.env.user_dir / sub

    def write_policy(self, text: str, name: str = "policy.yaml") -> Path:
        path = self.policy_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    def start(self) -> None:
        """Start the daemon and wait until its control socket answers."""
        self.env.start_daemon()
        wait_control(self.daemon)

    def cli(self, *args: str, code: int = 0) -> dict:
        """``cscd ARGS --json`` against this daemon; asserts the exit code and no traceback."""
        result = self.daemon.run_cli(*args, "--json")
        assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        return json.loads(result.stdout)

    def status(self) -> dict:
        return self.cli("status")

    def wait_redirection(self, timeout_s: float = 30) -> dict:
        wait_for(lambda: self.status()["redirection"]["state"] in ("done", "none"), timeout_s,
                 "folder redirection did not finish")
        return self.status()["redirection"]

    def user_dirs(self) -> dict[str, Path]:
        return parse_user_dirs((self.home / USER_DIRS).read_text(), self.home)

    def record(self) -> dict:
        return json.loads((self.home / RECORD).read_text())


def put(root: Path, rel: str, data: bytes, mtime: int | None = None) -> Path:
    """Write ``root/rel`` (making its folders), with the write time ``mtime`` if given."""
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    if mtime is not None:
        os.utime(p, (mtime, mtime))
    return p


def fill(folder: Path, files: dict[str, bytes]) -> dict[str, str]:
    """Write ``files`` (relative path → bytes) under ``folder``; return their sha256 by path."""
    for rel, data in files.items():
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}


def tree(folder: Path) -> dict[str, str]:
    """Every regular file under ``folder`` (symlinks skipped) → its sha256, by relative path.

    A file gone between the walk and its read is left out: on a server directory an upload's
    temporary is renamed over its target at any moment (a poll then simply looks again)."""
    out = {}
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            try:
                out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
            except FileNotFoundError:
                continue
    return out


def documents_policy(env: PolicyEnv, *, removal_action: str = "leave", extra: str = "") -> str:
    """Policy text redirecting Documents to the user's folder on the server."""
    return f"""
        - folders:
            Documents:
              target: '{env.unc()}'
              removal_action: {removal_action}
        {extra}"""


def redirect_documents(env: PolicyEnv, removal_action: str) -> dict[str, str]:
    """Phase one of the removal and move tests: Documents with ``FILES`` is redirected and
    uploaded, then the daemon is stopped. Returns the files' hashes."""
    want = fill(env.home / "Documents", FILES)
    env.write_policy(documents_policy(env, removal_action=removal_action))
    env.start()
    assert env.wait_redirection()["folders"]["Documents"]["done"]
    wait_for(lambda: tree(env.server_dir()) == want, 30, "redirected files not on the server")
    wait_for(lambda: env.status()["folders"]["Documents"]["pending_changes"] == 0, 15, "changes still pending")
    env.daemon.stop()
    return want

"""The cscd daemon as a subprocess, the way tests and benchmarks run it.

Owns ``DaemonProcess`` (write the YAML config, start ``python -m cscd daemon --config …``,
wait for the mount, stop it and check it left cleanly, or kill it like a crash), the
``run_cscd`` one-shot CLI runner and ``write_credentials``. Why a subprocess: a process that
serves a FUSE mount and also uses it can deadlock in the kernel, and the real entry point gets
tested too (STYLE.md §5).

Every path out of a ``with DaemonProcess(...)`` block leaves no mount behind: on any failure
the mount is lazily unmounted (``fusermount3 -u -z``) and the daemon's process group killed.
The daemon's stdout and stderr go to a log file beside its config; failures quote its tail.
Nothing here touches the cache or the server; no fixtures here (they live in conftest.py).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

__all__ = ["DaemonProcess", "REPO_ROOT", "is_mount", "run_cscd", "unmount_lazy", "write_credentials"]

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The checkout under test: put first on the daemon's PYTHONPATH, so the source is what runs."""

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
LOG_TAIL_LINES = 60

_WARNING_RE = re.compile(r" (WARNING|ERROR|CRITICAL) |Traceback")
_OCTAL_ESCAPE_RE = re.compile(r"\\([0-7]{3})")  # mountinfo writes space as \040


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra or {})
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cscd(
    *args: str, timeout_s: float = 30, cwd: Path | None = None, env_extra: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m cscd ARGS`` once and return its result (text, stdout and stderr captured).

    Uses this interpreter and the checkout under test. Raises ``subprocess.TimeoutExpired``
    after ``timeout_s``; a non-zero exit is returned, not raised.
    """
    return subprocess.run(
        [sys.executable, "-m", "cscd", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=_env(env_extra),
        cwd=cwd,
        check=False,
    )


def write_credentials(path: Path, username: str, password: str, domain: str | None = None) -> Path:
    """Write a mount.cifs-style credentials file with mode 0600 and return its path."""
    lines = [f"username={username}", f"password={password}"]
    if domain:
        lines.append(f"domain={domain}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to an existing file
    return path


def unmount_lazy(mount: Path) -> None:
    """Detach whatever is mounted at ``mount`` (``fusermount3 -u -z``, else ``fusermount -u -z``
    for an old libfuse's mount such as rclone's, else ``umount -l``).

    Never raises: cleanup must not hide the failure that called it.
    """
    for cmd in (["fusermount3", "-u", "-z", str(mount)], ["fusermount", "-u", "-z", str(mount)],
                ["umount", "-l", str(mount)]):
        if shutil.which(cmd[0]) is None:
            continue
        try:
            subprocess.run(cmd, capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if not is_mount(mount):
            return


def is_mount(path: Path) -> bool:
    """True while anything, even a dead FUSE connection, is mounted at ``path``."""
    # os.path.ismount() is False for a dead FUSE mount ("transport endpoint is not connected"),
    # which still needs unmounting, so read the mount table instead.
    target = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                mount_point = _OCTAL_ESCAPE_RE.sub(
                    lambda m: chr(int(m[1], 8)), line.split(" ", 5)[4]
                )
                if mount_point == target:
                    return True
    except OSError:
        return os.path.ismount(path)
    return False


class DaemonProcess:
    """One cscd daemon in a subprocess, configured by a YAML file this object writes.

    ``workdir`` holds ``NAME.yaml`` and ``NAME.log`` (``name`` tells two daemons apart, e.g.
    a second workstation); ``mount`` and ``cache`` default to ``workdir/NAME-mnt`` and
    ``workdir/NAME-cache``. ``folders`` maps folder names to UNC paths (or local
    directories). ``extra`` adds top-level config keys, e.g. ``{"timings": {...}}``; ``env``
    adds environment variables for the daemon process.
    The config is written when the object is made and again by each ``start()``, so
    ``extra`` and ``folders`` may be changed between runs.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        folders: Mapping[str, str],
        credentials: Path,
        port: int = 445,
        mount: Path | None = None,
        cache: Path | None = None,
        extra: Mapping[str, Any] | None = None,
        name: str = "cscd",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.name = name
        self.mount = Path(mount) if mount is not None else self.workdir / f"{name}-mnt"
        self.cache = Path(cache) if cache is not None else self.workdir / f"{name}-cache"
        self.credentials = Path(credentials)
        self.port = port
        self.folders: dict[str, str] = dict(folders)
        self.extra: dict[str, Any] = dict(extra or {})
        #: extra environment for the daemon (``NOTIFY_SOCKET``, ``WATCHDOG_USEC``, …); may be
        #: changed between runs
        self.env: dict[str, str] = dict(env or {})
        self.config_path = self.workdir / f"{name}.yaml"
        self.log_path = self.workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.write_config()

    # ------------------------------------------------------------------ config

    def config(self) -> dict[str, Any]:
        """The configuration as a dict, in the README's documented form."""
        config: dict[str, Any] = {
            "mount": str(self.mount),
            "cache": str(self.cache),
            "credentials": str(self.credentials),
            "port": self.port,
            "folders": dict(self.folders),
            # Never the machine's /etc/cscd nor the real $HOME: a policy there could redirect
            # (or bring back) the tester's own folders. Tests that want policy set these.
            "policy_dir": str(self.workdir / f"{self.name}-policy"),
            "home": str(self.workdir / f"{self.name}-home"),
            # Never the tester's own desktop: tests that want notifications name their bus.
            "notify_dbus": "none",
        }
        config.update(self.extra)
        return config

    def write_config(self) -> Path:
        """Write the YAML config file and create the mountpoint directory; return the path."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.mount.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            yaml.safe_dump(self.config(), sort_keys=False), encoding="utf-8"
        )
        return self.config_path

    # ------------------------------------------------------------------ lifecycle

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def is_mounted(self) -> bool:
        """True while anything (even a dead FUSE connection) is mounted at the mountpoint."""
        return is_mount(self.mount)

    def start(self, wait: bool = True) -> None:
        """Start the daemon; with ``wait``, return once the mount is up.

        Raises ``AssertionError`` with the exit code and the log tail if the daemon exits
        before mounting, or (after killing it) if no mount appears within 20 s.
        """
        if self.is_running():
            raise AssertionError(f"daemon {self.name} is already running (pid {self.pid})")
        self.write_config()
        with open(self.log_path, "ab") as log:
            stamp = time.strftime("%H:%M:%S")
            log.write(f"---- start {stamp}: cscd daemon --config {self.config_path}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cscd", *(["-v"] if os.environ.get("CSCD_TEST_DEBUG") else []),
                 "daemon", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=_env(self.env),
                start_new_session=True,
            )
        if wait:
            self.wait_mounted()

    def wait_mounted(self, timeout_s: float = START_TIMEOUT_S, *, poll_s: float = 0.02) -> None:
        """Poll every ``poll_s`` until the mountpoint is a mount while the process stays alive
        (the benchmark polls finer, to time a start). Failures as in ``start``."""
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + timeout_s
        while True:
            code = self.proc.poll()
            if code is not None:
                self._cleanup_after_failure()
                raise AssertionError(
                    f"daemon {self.name} exited with code {code} before {self.mount} was mounted\n"
                    + self._tail_for_message()
                )
            if os.path.ismount(self.mount):
                return
            if time.monotonic() > deadline:
                self._cleanup_after_failure()
                raise AssertionError(
                    f"daemon {self.name} did not mount {self.mount} within {timeout_s:g} s\n"
                    + self._tail_for_message()
                )
            time.sleep(poll_s)

    def stop(self) -> None:
        """SIGTERM, then check a clean exit: code 0 within 15 s and the mount gone.

        On failure: lazy-unmount, kill the process group, and raise ``AssertionError`` with
        the log tail. Stopping a daemon that is not running only cleans up the mount.
        """
        if self.proc is None:
            return
        proc = self.proc
        problem = None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                problem = f"daemon {self.name} did not exit within {STOP_TIMEOUT_S:g} s of SIGTERM"
        code = proc.poll()
        if problem is None and code != 0:
            problem = f"daemon {self.name} exited with code {code} (expected 0)"
        if problem is None and self.is_mounted():
            problem = f"daemon {self.name} exited but {self.mount} is still mounted"
        if problem is not None:
            self._cleanup_after_failure()
            raise AssertionError(problem + "\n" + self._tail_for_message())

    def kill(self) -> None:
        """Crash the daemon: SIGKILL its process group, then lazily unmount the dead mount."""
        if self.proc is not None:
            self._kill_group()
        unmount_lazy(self.mount)

    def close(self) -> None:
        """Leave nothing behind, whatever state the daemon is in; never raises."""
        if self.proc is not None and self.proc.poll() is None:
            self._kill_group()
        if self.is_mounted():
            unmount_lazy(self.mount)

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _kill_group(self) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the session's group: workers too
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass  # stuck in the kernel (state D); the lazy unmount below frees it

    def _cleanup_after_failure(self) -> None:
        unmount_lazy(self.mount)
        if self.proc is not None and self.proc.poll() is None:
            self._kill_group()
        unmount_lazy(self.mount)

    # ------------------------------------------------------------------ logs and CLI

    def log_text(self) -> str:
        """Everything the daemon has written so far (all runs of this object)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def warnings(self) -> list[str]:
        """Log lines at WARNING or worse, and traceback headers."""
        return [line for line in self.log_text().splitlines() if _WARNING_RE.search(line)]

    def run_cli(self, *args: str, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``python -m cscd ARGS --config CONFIG`` with this config; see ``run_cscd``."""
        return run_cscd(
            *args, "--config", str(self.config_path), timeout_s=timeout_s, cwd=self.workdir
        )

    def _tail_for_message(self) -> str:
        return f"---- last lines of {self.log_path}:\n{self.log_tail()}"

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<DaemonProcess {self.name} {state} pid={self.pid} mount={self.mount}>"

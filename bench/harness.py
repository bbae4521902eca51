r"""Set-up and tear-down of everything a run needs: Samba, proxies, the cscd and rclone mounts.

Owns the processes the benchmark starts and nothing else: one ``EmbeddedSamba`` in the run's
work directory, one ``TcpProxy`` per client (cscd, rclone, the plain smbprotocol reference)
so each one's wire bytes are counted exactly, the cscd daemon as a subprocess
(``python -m cscd daemon --config FILE``, through the tests' ``DaemonProcess``) and
``rclone mount --vfs-cache-mode full``. The test helpers (``tests.helpers.daemon``,
``tests.helpers.proxy``) are plain package imports: ``python -m bench`` runs from the project
root, which is then on ``sys.path``.
``Env.close()`` always unmounts (``fusermount3 -u -z`` as the last resort) and stops every
server it started, by PID; it never touches a process it did not start.

Server layout (one share)::

    share/bench/Documents   the cscd folder  (\\127.0.0.1\share\bench\Documents)
    share/bench/rclone      what rclone mounts (remote:share/bench/rclone)

Test data is put on the server's disk *before* the mounts start, so nothing has been listed or
cached by either client when a case begins (rclone caches directory listings for 5 minutes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cscd.control import ControlClient, socket_candidates
from cscd.samba import EmbeddedSamba
from tests.helpers.daemon import REPO_ROOT, DaemonProcess, is_mount, unmount_lazy
from tests.helpers.proxy import TcpProxy

__all__ = ["CSCD_FOLDER", "REPO_ROOT", "CscdMount", "Env", "RcloneMount", "Side"]

log = logging.getLogger(__name__)

MOUNT_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
CSCD_FOLDER = "Documents"
_PROBLEM_RE = re.compile(r" (WARNING|ERROR|CRITICAL) |Traceback|Exception")
_RCLONE_PROBLEM_RE = re.compile(r"\b(ERROR|CRITICAL)\b")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def _wait_mounted(proc: subprocess.Popen[bytes], path: Path, what: str, log_path: Path,
                  timeout_s: float = MOUNT_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        code = proc.poll()
        if code is not None:
            raise RuntimeError(f"{what} exited with code {code} before mounting: {_last_line(log_path)}")
        if os.path.ismount(path):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not mount {path} within {timeout_s:.0f} s: "
                               f"{_last_line(log_path)}")
        time.sleep(0.005)  # fine-grained: the scale case times the start


def _last_line(path: Path) -> str:
    """The last non-empty line of a log, for one-line error messages."""
    try:
        lines = [ln for ln in path.read_text("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return f"no log at {path}"
    return lines[-1].strip() if lines else f"{path.name} is empty"


class CscdMount:
    """The cscd daemon in a subprocess, mounting one folder; the log goes to ``log_path``.

    A ``DaemonProcess`` (``tests/helpers/daemon.py``, what the tests run) in the run's work
    directory, so the daemon gets the same config and start and stop checks as in the tests,
    and a ``policy_dir`` and ``home`` of its own (never the machine's ``/etc/cscd`` or the real
    ``$HOME``). Failures become one-line ``RuntimeError``s or ``exit_problem``, for the report.
    """

    name = "cscd"

    def __init__(self, workdir: Path, samba: EmbeddedSamba, port: int, *, encryption: bool) -> None:
        self.workdir = workdir
        credentials = samba.write_credentials_file(workdir / "cscd-credentials")  # mode 0600
        self.daemon = DaemonProcess(
            workdir, name="cscd", folders={CSCD_FOLDER: samba.unc(f"bench\\{CSCD_FOLDER}")},
            credentials=credentials, port=port,
            extra={} if encryption else {"security": {"require_encryption": False}},
        )
        self.mountpoint = self.daemon.mount
        self.cache = self.daemon.cache
        self.config_path = self.daemon.config_path
        self.log_path = self.daemon.log_path
        self.exit_problem: str | None = None

    @property
    def root(self) -> Path:
        return self.mountpoint / CSCD_FOLDER

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """The daemon process while it runs, else None."""
        return self.daemon.proc if self.daemon.is_running() else None

    def start(self, timeout_s: float = MOUNT_TIMEOUT_S) -> None:
        """Start the daemon and return once it has mounted; RuntimeError (one line) if it did not."""
        try:
            self.daemon.start(wait=False)
            self.daemon.wait_mounted(timeout_s, poll_s=0.005)  # fine-grained: the scale case times the start
        except AssertionError as exc:  # DaemonProcess has already unmounted and killed it
            raise RuntimeError(f"{str(exc).splitlines()[0]}: {_last_line(self.log_path)}") from None
        except BaseException:
            self.daemon.close()
            raise

    def is_alive(self) -> bool:
        return self.daemon.is_running()

    def counters(self) -> dict[str, float]:
        """The daemon's own metrics (``cscd stats`` over its control socket), summed over
        folders, e.g. ``dirs_scanned_total`` and ``pending_changes``; raises if it does not answer."""
        with ControlClient(socket_candidates(self.config_path, self.cache), timeout_s=10.0) as client:
            answer = client.call("stats")
        return {family["name"]: sum(float(s["value"]) for s in family["samples"])
                for family in answer["metrics"]}

    def stop(self) -> None:
        """SIGTERM and expect exit code 0 with the mount gone; else lazy-unmount and kill, and
        say what went wrong in ``exit_problem``."""
        try:
            self.daemon.stop()
        except AssertionError as exc:
            if self.exit_problem is None:
                self.exit_problem = str(exc).splitlines()[0]
        finally:
            self.daemon.close()

    def log_problems(self) -> list[str]:
        """Log lines at WARNING or worse, and traceback lines."""
        return [line for line in self.daemon.log_text().splitlines() if _PROBLEM_RE.search(line)]


class RcloneMount:
    """``rclone mount REMOTE:share/bench/rclone MNT --vfs-cache-mode full`` in a subprocess."""

    name = "rclone"

    def __init__(self, workdir: Path, samba: EmbeddedSamba, port: int, extra_args: list[str]) -> None:
        self.workdir = workdir
        self.mountpoint = workdir / "rclone-mnt"
        self.cache = workdir / "rclone-cache"
        self.config_path = workdir / "rclone.conf"
        self.log_path = workdir / "rclone.log"
        self.remote = f"benchsmb:{samba.share}/bench/rclone"
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_problem: str | None = None
        obscured = subprocess.run(["rclone", "obscure", "-"], input=samba.password.encode(),
                                  capture_output=True, check=True, timeout=30).stdout.decode().strip()
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"[benchsmb]\ntype = smb\nhost = 127.0.0.1\nport = {port}\n"
                    f"user = {samba.username}\npass = {obscured}\n")
        self.mountpoint.mkdir(parents=True, exist_ok=True)

    @property
    def root(self) -> Path:
        return self.mountpoint

    def command(self) -> list[str]:
        return [
            "rclone", "mount", self.remote, str(self.mountpoint),
            "--config", str(self.config_path),
            "--cache-dir", str(self.cache),
            "--vfs-cache-mode", "full",
            "--log-file", str(self.log_path), "--log-level", "INFO",
            *self.extra_args,
        ]

    def start(self, timeout_s: float = MOUNT_TIMEOUT_S) -> None:
        with open(self.log_path, "ab") as logf:  # rclone's own complaints before --log-file takes over
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                         cwd=self.workdir, start_new_session=True)
        try:
            _wait_mounted(self.proc, self.mountpoint, "rclone mount", self.log_path, timeout_s)
        except BaseException:
            self.stop()
            raise

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # rclone unmounts itself on SIGTERM
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.exit_problem = f"did not exit within {STOP_TIMEOUT_S:.0f} s of SIGTERM"
        unmount_lazy(self.mountpoint)
        if proc is not None and proc.poll() is None:
            _kill_group(proc)
        self.proc = None

    def log_problems(self) -> list[str]:
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except OSError:
            return []
        return [line for line in text.splitlines()
                if _RCLONE_PROBLEM_RE.search(line) and "Unmounted rclone mount" not in line]  # the normal exit


@dataclass
class Side:
    """One client under test: where its files appear in its mount and on the server's disk."""

    name: str
    root: Path
    server: Path
    proxy: TcpProxy
    mount: CscdMount | RcloneMount


class Env:
    """The run's work directory and every process the benchmark started; see the module doc."""

    def __init__(self, workdir: Path | None, *, keep: bool, encryption: bool, rclone_args: list[str]) -> None:
        if workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="cscd-bench-"))
        else:
            workdir.mkdir(parents=True, exist_ok=True)
            self.workdir = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
        self.keep = keep
        self.encryption = encryption
        self.rclone_args = rclone_args
        self.local = self.workdir / "local"
        self.local.mkdir()
        self.samba: EmbeddedSamba | None = None
        self.credentials: Path | None = None
        self.proxies: dict[str, TcpProxy] = {}
        self.cscd: CscdMount | None = None
        self.rclone: RcloneMount | None = None
        self.errors: dict[str, str] = {}
        self._sides: dict[str, Side] = {}
        #: (what, function) run by close() once the mounts and smbd are stopped, e.g. removing a
        #: case's million server files (also with --keep: they are generated and re-made each run)
        self.cleanups: list[tuple[str, Callable[[], None]]] = []

    # ------------------------------------------------------------ server side

    def start_server(self) -> None:
        self.samba = EmbeddedSamba(self.workdir / "samba")
        self.samba.start()
        self.credentials = self.samba.write_credentials_file(self.workdir / "credentials")
        for name in ("cscd", "rclone", "ref"):
            self.proxies[name] = TcpProxy((self.samba.host, self.samba.port))
        for d in (self.server_dir("cscd"), self.server_dir("rclone")):
            d.mkdir(parents=True, exist_ok=True)

    def server_dir(self, side: str) -> Path:
        """The directory on the server's disk that ``side`` sees as its root."""
        assert self.samba is not None, "start_server() first"
        sub = CSCD_FOLDER if side == "cscd" else "rclone"
        return self.samba.share_dir / "bench" / sub

    # ------------------------------------------------------------ clients

    def start_mounts(self) -> None:
        """Start cscd and rclone; a client that fails is recorded in ``errors``, the other runs."""
        assert self.samba is not None
        try:
            self.cscd = CscdMount(self.workdir, self.samba, self.proxies["cscd"].port, encryption=self.encryption)
            self.cscd.start()
            self._sides["cscd"] = Side("cscd", self.cscd.root, self.server_dir("cscd"), self.proxies["cscd"],
                                       self.cscd)
        except Exception as exc:  # noqa: BLE001 - reported per case
            self.errors["cscd"] = f"cscd mount failed: {exc}"
        try:
            if shutil.which("rclone") is None:
                raise RuntimeError("rclone is not installed")
            self.rclone = RcloneMount(self.workdir, self.samba, self.proxies["rclone"].port, self.rclone_args)
            self.rclone.start()
            self._sides["rclone"] = Side("rclone", self.rclone.root, self.server_dir("rclone"),
                                         self.proxies["rclone"], self.rclone)
        except Exception as exc:  # noqa: BLE001 - reported per case
            self.errors["rclone"] = f"rclone mount failed: {exc}"

    def side(self, name: str) -> Side:
        """The client ``name``; raises RuntimeError with the set-up error if it is not running."""
        side = self._sides.get(name)
        if side is None:
            raise RuntimeError(self.errors.get(name) or self.errors.get("server") or f"{name} is not running")
        if not side.mount.is_alive():
            raise RuntimeError(f"{name} is no longer running; log: {side.mount.log_path}")
        return side

    def sides(self) -> list[str]:
        return ["cscd", "rclone"]

    def cpu_seconds(self) -> dict[str, float]:
        """User + system CPU seconds used so far by each running client process (all threads)."""
        out = {}
        tick = os.sysconf("SC_CLK_TCK")
        for name, mount in (("cscd", self.cscd), ("rclone", self.rclone)):
            proc = mount.proc if mount is not None else None
            if proc is None:
                continue
            try:
                with open(f"/proc/{proc.pid}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                out[name] = (int(fields[11]) + int(fields[12])) / tick
            except (OSError, IndexError, ValueError):
                continue
        return out

    def idle_cost(self, seconds: float = 3.0) -> dict[str, dict[str, float]]:
        """What each client does while nobody uses it: wire bytes/s and CPU % over ``seconds``."""
        cpu0 = self.cpu_seconds()
        for side in self._sides.values():
            side.proxy.reset_counters()
        time.sleep(seconds)
        cpu1 = self.cpu_seconds()
        out = {}
        for name, side in self._sides.items():
            wire = side.proxy.bytes_to_server + side.proxy.bytes_to_client
            out[name] = {
                "wire_bytes_per_s": round(wire / seconds),
                "cpu_percent": round((cpu1.get(name, 0.0) - cpu0.get(name, 0.0)) / seconds * 100, 1),
            }
        return out

    # ------------------------------------------------------------ tear-down

    def close(self) -> dict[str, object]:
        """Stop everything; returns what went wrong at shutdown and the client log problems."""
        out: dict[str, object] = {}
        for mount in (self.cscd, self.rclone):
            if mount is None:
                continue
            try:
                mount.stop()
            except Exception as exc:  # noqa: BLE001 - clean-up goes on
                mount.exit_problem = f"stop failed: {exc}"
            out[mount.name] = {
                "log": str(mount.log_path),
                "exit_problem": mount.exit_problem,
                "log_problems": mount.log_problems(),
            }
        for proxy in self.proxies.values():
            with contextlib.suppress(Exception):
                proxy.close()
        if self.samba is not None:
            try:
                self.samba.stop()
                panic = "PANIC" in self.samba.log_text()
                out["smbd"] = {"log": str(self.samba.log_path), "panic": panic}
            except Exception as exc:  # noqa: BLE001
                out["smbd"] = {"stop_error": str(exc)}
        for what, fn in self.cleanups:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - the rest of the clean-up goes on
                out.setdefault("cleanup_errors", []).append(f"{what}: {exc}")
        self.cleanups.clear()
        return out

    def remove_workdir(self) -> None:
        for mp in (self.workdir / "cscd-mnt", self.workdir / "rclone-mnt"):
            if is_mount(mp):
                return  # never rm -r through a live mount
        shutil.rmtree(self.workdir, ignore_errors=True)

"""A throwaway private ``smbd`` on loopback, for the demo, the tests and the benchmarks.

Owns one Samba server process tree and its state directory: the generated ``smb.conf``, the
tdb files, the log and the shared folder ``<state>/share``. Plain synchronous code
(``subprocess``), no trio, no network beyond 127.0.0.1. It must not touch the system's Samba
configuration or any process it did not start: signals go to the PIDs (and the process group)
of the ``smbd`` it started itself.

Faults are real: ``kill()`` is a crashed server (SIGKILL to every smbd process), ``pause()`` a
hung one (SIGSTOP: the kernel still completes TCP handshakes, nothing answers), ``start()``
after either brings the same server back on the same port and directory.

Not supported: several users, ACL setups (see FACTS.md for the 0711/0700 recipe), a system
where the Samba user has no unix account of the same name.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

log = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
_PORT_ATTEMPTS = 5

_SHARE_DEFAULTS: dict[str, str] = {
    "read only": "no",
    "browseable": "yes",
    "guest ok": "no",
    "create mask": "0644",
    "directory mask": "0755",
    # DOS attributes stay out of the file system's xattrs; EAs (modes and user.* attributes
    # roam in them, ``cscd.xattrs``) are on where the share's file system has user xattrs.
    "store dos attributes": "no",
    "map archive": "no",
    "map readonly": "no",
    "kernel oplocks": "no",
    "kernel share modes": "no",
}

def has_user_xattrs(directory: Path) -> bool:
    """Whether files in ``directory`` can hold ``user.`` xattrs (where Samba keeps EAs)."""
    probe = directory / ".cscd-xattr-probe"
    try:
        probe.touch()
        os.setxattr(probe, "user.cscd.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


# Fallback when ``testparm --show-all-parameters`` cannot tell which options are global.
_KNOWN_GLOBALS = frozenset(
    {
        "log level",
        "server min protocol",
        "server max protocol",
        "server signing",
        "server smb encrypt",
        "smb encrypt",
        "max log size",
        "deadtime",
        "smb2 max credits",
        "smb2 max read",
        "smb2 max write",
        "smb2 max trans",
        "socket options",
        "keepalive",
        "ntlm auth",
        "server multi channel support",
        "change notify",
        "kernel change notify",
    }
)


@functools.cache
def _global_parameters() -> frozenset[str]:
    """Names of smb.conf parameters that belong in ``[global]``, as this Samba says."""
    testparm = shutil.which("testparm")
    if testparm is None:
        return _KNOWN_GLOBALS
    try:
        out = subprocess.run(
            [testparm, "--show-all-parameters"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return _KNOWN_GLOBALS
    names, section = set(), ""
    for line in out.splitlines():
        if line.startswith("["):
            section = line.strip()
        elif section == "[global]" and "=" in line:
            names.add(line.split("=", 1)[0].strip().lower())
    return frozenset(names) or _KNOWN_GLOBALS


class SambaError(RuntimeError):
    """The private smbd could not be set up or started; the message carries the log tail."""


class EmbeddedSamba:
    """One private ``smbd`` serving ``<state_dir>/share`` as ``\\\\127.0.0.1\\<share>``.

    ``start()`` blocks until the port accepts connections (or raises ``SambaError`` with the
    tail of the server's log). Usable as a context manager: enter starts, exit stops.
    Re-running on an existing state directory is fine; files in the share are kept, and an
    smbd that a crashed earlier run left on the same directory is killed first.

    ``username`` must be a unix account (default: the current user; smbd maps the Samba user
    to it); ``password`` defaults to a random token. ``extra_options`` are smb.conf settings,
    e.g. ``{"change notify": "no"}``: global parameters go to ``[global]``, the others to the
    share's section (``testparm`` says which is which). ``extra_shares`` names more shares
    with the same settings, each served from ``extra_share_dir(name)`` (for moves across
    shares of one server). ``host`` is a loopback address (several servers may share one
    ``port`` on 127.0.0.2, 127.0.0.3, ...: a DFS referral names a server, never a port);
    ``port`` None picks a free one.
    """

    def __init__(
        self,
        state_dir: Path,
        share: str = "share",
        username: str | None = None,
        password: str | None = None,
        *,
        extra_options: Mapping[str, str] | None = None,
        extra_shares: Sequence[str] = (),
        host: str = "127.0.0.1",
        port: int | None = None,
    ) -> None:
        if not host.startswith("127."):
            raise SambaError(f"{host}: the embedded server listens on loopback addresses only")
        self.state_dir = Path(state_dir).resolve()
        self._host = host
        self._share = share
        self._extra_shares = tuple(extra_shares)
        self._username = username or getpass.getuser()
        self._password = password if password is not None else secrets.token_urlsafe(18)
        self._extra = dict(extra_options or {})
        self._port: int | None = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_fh: BinaryIO | None = None

    # -- properties -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        if self._port is None:
            raise SambaError("the server has not been started yet, so it has no port")
        return self._port

    @property
    def share(self) -> str:
        return self._share

    @property
    def share_dir(self) -> Path:
        return self.state_dir / "share"

    def extra_share_dir(self, name: str) -> Path:
        """The directory on disk of one of the ``extra_shares``."""
        return self.state_dir / "shares" / name

    @property
    def username(self) -> str:
        return self._username

    @property
    def password(self) -> str:
        return self._password

    @property
    def conf_path(self) -> Path:
        return self.state_dir / "smb.conf"

    @property
    def log_path(self) -> Path:
        """The server's debug output (``--debug-stdout`` plus its own log file)."""
        return self.state_dir / "smbd.out"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def unc(self, path: str = "") -> str:
        r"""``\\127.0.0.1\share`` plus ``path`` (``/`` or ``\`` separated), for messages."""
        base = f"\\\\{self.host}\\{self._share}"
        parts = [p for p in path.replace("/", "\\").split("\\") if p]
        return "\\".join([base, *parts])

    def write_credentials_file(self, path: Path) -> Path:
        """Write a mount.cifs-style credentials file (``username=``/``password=``), mode 0600."""
        path = Path(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"username={self._username}\npassword={self._password}\n")
        os.chmod(path, 0o600)
        return path

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start smbd (again); reuses the port of an earlier start. Blocks until it listens."""
        if self.is_running():
            return
        self._prepare_dirs()
        self._reap_stale()
        fixed_port = self._port is not None
        attempts = 1 if fixed_port else _PORT_ATTEMPTS
        last_error: SambaError | None = None
        for _ in range(attempts):
            if not fixed_port:
                self._port = _free_port()
            self._write_conf()
            self._add_user()
            try:
                self._spawn_and_wait()
                log.info("smbd pid %s serving %s on port %s", self.pid, self.unc(), self._port)
                return
            except _PortTaken as exc:
                last_error = SambaError(str(exc))
                log.info("port %s was taken, trying another", self._port)
                continue
        assert last_error is not None
        raise last_error

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after a few seconds; waits for every process."""
        proc = self._proc
        if proc is None:
            return
        pids = self._tree_pids()
        self._signal_all(pids, signal.SIGCONT)  # a paused server cannot act on SIGTERM
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("smbd pid %s ignored SIGTERM; killing it", proc.pid)
        self._kill_tree(pids)
        self._proc = None
        self._close_log()

    def kill(self) -> None:
        """SIGKILL every smbd process at once: a crashed server. ``start()`` brings it back."""
        if self._proc is None:
            return
        self._kill_tree(self._tree_pids())
        self._proc = None
        self._close_log()

    def pause(self) -> None:
        """SIGSTOP smbd and its children: a hung server (connections stay open, nothing answers)."""
        self._signal_all(self._tree_pids(), signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT what ``pause()`` stopped."""
        self._signal_all(self._tree_pids(), signal.SIGCONT)

    def log_tail(self, max_bytes: int = 4000) -> str:
        """The last part of the server's output, for error messages."""
        chunks = []
        for path in (self.log_path, self.state_dir / "log" / "log.smbd"):
            try:
                with open(path, "rb") as f:
                    f.seek(0, os.SEEK_END)
                    f.seek(max(0, f.tell() - max_bytes))
                    chunks.append(f.read().decode("utf-8", "replace"))
            except FileNotFoundError:
                continue
        return "\n".join(chunks)

    def log_text(self) -> str:
        """Everything the server logged (for assertions such as "no PANIC")."""
        out = []
        for path in (self.log_path, *sorted((self.state_dir / "log").glob("log.*"))):
            with contextlib.suppress(FileNotFoundError):
                out.append(path.read_text("utf-8", "replace"))
        return "\n".join(out)

    def __enter__(self) -> EmbeddedSamba:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedSamba({self.unc()!r}, port={self._port}, user={self._username!r})"

    # -- internals --------------------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        return self.state_dir / name

    def _prepare_dirs(self) -> None:
        for name in ("private", "lock", "state", "cache", "pid", "ncalrpc", "log"):
            self._dir(name).mkdir(parents=True, exist_ok=True)
        self._dir("private").chmod(0o700)
        share = self.share_dir
        share.mkdir(parents=True, exist_ok=True)
        # The Samba user must be able to write its share.
        try:
            import pwd

            pw = pwd.getpwnam(self._username)
        except KeyError:
            raise SambaError(
                f"the Samba user {self._username!r} has no unix account; "
                "smbd maps each Samba user to a unix user of the same name"
            ) from None
        for path in (share, *(self.extra_share_dir(n) for n in self._extra_shares)):
            path.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0 and path.stat().st_uid != pw.pw_uid:
                os.chown(path, pw.pw_uid, pw.pw_gid)

    def _reap_stale(self) -> None:
        """Kill an smbd left running on this state directory by an earlier, crashed run.

        Only a process whose command line names our own ``smb.conf`` is touched.
        """
        pid_file = self._dir("pid") / "smbd.pid"
        try:
            pid = int(pid_file.read_text().strip() or "0")
        except (FileNotFoundError, ValueError):
            return
        if pid <= 0 or not _pid_alive(pid):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return
        if str(self.conf_path).encode() not in cmdline:
            return
        log.warning("killing smbd pid %s left running on %s by an earlier run", pid, self.state_dir)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)

    def _write_conf(self) -> None:
        globals_ = _global_parameters()
        extra_global = {k: v for k, v in self._extra.items() if k.lower() in globals_}
        extra_share = {k: v for k, v in self._extra.items() if k.lower() not in globals_}
        glob = {
            "server role": "standalone server",
            "workgroup": "CSCDTEST",
            "netbios name": "CSCDSMBD",
            "server string": "cscd test server",
            "security": "user",
            "passdb backend": f"tdbsam:{self._dir('private') / 'passdb.tdb'}",
            "map to guest": "never",
            "private dir": str(self._dir("private")),
            "lock directory": str(self._dir("lock")),
            "state directory": str(self._dir("state")),
            "cache directory": str(self._dir("cache")),
            "pid directory": str(self._dir("pid")),
            "ncalrpc dir": str(self._dir("ncalrpc")),
            "binddns dir": str(self._dir("private") / "bind-dns"),
            "log file": str(self._dir("log") / "log.%m"),
            "max log size": "0",
            "log level": "1",
            "smb ports": str(self._port),
            # one loopback address: several servers can share a port on 127.0.0.2, .3, ...
            # (DFS targets name a server, never a port)
            "interfaces": f"{self._host}/8" if self._host != "127.0.0.1" else "lo",
            "bind interfaces only": "yes",
            "disable netbios": "yes",
            "server min protocol": "SMB3",
            "load printers": "no",
            "printing": "bsd",
            "printcap name": "/dev/null",
            "disable spoolss": "yes",
            "unix password sync": "no",
            "obey pam restrictions": "no",
            "usershare path": "",
            "registry shares": "no",
            "include system krb5 conf": "no",
            "dns proxy": "no",
            "panic action": "",
        }
        glob.update(extra_global)
        share = {"path": str(self.share_dir), **_SHARE_DEFAULTS, "valid users": self._username,
                 "ea support": "yes" if has_user_xattrs(self.share_dir) else "no"}
        share.update(extra_share)
        lines = ["# written by cscd.samba.EmbeddedSamba; rewritten on every start", "[global]"]
        lines += [f"\t{k} = {v}" for k, v in glob.items()]
        lines += ["", f"[{self._share}]"]
        lines += [f"\t{k} = {v}" for k, v in share.items()]
        for name in self._extra_shares:
            lines += ["", f"[{name}]"]
            lines += [f"\t{k} = {v}" for k, v in {**share, "path": str(self.extra_share_dir(name))}.items()]
        self.conf_path.write_text("\n".join(lines) + "\n")

    def _add_user(self) -> None:
        smbpasswd = shutil.which("smbpasswd") or "/usr/bin/smbpasswd"
        pw = f"{self._password}\n{self._password}\n".encode()
        res = subprocess.run(
            [smbpasswd, "-c", str(self.conf_path), "-s", "-a", self._username],
            env=dict(os.environ, _NO_WINBINDD="1"),
            input=pw,
            capture_output=True,
            timeout=30,
            check=False,
        )
        if res.returncode != 0:
            out = (res.stdout + res.stderr).decode("utf-8", "replace").strip()
            raise SambaError(f"smbpasswd could not add user {self._username!r}: {out}")

    def _spawn_and_wait(self) -> None:
        smbd = shutil.which("smbd") or "/usr/sbin/smbd"
        self._close_log()
        fh = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the server's lifetime
        self._log_fh = fh
        fh.write(f"\n==== start on port {self._port} at {time.ctime()} ====\n".encode())
        fh.flush()
        # smbd -F --no-process-group signals its whole process group on SIGTERM: give it a
        # session of its own so it never takes the caller with it (FACTS.md).
        # _NO_WINBINDD=1: this standalone server maps its users itself. A winbindd on the
        # machine's default socket (a domain member's, or a test domain controller's) would
        # otherwise be asked to map them and every logon would be refused (seen).
        self._proc = subprocess.Popen(
            [smbd, "-F", "--no-process-group", "--debug-stdout", "-s", str(self.conf_path)],
            env=dict(os.environ, _NO_WINBINDD="1"),
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
        log_start = fh.tell()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            rc = self._proc.poll()
            since_start = self._log_since(log_start)
            if "Address already in use" in since_start:
                # smbd keeps running on ::1 when 127.0.0.1 is taken: that is a failure here.
                self.kill()
                raise _PortTaken(f"port {self._port} is in use")
            if rc is not None:
                self._proc = None
                raise SambaError(
                    f"smbd exited with status {rc} while starting; its log ends:\n{self.log_tail()}"
                )
            # The port must be listened on by *this* smbd, not by whoever else may hold it.
            if _listens(self._proc.pid, self._host, self.port):
                return
            if time.monotonic() > deadline:
                self.kill()
                raise SambaError(
                    f"smbd did not listen on {self.host}:{self._port} "
                    f"within {START_TIMEOUT_S:.0f} s; "
                    f"its log ends:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def _tree_pids(self) -> list[int]:
        """The smbd parent and all its descendants (from /proc), parent first."""
        if self._proc is None:
            return []
        root = self._proc.pid
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            # comm may contain spaces and parentheses: split after the last ')'.
            fields = stat[stat.rfind(b")") + 2 :].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        out, todo = [], [root]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children.get(pid, []))
        return out

    def _signal_all(self, pids: list[int], sig: signal.Signals) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _kill_tree(self, pids: list[int]) -> None:
        proc = self._proc
        if proc is not None:
            # The server runs in a session (and process group) of its own: this reaches
            # children forked after ``pids`` was taken, and nothing else.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        self._signal_all(pids, signal.SIGKILL)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_TIMEOUT_S)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for pid in pids[1:]:
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)

    def _close_log(self) -> None:
        fh = self._log_fh
        self._log_fh = None
        if fh is not None:
            fh.close()


class _PortTaken(SambaError):
    pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listens(pid: int, host: str, port: int) -> bool:
    """True if process ``pid`` holds a socket listening on ``host``:``port`` (IPv4)."""
    # /proc/net/tcp spells addresses in host byte order
    wanted = f"{socket.inet_aton(host)[::-1].hex().upper()}:{port:04X}"
    inodes = set()
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[1] == wanted and fields[3] == "0A":  # 0A = LISTEN
                    inodes.add(fields[9])
    except OSError:
        return False
    if not inodes:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"

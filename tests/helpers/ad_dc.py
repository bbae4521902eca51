r"""A Samba Active Directory domain controller on loopback, for the Kerberos tests (issue 17).

``EmbeddedDomain`` provisions a throwaway domain ``CSCD.TEST`` (``samba-tool domain
provision``, no DNS server), runs only the services the tests need — the file server, the KDC
and winbindd — on free ports of 127.0.0.1, and adds users. Its file server gets the service
principal ``cifs/127.0.0.1`` besides its own, so a client that connects to ``\\127.0.0.1``
asks for a ticket the KDC knows: no hosts entry and no DNS. ``kinit`` (MIT, Debian's
krb5-user) gets a user a real ticket into a credential cache of the test's own; ``env()``
gives the ``KRB5_CONFIG`` and ``KRB5CCNAME`` a client process needs.

The DC's smbd asks winbindd to map domain users through the machine's default winbindd
socket (``/run/samba/winbindd``; moving it breaks the DC's logons with an internal error),
so one test domain runs at a time per machine; ``EmbeddedSamba`` keeps its standalone smbd
away from that winbindd (``_NO_WINBINDD``). Provisioning takes ~4 s, the start ~3 s.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REALM = "CSCD.TEST"
DOMAIN = "CSCD"
HOST = "dc1"
ADMIN_PASSWORD = "Adm1n-Pass.word"
START_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


class DomainError(RuntimeError):
    pass


class EmbeddedDomain:
    """One throwaway AD domain with its DC under ``state_dir``; ``start()`` / ``stop()``."""

    def __init__(self, state_dir: Path, share: str = "files") -> None:
        self.state_dir = Path(state_dir).resolve()
        self.share = share
        # Domain users work as uids of the DC's own, which cannot enter pytest's 0700 tmp:
        # the share lives in a directory of its own under the system's temp dir.
        self.share_dir = Path(tempfile.mkdtemp(prefix="cscd-dc-share-"))
        self.smb_port = _free_port()
        self.kdc_port = _free_port()
        self.kpasswd_port = _free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self.realm = REALM
        self.host = "127.0.0.1"

    # -- paths ------------------------------------------------------------------------------

    @property
    def conf_path(self) -> Path:
        return self.state_dir / "etc" / "smb.conf"

    @property
    def krb5_conf(self) -> Path:
        return self.state_dir / "krb5.conf"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "samba.log"

    def unc(self, path: str = "") -> str:
        return f"\\\\{self.host}\\{self.share}" + (f"\\{path}" if path else "")

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        for tool in ("samba", "samba-tool", "kinit"):
            if shutil.which(tool) is None:
                raise DomainError(f"{tool} is missing (Debian packages samba-ad-dc, krb5-user; "
                                  "bash .ci/setup installs them)")
        if not self.conf_path.exists():
            self._provision()
        self._spawn()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def remove(self) -> None:
        """Stop, and delete the share's directory (the state dir is the caller's)."""
        self.stop()
        shutil.rmtree(self.share_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedDomain:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # -- users and tickets ------------------------------------------------------------------

    def add_user(self, name: str, password: str) -> None:
        self._tool("user", "create", name, password)
        self._tool("user", "setexpiry", name, "--noexpiry")

    def kinit(self, principal: str, password: str, ccache: Path, *, lifetime: str | None = None) -> dict[str, str]:
        """A ticket for ``principal`` into the file ``ccache``; returns the client's env."""
        env = self.env(ccache)
        cmd = ["kinit", *(["-l", lifetime] if lifetime else []), f"{principal}@{self.realm}"]
        res = subprocess.run(cmd, input=f"{password}\n".encode(), capture_output=True, env=env,
                             timeout=30, check=False)
        if res.returncode != 0:
            raise DomainError(f"kinit {principal} failed: {res.stderr.decode(errors='replace').strip()}")
        return env

    def service_ticket(self, ccache: Path, service: str = "cifs/127.0.0.1") -> None:
        """Get the service ticket now into ``ccache`` (kvno), so a later logon needs no KDC."""
        res = subprocess.run(["kvno", service], capture_output=True, env=self.env(ccache), timeout=30, check=False)
        if res.returncode != 0:
            raise DomainError(f"kvno {service} failed: {res.stderr.decode(errors='replace').strip()}")

    def env(self, ccache: Path) -> dict[str, str]:
        return dict(os.environ, KRB5_CONFIG=str(self.krb5_conf), KRB5CCNAME=f"FILE:{ccache}")

    # -- inside -----------------------------------------------------------------------------

    def _tool(self, *args: str) -> str:
        res = subprocess.run(["samba-tool", *args, "-s", str(self.conf_path)], capture_output=True,
                             timeout=120, check=False)
        if res.returncode != 0:
            out = (res.stdout + res.stderr).decode(errors="replace").strip()
            raise DomainError(f"samba-tool {' '.join(args[:2])} failed: {out[-2000:]}")
        return res.stdout.decode(errors="replace")

    def _provision(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        res = subprocess.run(
            ["samba-tool", "domain", "provision", f"--realm={REALM}", f"--domain={DOMAIN}",
             "--server-role=dc", "--dns-backend=NONE", f"--adminpass={ADMIN_PASSWORD}",
             f"--targetdir={self.state_dir}", f"--host-name={HOST}", "--use-rfc2307",
             "--option=interfaces=lo", "--option=bind interfaces only=yes"],
            capture_output=True, timeout=300, check=False)
        if res.returncode != 0:
            out = (res.stdout + res.stderr).decode(errors="replace").strip()
            raise DomainError(f"samba-tool domain provision failed: {out[-2000:]}")
        text = self.conf_path.read_text()
        settings = {
            "server services": "s3fs, kdc, winbindd",
            "smb ports": str(self.smb_port),
            "krb5 port": str(self.kdc_port),
            "kpasswd port": str(self.kpasswd_port),
            "pid directory": str(self.state_dir / "run"),
            "ncalrpc dir": str(self.state_dir / "ncalrpc"),
            "log file": str(self.state_dir / "log.%m"),
            "server min protocol": "SMB3",
        }
        lines = [line for line in text.splitlines()
                 if line.strip().split("=")[0].strip() not in settings and "server services" not in line]
        out: list[str] = []
        for line in lines:
            out.append(line)
            if line.strip() == "[global]":
                out += [f"\t{k} = {v}" for k, v in settings.items()]
        # Plain POSIX permissions on the test share: a DC's shares keep NT ACLs in xattrs
        # (acl_xattr), which files made on the disk by the tests do not have.
        out += ["", f"[{self.share}]", f"\tpath = {self.share_dir}", "\tread only = no",
                "\tvfs objects = dfs_samba4", "\tnt acl support = no"]
        self.conf_path.write_text("\n".join(out) + "\n")
        (self.state_dir / "run").mkdir(exist_ok=True)
        self.share_dir.chmod(0o1777)  # domain users map to uids of the DC's own (idmap)
        # The file server also answers to cifs/127.0.0.1: clients connect by address.
        self._tool("spn", "add", "cifs/127.0.0.1", f"{HOST.upper()}$")
        self.krb5_conf.write_text(
            "[libdefaults]\n"
            f"    default_realm = {REALM}\n"
            "    dns_lookup_realm = false\n    dns_lookup_kdc = false\n"
            "    rdns = false\n    dns_canonicalize_hostname = false\n"
            "    udp_preference_limit = 1\n"
            f"[realms]\n    {REALM} = {{\n        kdc = 127.0.0.1:{self.kdc_port}\n    }}\n")

    def _spawn(self) -> None:
        Path("/run/samba").mkdir(parents=True, exist_ok=True)
        for stale in (self.state_dir / "run").glob("*.pid"):
            stale.unlink()
        fh = open(self.log_path, "ab")  # noqa: SIM115 - the server's log, closed with the process
        try:
            self._proc = subprocess.Popen(["samba", "-i", "-s", str(self.conf_path)], stdin=subprocess.DEVNULL,
                                          stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            fh.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (_listening(self.smb_port) and _listening(self.kdc_port)):
            if self._proc.poll() is not None:
                raise DomainError(f"samba exited with {self._proc.returncode}: "
                                  f"{self.log_path.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise DomainError(f"samba did not listen within {START_TIMEOUT_S:g} s")
            time.sleep(0.1)

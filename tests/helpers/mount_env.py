"""``MountEnv``: one user's redirected Documents on the session smbd, mounted by a daemon.

Owns the per-test layout: a fresh folder on the server (``server``, the share's directory on
disk, which is what smbd stores), a TCP proxy between the daemon and smbd (to count wire
bytes or break the link), the credentials file and the ``DaemonProcess``. Timings are short
so tests see uploads and rescans quickly; behaviour is the same as with the defaults.
``unexpected_warnings`` is the log judgement the ``mount_env`` fixture (and the behaviour
suite's shared daemons) apply at a test's end.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest

from cscd.cache.check import check_cache
from cscd.samba import EmbeddedSamba
from tests.helpers.daemon import DaemonProcess, write_credentials
from tests.helpers.proxy import TcpProxy

FAST_TIMINGS = {
    "request_timeout_s": 5,
    "fetch_timeout_s": 10,
    "probe_interval_s": 0.5,
    "idle_probe_s": 0.5,
    "reconnect_max_s": 1,
    "upload_delay_s": 0.1,
    "scan_interval_s": 0.5,
    "poll_max_s": 5,
    "revalidate_interval_s": 0.5,
    "roaming_poll_s": 0.5,
    "compliance_interval_s": 0.5,
    "keyring_wait_s": 1,
}


class MountEnv:
    def __init__(self, smbd: EmbeddedSamba, workdir: Path, *, timings: dict | None = None,
                 offline: dict | None = None, extra: dict | None = None) -> None:
        self.smbd = smbd
        self.workdir = workdir
        self.user_dir = f"u{uuid.uuid4().hex[:8]}"
        self.server = smbd.share_dir / self.user_dir / "Documents"
        self.server.mkdir(parents=True)
        workdir.mkdir(parents=True, exist_ok=True)
        self.proxy = TcpProxy((smbd.host, smbd.port))
        #: the key of a cache the daemon seals (``cscd.cache.sealing``), for the check at close
        self.check_sealer = None
        self.credentials = write_credentials(workdir / "credentials", smbd.username, smbd.password)
        self.daemon = DaemonProcess(
            workdir,
            folders={"Documents": smbd.unc(f"{self.user_dir}\\Documents")},
            credentials=self.credentials,
            port=self.proxy.port,
            extra={"timings": dict(FAST_TIMINGS, **(timings or {})), **({"offline": offline} if offline else {}),
                   **(extra or {})},
        )
        self.mount = self.daemon.mount
        self.docs = self.mount / "Documents"
        if os.environ.get("CSCD_TEST_SEALED"):
            self.seal_the_cache()

    def seal_the_cache(self) -> None:
        """Before the daemon starts: its cache is sealed by cscd (the policy
        ``device.encrypt_cache`` on a file system without fscrypt). ``CSCD_TEST_SEALED=1`` does
        it for every mount test, to find what sealing breaks; some tests ask for it themselves."""
        from cscd.cache.sealing import KEY_BYTES, Sealer

        key = os.urandom(KEY_BYTES)
        creds = self.workdir / "sealed-credentials"
        creds.mkdir(mode=0o700, exist_ok=True)
        (creds / "cscd-test-key").write_bytes(key)
        self.daemon.env["CREDENTIALS_DIRECTORY"] = str(creds)
        policy = self.daemon.workdir / "cscd-policy"
        policy.mkdir(exist_ok=True)
        (policy / "policy.yaml").write_text("device:\n  encrypt_cache: true\n  cache_key: 'systemd:cscd-test-key'\n")
        self.check_sealer = Sealer(key)

    def start_daemon(self) -> None:
        self.daemon.start()

    def wipe_cache(self) -> None:
        """Throw the cache away (daemon stopped): the next start is a cold one."""
        assert not self.daemon.is_running()
        shutil.rmtree(self.daemon.cache)

    def close(self) -> None:
        """Stop the daemon, then check the cache it left is consistent (as fsck after s3ql's tests)."""
        try:
            if self.daemon.is_running():
                self.daemon.stop()
        finally:
            self.daemon.close()
            self.proxy.close()
        if (self.daemon.cache / "index").exists():
            sealed = (self.daemon.cache / "sealed").exists()  # a test's own policy may not seal
            problems = check_cache(self.daemon.cache, self.check_sealer if sealed else None)
            assert not problems, "cache inconsistent after the test:\n" + "\n".join(problems)


def unexpected_warnings(lines: Iterable[str], node: pytest.Item, *also_allowed: str) -> list[str]:
    """Of a daemon's WARNING-or-worse lines (``DaemonProcess.warnings()``), the ones a test did
    not expect: every traceback, and each line that no pattern of a ``log_allows`` mark on the
    test, its class or its module (nor ``also_allowed``) finds (``re.search``)."""
    allowed = [re.compile(p) for p in also_allowed]
    allowed += [re.compile(p) for mark in node.iter_markers("log_allows") for p in mark.args]
    return [line for line in lines if "Traceback" in line or not any(p.search(line) for p in allowed)]

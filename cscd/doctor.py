"""``cscd doctor``: is everything cscd needs in place? One line per check, no daemon needed.

Owns the checks a support call goes through, in order: FUSE (``/dev/fuse`` usable,
``fusermount3`` setuid), the configuration and policy (read as the daemon reads them, file
and line on a mistake), the credentials (a Kerberos ticket, or a private password file), each
folder's server (a real logon and a look at the folder, within ``SERVER_TIMEOUT_S``), the
clock against each server's (Kerberos refuses more than 5 minutes; the server's time comes
with its NEGOTIATE reply), the cache disk (private, writable, free space) and whether a
daemon answers. Each check says ``ok``, ``warn`` or ``FAIL`` and what to do; the command
exits 1 if any failed. Read-only: it creates nothing but a connection it closes.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import trio

from cscd.cache import fscrypt, sealed_cache
from cscd.control import ControlClient, ControlError, socket_candidates
from cscd.errors import CscdError
from cscd.policy.config import DaemonConfig, load_config
from cscd.types import UncTarget
from cscd.upstream import open_upstream

#: how long one server may take to answer a logon and a look at the folder
SERVER_TIMEOUT_S = 15.0
#: Kerberos' default tolerance, and the share of it from which the clock is worth a warning
MAX_SKEW_S = 300.0
WARN_SKEW_S = 60.0
#: free space on the cache disk below which it is a warning
LOW_FREE_BYTES = 1 << 30

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass(frozen=True)
class Check:
    status: str
    what: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.what}: {self.detail}"


def check_fuse() -> Check:
    dev = Path("/dev/fuse")
    if not dev.exists():
        return Check(FAIL, "FUSE", "/dev/fuse is missing: load the fuse module (modprobe fuse) or give the "
                                   "container the device")
    if not os.access(dev, os.R_OK | os.W_OK):
        return Check(FAIL, "FUSE", "/dev/fuse is not usable by this user (it should be mode 0666)")
    helper = shutil.which("fusermount3")
    if helper is None:
        return Check(FAIL, "FUSE", "fusermount3 is missing: install the fuse3 package")
    if os.getuid() != 0 and not os.stat(helper).st_mode & stat.S_ISUID:
        return Check(FAIL, "FUSE", f"{helper} is not setuid root: reinstall fuse3")
    return Check(OK, "FUSE", f"/dev/fuse usable, {helper} present")


def check_config(path: Path) -> tuple[Check, DaemonConfig | None]:
    try:
        config = load_config(path)
    except CscdError as exc:
        return Check(FAIL, "configuration", str(exc)), None
    return Check(OK, "configuration", f"{path}: {len(config.folders)} folder(s) named there"), config


async def effective(config: DaemonConfig) -> tuple[Check, DaemonConfig]:
    """The configuration with the machine policy over it, as the daemon starts with it."""
    from cscd.operations.policy_in_force import PolicyKeeper

    try:
        keeper = await PolicyKeeper.open(config)
    except CscdError as exc:
        return Check(FAIL, "policy", str(exc)), config
    policy = keeper.policy
    files = ", ".join(str(f) for f in policy.files) or f"none in {config.policy_dir}"
    merged = keeper.config()
    return Check(OK, "policy", f"read {files}; {len(merged.folders)} folder(s) redirected"), merged


def check_credentials(config: DaemonConfig) -> Check:
    if config.credentials is not None:
        try:
            st = config.credentials.stat()
        except OSError as exc:
            return Check(FAIL, "credentials", f"{config.credentials}: {exc.strerror}")
        if st.st_mode & 0o077:
            return Check(FAIL, "credentials", f"{config.credentials} is readable by others (mode "
                                              f"{stat.S_IMODE(st.st_mode):04o}): chmod 600 it")
        try:
            config.server_settings(offload=False)
        except CscdError as exc:
            return Check(FAIL, "credentials", str(exc))
        fallback = " (after a Kerberos ticket)" if config.kerberos_first else ""
        return Check(OK, "credentials", f"password file {config.credentials}{fallback}, private")
    klist = shutil.which("klist")
    if klist is None:
        return Check(WARN, "credentials", "Kerberos, but klist is missing (krb5-user) to look at the ticket")
    if subprocess.run([klist, "-s"], check=False, timeout=10).returncode != 0:
        return Check(FAIL, "credentials", "Kerberos: no valid ticket: run kinit, or lock and unlock the session")
    return Check(OK, "credentials", "Kerberos: a valid ticket")


async def check_servers(config: DaemonConfig) -> list[Check]:
    out: list[Check] = []
    for folder in config.folders:
        if not isinstance(folder.target, UncTarget):
            out.append(Check(OK, f"server of {folder.name}", f"{folder.target} (a local directory)"))
            continue
        try:
            up = open_upstream(folder.target, config.server_settings(offload=False, timeout_s=SERVER_TIMEOUT_S))
        except CscdError as exc:
            out.append(Check(FAIL, f"server of {folder.name}", str(exc)))
            continue
        try:
            with trio.fail_after(SERVER_TIMEOUT_S):
                await up.connect()
                await up.list_dir(b"")
            encrypted = " (encrypted)" if getattr(up, "is_encrypted", False) else ""
            out.append(Check(OK, f"server of {folder.name}", f"logged on to {folder.target}{encrypted}"))
            offset = getattr(up, "clock_offset_s", None)
            out.append(_clock(folder.name, offset))
        except trio.TooSlowError:
            out.append(Check(FAIL, f"server of {folder.name}",
                             f"{folder.target} did not answer within {SERVER_TIMEOUT_S:g} s (cached files still work)"))
        except CscdError as exc:
            out.append(Check(FAIL, f"server of {folder.name}", f"{exc} (cached files still work)"))
        finally:
            with trio.move_on_after(5):
                await up.close()
    return out


def _clock(folder: str, offset: float | None) -> Check:
    if offset is None:
        return Check(WARN, f"clock against {folder}'s server", "the server did not say its time")
    ahead = "ahead of" if offset > 0 else "behind"
    text = f"the server is {abs(offset):.1f} s {ahead} this machine"
    if abs(offset) > MAX_SKEW_S:
        return Check(FAIL, f"clock against {folder}'s server", text + ": Kerberos refuses that; set the time (NTP)")
    if abs(offset) > WARN_SKEW_S:
        return Check(WARN, f"clock against {folder}'s server", text + ": check NTP")
    return Check(OK, f"clock against {folder}'s server", text)


def check_cache(config: DaemonConfig) -> Check:
    cache = config.cache
    if not cache.exists():
        parent = next((p for p in cache.parents if p.exists()), Path("/"))
        if not os.access(parent, os.W_OK):
            return Check(FAIL, "cache", f"{cache} does not exist and {parent} is not writable")
        return Check(OK, "cache", f"{cache} is made at the first start")
    st = cache.stat()
    if st.st_uid != os.getuid():
        return Check(FAIL, "cache", f"{cache} belongs to uid {st.st_uid}, not to this user")
    if st.st_mode & 0o077:
        return Check(FAIL, "cache", f"{cache} is open to others (mode {stat.S_IMODE(st.st_mode):04o}): chmod 700 it")
    if not os.access(cache, os.W_OK):
        return Check(FAIL, "cache", f"{cache} is not writable")
    vfs = os.statvfs(cache)
    free = vfs.f_bavail * vfs.f_frsize
    text = f"{cache}: private, {free / (1 << 30):.1f} GiB free on its disk"
    return Check(WARN if free < LOW_FREE_BYTES else OK, "cache", text + (": little room for offline files"
                                                                         if free < LOW_FREE_BYTES else ""))


def check_cache_encryption(config: DaemonConfig) -> Check | None:
    """Where the device policy asks for an encrypted cache: can it be done here? (None: not asked.)"""
    device = config.device
    if not device.encrypt_cache:
        return None
    name = "cache encryption"
    probe = next((p for p in (config.cache, *config.cache.parents) if p.exists()), Path("/"))
    if device.cache_key.startswith("systemd:"):
        key = Path(os.environ.get("CREDENTIALS_DIRECTORY", "/nonexistent")) / device.cache_key.removeprefix("systemd:")
        if not key.is_file() or key.stat().st_size != fscrypt.KEY_BYTES:
            return Check(FAIL, name, f"device.cache_key {device.cache_key}: no {fscrypt.KEY_BYTES}-byte credential "
                                     "here ($CREDENTIALS_DIRECTORY); the daemon's unit must pass it: every folder "
                                     "will be served online only")
    if sealed_cache.is_sealed(config.cache):
        return Check(OK, name, "the cache is sealed by cscd (AES-GCM through OpenSSL)")
    try:
        fscrypt.policy_key(probe)
    except OSError as exc:
        return Check(OK, name, f"{probe}'s file system cannot encrypt ({exc.strerror}): cscd seals the cache "
                               "itself (AES-GCM through OpenSSL)")
    driver = fscrypt.contents_cipher_driver()
    if fscrypt.is_generic_driver(driver):
        return Check(WARN, name, f"possible, but the kernel's AES is its portable code ({driver}): cached reads "
                                 "and writes will be several times slower")
    return Check(OK, name, f"possible on {probe}'s file system (kernel cipher {driver or 'loaded at first use'})")


def check_daemon(config: DaemonConfig) -> Check:
    try:
        with ControlClient(socket_candidates(config.path, config.cache), timeout_s=5.0) as client:
            status = client.call("status")
    except ControlError as exc:
        return Check(WARN, "daemon", exc.message)
    modes = ", ".join(f"{n}: {f['mode']}" for n, f in status.get("folders", {}).items()) or "no folders"
    return Check(OK, "daemon", f"pid {status.get('pid')} serves {status.get('mount')} ({modes})")


async def run_checks(config_path: Path) -> list[Check]:
    """Every check, in order."""
    out = [check_fuse()]
    first, config = check_config(config_path)
    out.append(first)
    if config is None:
        return out
    policy_check, config = await effective(config)
    out.append(policy_check)
    out.append(check_credentials(config))
    out += await check_servers(config)
    out.append(check_cache(config))
    encryption = check_cache_encryption(config)
    if encryption is not None:
        out.append(encryption)
    out.append(check_daemon(config))
    return out

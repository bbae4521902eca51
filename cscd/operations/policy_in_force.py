"""The policy in force: ``PolicyKeeper`` reads it at start, replaces it on SIGHUP / ``cscd
reload`` only by a valid policy, and shows it (``cscd policy show``); and the copy of the
central policy fetched from the server at start and at every reload.

What a reload can change while running: the Offline Files values (slow-link threshold,
background-sync interval and offset, always offline, fetch on slow link, cost-aware sync and
its override, the cache size limit, the maximum file size). Everything else — the folder set
and targets, primary computers, the per-folder redirection keys (``offline`` included),
security and credentials, and ``offline_files.exclude_patterns`` (changing which names sync
sees needs every directory re-listed and the local-only files looked at again) — is decided
at start: the reply of ``cscd reload`` lists those keys and asks for a restart.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from cscd.cache.cache import Cache
from cscd.errors import ConfigError, CscdError
from cscd.events import EventId, emit
from cscd.link import LinkMonitor
from cscd.policy.central import MANIFEST, CentralPolicyRejected, copy_central_policy
from cscd.policy.config import DaemonConfig
from cscd.policy.machine import changed_keys, current_subject, daemon_config, load_policy, policy_rows
from cscd.policy.model import DevicePolicy, Policy, Subject
from cscd.types import OfflinePolicy
from cscd.upstream import open_upstream

log = logging.getLogger(__name__)


#: Roaming-profile keys that choose the server connection: applied at the next start.
RESTART_ROAMING_KEYS = frozenset({"roaming_profile.target", "roaming_profile.enabled"})
#: Device keys that decide how the cache is kept on disk: applied at the next start.
RESTART_DEVICE_KEYS = frozenset({"device.encrypt_cache", "device.cache_key"})
#: Offline Files keys that a policy may set but nothing enforces yet (shown, not applied).
NOT_ENFORCED_KEYS: frozenset[str] = frozenset()
#: Offline Files keys that take effect only at the next start.
RESTART_OFFLINE_KEYS = frozenset({"offline_files.exclude_patterns"})
_LOCATED = re.compile(r"^(?P<file>(?:/|\\\\)[^:]*):(?P<line>\d+): (?:(?P<key>[A-Za-z0-9_.%$-]+): )?(?P<reason>.*)$",
                      re.DOTALL)


def effective_config(base: DaemonConfig, policy: Policy) -> DaemonConfig:
    """The daemon's YAML with the policy laid over it (``machine.daemon_config``), plus the
    cache size limit where a policy file sets it. Pure."""
    config = daemon_config(base, policy)
    if policy.origin("offline_files.cache_size_limit") is not None:
        limit = policy.offline_files.cache_size_limit
        config = replace(config, cache_limit_bytes=limit.size_bytes,
                         cache_limit_fraction=(limit.percent or 0.0) / 100)
    return config


def cache_limit_bytes(config: DaemonConfig) -> int:
    """The content-store limit in bytes: the configured size, or a share of the cache's
    filesystem (one ``statvfs``, fast and local)."""
    if config.cache_limit_bytes is not None:
        return config.cache_limit_bytes
    st = os.statvfs(config.cache)
    return int(st.f_blocks * st.f_frsize * config.cache_limit_fraction)


def located_fields(message: str) -> dict[str, str]:
    """``FILE:LINE: KEY: reason`` → the POLICY_REJECTED fields (``?`` for a missing part)."""
    m = _LOCATED.match(message)
    if m is None:
        return {"file": "?", "line": "?", "key": "?", "reason": message}
    return {"file": m["file"], "line": m["line"], "key": m["key"] or "?", "reason": m["reason"]}


@dataclass
class PolicyKeeper:
    """The machine policy in force for this user, and what a reload may change live.

    ``open`` reads it at start (a ConfigError there stops the daemon). ``reload`` reads the
    files again and, only if they are valid, replaces the policy, updates the shared
    per-folder ``policies`` dict in place (the link monitor, sync and the folder source hold
    the same dict) and the cache size limit, and says which changed keys wait for a restart.
    Reading the files is a few small local reads, done on the trio thread.

    The central policy (``central_source`` in the local files): both ``open`` and ``reload``
    first bring its local copy (``CACHE/central-policy``) up to date from the server
    (``policy.central``: only changed files are read), within ``CENTRAL_TIMEOUT_S``; then the
    copy is read as the last files of the file order. A central file that does not validate
    is never copied: WARNING and POLICY_REJECTED name the server file, line and key, and the
    last good copy stays in force — one typo on the server must not stop a fleet's starts. A
    source that cannot be reached leaves the last copy in force too (WARNING); with no copy
    yet only the local files apply.
    """

    base: DaemonConfig
    policy: Policy
    #: folder → the Offline Files values it runs with; shared with monitor, sync and source
    policies: dict[str, OfflinePolicy] = field(default_factory=dict)
    monitor: LinkMonitor | None = None
    cache: Cache | None = None
    #: applies a new policy's roaming-profile settings to the running profile service
    profile: Callable[[Policy], None] | None = None
    #: what the last refresh of the central copy did, for ``cscd policy show``
    central: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def subject(base: DaemonConfig) -> Subject:
        """This user on this machine, with the configured home directory."""
        try:
            subject = current_subject()
        except KeyError:
            raise ConfigError(f"uid {os.getuid()} has no entry in the password database; machine policy "
                              f"needs a user name") from None
        return replace(subject, home=str(base.home_dir), directory_bus=base.directory_dbus)

    @classmethod
    async def open(cls, base: DaemonConfig) -> PolicyKeeper:
        """Refresh the central copy, then read the policy for start-up; raises ConfigError
        (``FILE:LINE: KEY: message``). Waits on the network at most ``CENTRAL_TIMEOUT_S``."""
        central = await refresh_central_copy(base)
        return cls(base, cls.read(base), central=central)

    @classmethod
    def read(cls, base: DaemonConfig) -> Policy:
        """The local files plus, where they name a central source, its last local copy."""
        subject = cls.subject(base)
        if base.policy_dir is None:
            return Policy(subject)
        policy = load_policy(subject, base.policy_dir)
        if policy.central_source is None:
            return policy
        return load_policy(subject, base.policy_dir, central_dir=central_dir(base))

    def config(self) -> DaemonConfig:
        return effective_config(self.base, self.policy)

    #: called with the device policy after every fetch (``operations.wipe``, ``compliance``)
    on_device: Callable[[DevicePolicy], None] | None = None

    def attach(self, policies: dict[str, OfflinePolicy], monitor: LinkMonitor, cache: Cache) -> None:
        """Give the keeper the live objects a reload updates."""
        self.policies, self.monitor, self.cache = policies, monitor, cache

    async def reload(self, source: str) -> dict[str, Any]:
        """Refresh the central copy and re-read the policy (SIGHUP, ``cscd reload``). On an
        error the last good policy stays, a WARNING says why and POLICY_REJECTED is emitted;
        the answer then has ``reloaded: false`` and ``error``. Never raises. Waits on the
        network at most ``CENTRAL_TIMEOUT_S`` (only when a central source is set)."""
        self.central = await refresh_central_copy(self.base)
        try:
            new = self.read(self.base)
        except ConfigError as exc:
            log.warning("%s: policy rejected; the last good policy stays in force: %s", source, exc)
            emit(EventId.POLICY_REJECTED, source=source, **located_fields(str(exc)))
            return {"reloaded": False, "error": str(exc),
                    "message": f"policy rejected; the last good policy stays in force: {exc}"}
        old, self.policy = self.policy, new
        changed = changed_keys(old, new)
        central_note = (f"; central policy rejected, its last good copy stays in force: {self.central['error']}"
                        if self.central.get("state") == "rejected" else "")
        before, after = effective_config(self.base, old), effective_config(self.base, new)
        applied = [k for k in changed if k.startswith("offline_files.")
                   and k not in NOT_ENFORCED_KEYS | RESTART_OFFLINE_KEYS]
        roaming = [k for k in changed if k.startswith("roaming_profile.") and k not in RESTART_ROAMING_KEYS]
        device = [k for k in changed if k.startswith("device.") and k not in RESTART_DEVICE_KEYS]
        if self.on_device is not None:
            self.on_device(after.device)  # a wipe or a compliance rule: at every fetch, changed or not
            applied += device
        if roaming and self.profile is not None:
            self.profile(new)  # the profile's settings (schedule, include, patterns) change live
            applied += roaming
        restart = [k for k in changed if (not k.startswith("offline_files.") or k in RESTART_OFFLINE_KEYS)
                   and k not in applied]
        not_enforced = [k for k in changed if k in NOT_ENFORCED_KEYS]
        if (after.offline, after.offline_per_path) != (before.offline, before.offline_per_path):
            for folder in after.folders:
                if folder.name in self.policies:
                    self.policies[folder.name] = after.offline_for(folder)
            if self.monitor is not None:
                self.monitor.apply_policies()
        if self.cache is not None and (after.cache_limit_bytes, after.cache_limit_fraction) != (
                before.cache_limit_bytes, before.cache_limit_fraction):
            self.cache.residency.limit_bytes = cache_limit_bytes(after)
        if self.cache is not None:
            self.cache.residency.max_file_bytes = after.max_file_size_bytes
        if not changed:
            message = "policy reloaded: nothing changed"
        else:
            parts = [f"policy reloaded: {len(changed)} key(s) changed"]
            if applied:
                parts.append(f"applied now: {', '.join(applied)}")
            if restart:
                parts.append(f"restart cscd to apply (systemctl --user restart cscd): {', '.join(restart)}")
            if not_enforced:
                parts.append(f"not enforced yet: {', '.join(not_enforced)}")
            message = "; ".join(parts)
        message += central_note
        log.info("%s: %s", source, message)
        emit(EventId.RELOADED, result=message, source=source)
        return {"reloaded": True, "changed": changed, "applied": applied, "restart_needed": restart,
                "not_enforced": not_enforced, "message": message}

    def show(self) -> dict[str, Any]:
        """The answer of ``cscd policy show``: every key, its value and where it came from."""
        p = self.policy
        return {
            "user": p.subject.user, "host": p.subject.host, "groups": list(p.subject.groups),
            "policy_dir": None if self.base.policy_dir is None else str(self.base.policy_dir),
            "files": [str(f) for f in p.files],
            "is_primary_computer": p.is_primary_computer(),
            "rows": [{"key": r.key, "value": r.value, "origin": self._origin(r.origin)} for r in policy_rows(p)],
            "central": self.central,
        }

    def _origin(self, origin: str) -> str:
        """``file:line``, marked ``central`` with its source for a file of the central copy."""
        copy = str(central_dir(self.base)) + os.sep
        if self.central.get("source") and origin.startswith(copy):
            return f"{origin} (central: {self.central['source']})"
        return origin


#: How long a start or reload waits for the central policy source before using the last copy.
CENTRAL_TIMEOUT_S = 10.0


def central_dir(base: DaemonConfig) -> Path:
    """Where the local, read-only copy of the central policy lives (per user, in the cache)."""
    return base.central_copy_dir


async def refresh_central_copy(base: DaemonConfig) -> dict[str, Any]:
    """Bring the local copy of the central policy up to date, if the local files name a source.

    Waits on the network, at most ``CENTRAL_TIMEOUT_S``. Never raises: invalid local files
    are left for ``PolicyKeeper.read`` to report; a source that cannot be reached (or holds a
    file too big to be a policy) is logged (WARNING) and the last copy stays. Returns what
    happened, for ``cscd policy show``.
    """
    if base.policy_dir is None:
        return {}
    try:
        local = load_policy(PolicyKeeper.subject(base), base.policy_dir)
    except ConfigError:
        return {}
    if local.central_source is None:
        return {}
    config, where = effective_config(base, local), central_dir(base)
    state: dict[str, Any] = {"source": str(local.central_source), "copy": str(where)}
    try:
        up = open_upstream(local.central_source,
                           config.server_settings(offload=False, timeout_s=CENTRAL_TIMEOUT_S / 2))
        try:
            with trio.fail_after(CENTRAL_TIMEOUT_S):
                done = await copy_central_policy(up, b"", where)
        finally:
            with trio.move_on_after(1, shield=True):
                await up.close()
    except CentralPolicyRejected as exc:
        last = (where / MANIFEST).exists()
        log.warning("central policy rejected; %s: %s", "its last good copy stays in force" if last
                    else "no good copy yet: only the local policy applies", exc)
        emit(EventId.POLICY_REJECTED, source=f"central {local.central_source}", **located_fields(str(exc)))
        return dict(state, state="rejected", error=str(exc), last_copy=last)
    except (CscdError, OSError, trio.TooSlowError) as exc:
        last = (where / MANIFEST).exists()
        log.warning("central policy %s: not copied (%s); %s", local.central_source, exc or "no answer in time",
                    "the last copy stays in force" if last else "no copy yet: only the local policy applies")
        return dict(state, state="unreachable", error=str(exc) or "no answer in time", last_copy=last)
    log.info("central policy %s: %s", local.central_source,
             f"copied {', '.join(done.copied)}" if done.copied or done.removed else "unchanged")
    return dict(state, state="copied" if done.copied or done.removed else "unchanged",
                copied=list(done.copied), removed=list(done.removed), unchanged=list(done.unchanged))

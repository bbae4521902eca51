"""The roaming profile as the policy asks for it: ``ProfileSettings`` from ``roaming_profile.*``
(and the Offline Files keys the profile shares), the server folder's upstream, the service.

Separate from ``settings.py`` because it reads files (``redirections.xml``, credentials) and
knows the policy's shape; ``settings.py`` stays pure. The daemon passes the local paths that must never
roam — the mount point, the cache directory, the redirected folders' local places — because
only it knows them: a roaming profile that walked into the mount would upload the redirected
folders a second time.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from cscd.errors import ConfigError, Exists, NotFound
from cscd.policy.central import FSLOGIX_FILE
from cscd.policy.config import DaemonConfig
from cscd.policy.fslogix import ProfileExclusions, load_redirections_xml
from cscd.policy.model import CENTRAL, SUPER_MANDATORY, Policy
from cscd.profile.service import ProfileService
from cscd.profile.settings import DEFAULT_EXCLUDE_PATTERNS, ProfileSettings
from cscd.types import Mode, UncTarget
from cscd.upstream import open_upstream
from cscd.upstream.base import Upstream

log = logging.getLogger(__name__)


def profile_settings(policy: Policy, *, exclude_paths: Iterable[Path] = (),
                     state_path: Path | None = None, central_copy: Path | None = None) -> ProfileSettings:
    """The roaming profile's settings for ``policy``; raises ``ConfigError`` (file and line)
    when the ``redirections.xml`` the policy names cannot be read or parsed.

    ``central_copy``: the local copy of the central source (``DaemonConfig.central_copy_dir``),
    where ``redirections_xml: central`` is read from; a copy without the file (the server has
    none, or could not be reached yet) means no FSLogix exclusions, with a warning.
    """
    r = policy.roaming_profile
    upload = r.background_upload
    exclusions = ProfileExclusions()
    if r.redirections_xml == CENTRAL:
        where = policy.origin("roaming_profile.redirections_xml")
        if policy.central_source is None or central_copy is None:
            raise ConfigError(f"{where}: roaming_profile.redirections_xml: 'central' reads the central "
                              "source's copy, but no central_source is set")
        path = central_copy / FSLOGIX_FILE
        if path.is_file():
            exclusions = load_redirections_xml(path)
        else:
            log.warning("roaming profile: %s has no %s yet (from %s); no FSLogix exclusions apply",
                        central_copy, FSLOGIX_FILE, policy.central_source)
    elif r.redirections_xml is not None:
        exclusions = load_redirections_xml(Path(r.redirections_xml))
    at = None
    if upload.time_of_day is not None:
        hours, minutes = upload.time_of_day.split(":")
        at = datetime.time(int(hours), int(minutes))
    return ProfileSettings(
        include=r.include,
        include_dotfiles=r.include_dotfiles,
        # The built-in patterns protect cscd's own state and per-machine data: always kept.
        exclude_patterns=DEFAULT_EXCLUDE_PATTERNS + tuple(
            p for p in r.exclude_patterns if p not in DEFAULT_EXCLUDE_PATTERNS),
        exclusions=exclusions,
        exclude_paths=tuple(Path(p) for p in exclude_paths),
        state_path=state_path,
        max_file_size_bytes=r.max_file_size_bytes,
        upload_interval_s=None if upload.interval_hours is None else upload.interval_hours * 3600.0,
        upload_time_of_day=at,
        upload_max_offset_s=upload.max_offset_min * 60.0,
        upload_on_slow_link=False,
        upload_on_metered=policy.offline_files.sync_on_metered
        or not policy.offline_files.cost_aware_sync,
        host=policy.subject.short_host or None,
        mandatory=r.is_mandatory,
        super_mandatory=r.effective_kind == SUPER_MANDATORY,
    )


def profile_service(config: DaemonConfig, policy: Policy, *, exclude_paths: Iterable[Path],
                    mode: Callable[[], Mode]) -> ProfileService | None:
    """The daemon's roaming profile, or None when the policy has none for this user here
    (no ``roaming_profile.target``, ``enabled: false``, or not a primary computer).

    Builds only; connects nothing (a laptop away from the office starts without its server).
    Uses the folders' credentials and SMB security, like Windows uses the user's logon.
    """
    if not policy.roams():
        return None
    target = policy.roaming_profile.target
    assert target is not None
    server = config.server_settings(offload=False)

    def connect_to(where: UncTarget) -> Upstream:
        return open_upstream(where, server)

    upstream = connect_to(target)
    settings = profile_settings(policy, exclude_paths=exclude_paths, central_copy=config.central_copy_dir)
    return ProfileService(upstream, config.home_dir, settings, mode=mode,
                          prepare=lambda: ensure_server_folder(upstream, connect_to))


async def ensure_server_folder(upstream: Upstream, connect_to: Callable[[UncTarget], Upstream]
                               ) -> None:
    """Connect, creating the user's profile folder on the server the first time (Windows
    creates it at the first logoff, in a share where users may create their own folder)."""
    target = upstream.target  # type: ignore[attr-defined]
    try:
        await upstream.connect()
        return
    except NotFound:
        if not target.path:
            raise
    parent = connect_to(replace(target, path=target.path[:-1]))
    try:
        await parent.connect()
        try:
            await parent.mkdir(target.path[-1].encode())
        except Exists:
            pass  # made meanwhile by another machine of the same user
        log.info("created the roaming profile folder %s", target)
    finally:
        await parent.close()
    await upstream.connect()

"""The server side: one small ``Upstream`` protocol and its implementations.

``base.py`` defines the protocol and ``RemoteEntry``; ``smb.py`` talks SMB2/3 through
smbprotocol; ``local.py`` serves a plain directory with the same semantics. Nothing here
touches LMDB or the cache; every blocking call runs in a worker thread with a deadline.
``open_upstream`` is the one place an upstream is built from a target and its settings.
"""

from __future__ import annotations

from pathlib import Path

from cscd.errors import ConfigError
from cscd.types import ServerSettings, UncTarget
from cscd.upstream.base import Upstream


def open_upstream(target: UncTarget | Path, settings: ServerSettings) -> Upstream:
    """The upstream for ``target``: a ``LocalUpstream`` for a directory, an ``SmbUpstream`` for
    a UNC path (its bulk transfers in worker processes with ``settings.offload``). Connects
    nothing yet. Raises ``ConfigError`` naming the setting when an SMB target has no
    credentials."""
    if isinstance(target, Path):
        from cscd.upstream.local import LocalUpstream

        return LocalUpstream(target, timeout_s=settings.timeout_s)
    if settings.credentials is None:
        raise ConfigError(f"{settings.credentials_origin}: missing; {target} (an SMB folder) needs "
                          "a credentials file or a Kerberos ticket")
    from cscd.upstream.smb import SmbUpstream

    if settings.offload:
        # Bulk transfers in worker processes: smbprotocol's signing and copying would hold
        # the GIL the FUSE loop needs (see upstream/offload.py).
        from cscd.upstream.offload import OffloadedUpstream

        return OffloadedUpstream(target, settings)
    return SmbUpstream(target, settings.credentials, port=settings.port, security=settings.security,
                       timeout_s=settings.timeout_s)

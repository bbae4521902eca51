"""An ``SmbUpstream`` on the private smbd, the way the tests that talk to the upstream directly
make one: the embedded server's user and port, a folder below its share."""

from __future__ import annotations

from cscd.samba import EmbeddedSamba
from cscd.types import Credentials, UncTarget
from cscd.upstream.smb import SmbUpstream


def smb_upstream(
    server: EmbeddedSamba, *path: str, password: str | None = None, timeout_s: float = 10.0
) -> SmbUpstream:
    return SmbUpstream(
        UncTarget(server.host, server.share, tuple(path)),
        Credentials(server.username, server.password if password is None else password),
        port=server.port,
        timeout_s=timeout_s,
    )

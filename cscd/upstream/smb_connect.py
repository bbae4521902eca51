"""Opening one SMB link for ``SmbUpstream``: which logon, which server, which share.

Owns ``LinkOpener``: builds ``SmbLink`` objects with the upstream's logon and settings, opens
them in a worker thread, falls back from Kerberos to NTLM where the configuration allows it
(``credentials: [kerberos, ...]``: only on a missing or refused ticket, logged once), and
walks a DFS namespace to the share serving the target (``dfs.open_route``), refusing referral
targets that are not host names or that the security policy does not list. Blocking: every
method but the constructor runs in the upstream's worker thread. Never touches LMDB.
"""

from __future__ import annotations

import fnmatch
import logging

from cscd.errors import BadName, CscdError, TicketMissing
from cscd.names import check_server_name
from cscd.types import KerberosLogon, Logon, SmbSecurity, UncTarget
from cscd.upstream import dfs
from cscd.upstream.ratelimit import RateLimit
from cscd.upstream.smb_errors import translate
from cscd.upstream.smb_wire import Call, SmbLink, Stats

log = logging.getLogger(__name__)


class LinkOpener:
    """The link-making half of one ``SmbUpstream`` (its logon, port, security, counters)."""

    def __init__(self, credentials: Logon, *, port: int, security: SmbSecurity, stats: Stats,
                 rate_limit: RateLimit, referrals: dfs.ReferralCache) -> None:
        self._credentials = credentials
        self.port = port  # the upstream sets it again before each connect
        self._security = security
        self._stats = stats
        self._rate_limit = rate_limit
        self._referrals = referrals
        #: the session of the link given up last, named by the next logon (``SmbLink``)
        self.previous_session_id = 0
        self._said_fallback = False

    def new_link(self, server: str, share: str, *, logon: Logon | None = None) -> SmbLink:
        """An unopened link to ``\\\\server\\share`` with the upstream's logon (or ``logon``)."""
        logon = logon or self._credentials
        if isinstance(logon, KerberosLogon):
            who = {"username": logon.principal, "password": "", "domain": "", "kerberos": True}
        else:
            who = {"username": logon.username, "password": logon.password, "domain": logon.domain}
        link = SmbLink(
            host=server,
            port=self.port,
            share=share,
            require_encryption=self._security.require_encryption,
            stats=self._stats,
            **who,
        )
        link.rate_limit = self._rate_limit
        link.previous_session_id = self.previous_session_id
        return link

    def open_route(self, connector: dfs.Connector, call: Call, target: UncTarget) -> tuple[SmbLink, UncTarget]:
        """Open a link to the share serving ``target``, through DFS referrals where it is in a
        namespace; (the link, the ``\\\\server\\share\\path`` serving it). Raises
        ``cscd.errors`` (already translated)."""

        def start(link: object) -> SmbLink:
            assert isinstance(link, SmbLink)
            return self._open(connector, link, call)

        connector.start = start

        def ask(link: object, components: tuple[str, ...]) -> dfs.Referral | None:
            try:
                return dfs.ask_referral(link, call, components, self.check_referral_server)
            except CscdError:
                raise
            except BaseException as exc:
                raise translate(exc, server=components[0], where="\\\\" + "\\".join(components)) from exc

        link, serving = dfs.open_route(target, self._referrals, connector, ask, touch=call.touch)
        assert isinstance(link, SmbLink)
        return link, serving

    def _open(self, connector: dfs.Connector, link: SmbLink, call: Call) -> SmbLink:
        """Open ``link``; on a missing ticket with an NTLM fallback, open one with that instead."""
        server = link.host
        label = server if self.port == 445 else f"{server} (port {self.port})"
        fallback = getattr(self._credentials, "fallback", None)
        try:
            link.open(call)
            return link
        except TicketMissing as exc:
            if fallback is None:
                raise
            reason = exc
        except BaseException as exc:
            raise translate(exc, server=label, where=link.share_unc) from exc
        ntlm = self.new_link(server, link.share_unc.rsplit("\\", 1)[-1], logon=fallback)
        connector.current = ntlm  # the watchdog must reach the link that blocks now
        try:
            ntlm.open(call)
        except BaseException as exc:
            raise translate(exc, server=label, where=link.share_unc) from exc
        if not self._said_fallback:
            self._said_fallback = True
            log.info("no Kerberos logon to %s (%s); logged on with NTLM as %s instead "
                     "(credentials: [kerberos, file])", label, reason, fallback.username)
        return ntlm

    def check_referral_server(self, server: str) -> None:
        """A referral's target server must be a host name (never a path trick) and, where the
        security policy lists DFS servers, one of them: NTLM would answer any server's
        challenge, so a namespace must not send the logon just anywhere."""
        try:
            check_server_name(server)
        except BadName as exc:
            raise dfs.DfsError(f"{server!r} cannot be a server name ({exc})") from None
        allowed = self._security.dfs_servers
        if allowed and not any(fnmatch.fnmatch(server.casefold(), p.casefold()) for p in allowed):
            raise dfs.DfsError(f"{server} is not among the DFS servers the security policy allows "
                               f"(security.dfs_servers: {', '.join(allowed)})")

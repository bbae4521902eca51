r"""``SmbUpstream``: the ``Upstream`` protocol over SMB 3 with smbprotocol's low-level API.

Owns the one SMB connection of a folder target (``\\server\share\path``): connecting and
reconnecting, the per-connection thread limiter, deadlines, path validation and error
translation. The request sequences live in ``smb_ops``, the wire plumbing in ``smb_wire``,
the NTSTATUS table in ``smb_errors``, what a listing shows in ``smb_listing``, an upload's
steps around its transfer in ``smb_upload``. Never touches LMDB or the cache.

Threads and deadlines: every call runs in ``trio.to_thread.run_sync(..., limiter=...)`` with
one ``CapacityLimiter`` per connection. Two deadlines guard each call:

1. in the thread, every request waits at most ``timeout_s`` for its reply (progress based:
   a transfer that keeps moving never times out, a request without an answer does);
   session setup is guarded by a timer, sends by ``SO_SNDTIMEO``;
2. on the trio side a watchdog (the ``trio.fail_after`` of this module, but extended while
   the call makes progress) gives up ``GRACE_S`` later, tears the connection down — shutting
   the socket down first, so a stuck thread fails within milliseconds — and raises
   ``UpstreamTimeout``.

A timed-out or lost connection is dropped; the next call reconnects lazily. While the server
is down a call fails fast (a refused connect takes well under a millisecond); callers that
queued behind a failing connect share its error instead of each waiting out a timeout.

Cancellation: the trio side returns at once (``abandon_on_cancel=True``); the thread stops at
its next request and an upload never renames after its caller went away.

Logon: NTLM with a user name and password, or Kerberos with the user's ticket
(``KerberosLogon``), for the service principal ``cifs/<server as the target names it>``.
DFS: a target in a namespace (``\\\\domain\\root\\link`` or ``\\\\server\\root\\link``) is
followed to the share serving it at each connect (``dfs``; ``serving`` names it), and a target
that stops answering is passed over for the next one in the referral, so a reconnect is a
failover. Not supported: multichannel, durable handles. Signing is always
required (``SmbSecurity.require_signing=False`` is ignored: Samba refuses the tree connect of
SMB 3.1.1 without it, FACTS.md); encryption follows ``SmbSecurity.require_encryption``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

import trio

from cscd.errors import BadName, CscdError, NotDir, NotFound, Unsupported, UpstreamTimeout
from cscd.names import server_name
from cscd.sealed_files import Source
from cscd.types import KerberosLogon, Logon, SmbSecurity, UncTarget
from cscd.upstream import dfs, smb_delta, smb_move, smb_upload
from cscd.upstream import smb_ops as ops
from cscd.upstream import smb_transfer as transfer
from cscd.upstream.base import Extent, LinkActivity, RemoteEntry, UpstreamStatistics, check_plan
from cscd.upstream.ratelimit import RateLimit
from cscd.upstream.smb_connect import LinkOpener
from cscd.upstream.smb_errors import (
    LINK_LOST,
    Abandoned,
    breaks_link,
    status_of,
    translate,
)
from cscd.upstream.smb_listing import SmbListings
from cscd.upstream.smb_messages import Attrs
from cscd.upstream.smb_upload import entry_of
from cscd.upstream.smb_watch import SmbWatch, SmbWatches, open_watch
from cscd.upstream.smb_wire import Call, SmbLink, Stats
from cscd.xattrs import ServerEas, canonical

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How much later than the in-thread deadline the trio-side watchdog gives up.
GRACE_S = 1.5


class SmbUpstream:
    """A folder on an SMB server (``Upstream`` protocol); one TCP connection, reconnected on demand.

    Beyond the protocol: ``target``, ``port``, ``is_encrypted`` (the live session encrypts),
    ``is_connected``.
    """

    def __init__(
        self,
        target: UncTarget,
        credentials: Logon,
        *,
        port: int = 445,
        security: SmbSecurity = SmbSecurity(),  # noqa: B008 - frozen dataclass
        timeout_s: float = 10.0,
        max_threads: int = 8,
        referrals: dfs.ReferralCache | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.target = target
        #: the share and folder serving ``target`` now: ``target`` itself, or where its DFS
        #: namespace refers (set at each connect; another after a failover)
        self.serving = target
        self.port = port
        self.description = str(target)
        self._server = target.server if port == 445 else f"{target.server} (port {port})"
        self._credentials = credentials
        self._security = security
        self._timeout_s = timeout_s
        self._limiter = trio.CapacityLimiter(max_threads)
        self._stats = Stats()
        self._link: SmbLink | None = None
        #: the session of the last link given up; the next logon names it so that the server
        #: drops it with its handles even if it never saw the connection die (smb_wire)
        self._last_session_id = 0
        self._connect_lock = trio.Lock()
        self._connect_failure: tuple[float, CscdError] | None = None
        self._leftovers: set[str] = set()
        self._copy_state = smb_delta.CopyState()
        self._trees: dict[str, tuple[SmbLink, object]] = {}  # other shares on this session
        self._watches = SmbWatches()
        self._listings = SmbListings(self._run, self.description, lambda: self._spath(b"")[0], self._leftovers)
        #: the upload bandwidth cap; ``set_upload_rate`` changes it, even mid-transfer
        self.upload_rate = RateLimit(None)
        self._opener = LinkOpener(credentials, port=port, security=security, stats=self._stats,
                                  rate_limit=self.upload_rate,
                                  referrals=referrals if referrals is not None else _REFERRALS)

    def set_upload_rate(self, bytes_per_s: float | None) -> None:
        """Cap uploads at ``bytes_per_s`` (None: no cap); applies to transfers in flight."""
        self.upload_rate.set(bytes_per_s)

    def __repr__(self) -> str:
        user = getattr(self._credentials, "username", None) or str(self._credentials)
        return f"SmbUpstream({self.description!r}, port={self.port}, user={user!r})"

    # -- properties beyond the protocol ---------------------------------------------------------

    @property
    def clock_offset_s(self) -> float | None:
        """The server's clock minus this machine's, as the last connect measured it."""
        link = self._link
        conn = getattr(link, "conn", None) if link is not None else None
        return getattr(conn, "clock_offset_s", None)

    @property
    def is_connected(self) -> bool:
        return self._link is not None and self._link.alive

    @property
    def is_encrypted(self) -> bool:
        """True while the live session encrypts every message (False when not connected)."""
        return self.is_connected and bool(self._link and self._link.encrypted)

    def link_activity(self) -> LinkActivity:
        s = self._stats
        idle = time.monotonic() - s.last_reply if s.last_reply else math.inf
        return LinkActivity(s.take_fastest_rtt(), idle)

    def statistics(self) -> UpstreamStatistics:
        s = self._stats
        return UpstreamStatistics(
            s.bytes_read, s.bytes_written, s.requests, self.is_connected, s.bytes_copied
        )

    # -- connection -----------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect (or reconnect) and check that the target is an existing folder.

        Raises ``UpstreamUnavailable``/``UpstreamTimeout``, ``AccessDenied`` (credentials or
        rights), ``NotFound`` (no such share or folder), ``NotDir`` (the target is a file).
        """
        link, _ = await self._ensure_link(self._timeout_s)
        spath, where = self._spath(b"")
        try:
            attrs, _fid = await self._in_thread(link, self._timeout_s, where, ops.stat, spath)
        except NotFound:
            raise NotFound(f"the folder {where} does not exist on the server") from None
        if not attrs.is_dir:
            raise NotDir(f"{where} is a file, not a folder")
        log.info("connected to %s (encrypted: %s)", self.description, link.encrypted)

    async def close(self) -> None:
        """Drop the connection; never raises, never waits longer than the timeout."""
        link, self._link = self._link, None
        if link is None:
            return
        self._last_session_id = link.session_id or self._last_session_id
        link.teardown()
        with trio.move_on_after(self._timeout_s):
            await trio.to_thread.run_sync(link.close, abandon_on_cancel=True)

    async def _ensure_link(self, timeout_s: float) -> tuple[SmbLink, bool]:
        """The live link, connecting first if needed; second value: True if it already existed."""
        asked_at = time.monotonic()
        async with self._connect_lock:
            link = self._link
            if link is not None and link.alive:
                return link, True
            failure = self._connect_failure
            if failure is not None and failure[0] >= asked_at:
                # We queued behind a connect that just failed: share its verdict.
                err = failure[1]
                raise type(err)(str(err))
            if link is not None:
                self._last_session_id = link.session_id or self._last_session_id
                link.teardown()
                self._link = None
            opener = self._opener
            opener.previous_session_id = self._last_session_id
            opener.port = self.port
            connector = dfs.Connector(opener.new_link)
            try:
                new, serving = await self._in_thread(connector, timeout_s, self._share_unc,
                                                     opener.open_route, self.target)
            except CscdError as exc:
                self._connect_failure = (time.monotonic(), exc)
                log.info("cannot connect to %s: %s", self.description, exc)
                raise
            if serving != self.serving:
                if self.serving != self.target or serving != self.target:
                    log.info("%s is served by %s", self.target, serving)
                self.serving = serving
                self._trees.clear()
            self._connect_failure = None
            self._link = new
            log.debug("connection to %s is up", self.description)
            return new, False

    @property
    def _share_unc(self) -> str:
        return f"\\\\{self.serving.server}\\{self.serving.share}"

    async def _run(
        self,
        where: str,
        fn: Callable[..., T],
        *args: object,
        timeout_s: float | None = None,
        idempotent: bool = False,
    ) -> T:
        """Run ``fn(link, call, *args)`` in a worker thread on a live link (see module doc)."""
        t = timeout_s if timeout_s is not None else self._timeout_s
        link, reused = await self._ensure_link(t)
        try:
            return await self._in_thread(link, t, where, fn, *args)
        except CscdError as exc:
            if not (
                idempotent and reused and breaks_link(exc) and not isinstance(exc, UpstreamTimeout)
            ):
                raise
            # A connection from before a server restart fails on first use: one fresh try.
            log.debug("retrying on a new connection after: %s", exc)
        link, _ = await self._ensure_link(t)
        return await self._in_thread(link, t, where, fn, *args)

    async def _in_thread(
        self, link: SmbLink, timeout_s: float, where: str, fn: Callable[..., T], *args: object
    ) -> T:
        call = Call(timeout_s)
        started = False
        server = self._server

        def work() -> T:
            nonlocal started
            started = True
            call.touch()
            try:
                return fn(link, call, *args)
            except Abandoned:
                raise  # nobody waits for this result; the link is fine
            except BaseException as exc:
                err = translate(exc, server=server, where=where)
                if breaks_link(err) or status_of(exc) in LINK_LOST:
                    link.teardown()
                if err is exc:
                    raise
                raise err from exc

        expired = False
        scope = trio.CancelScope()

        async def watchdog() -> None:
            nonlocal expired
            while True:
                if not started:
                    # Waiting for a thread token is not the server's fault.
                    await trio.sleep(0.05)
                    continue
                left = call.stamp + timeout_s + GRACE_S - time.monotonic()
                if left <= 0:
                    expired = True
                    call.abandoned = True
                    link.teardown()  # wakes the thread
                    scope.cancel()
                    return
                await trio.sleep(left)

        done = False
        error: Exception | None = None
        result: T | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watchdog, name="upstream.smb.watchdog")
                with scope:
                    # Errors are caught here, inside the nursery body, so that they reach the
                    # caller as themselves rather than wrapped in an ExceptionGroup.
                    try:
                        result = await trio.to_thread.run_sync(
                            work, limiter=self._limiter, abandon_on_cancel=True
                        )
                        done = True
                    except Exception as exc:  # noqa: BLE001 - re-raised below
                        error = exc
                        done = True
                nursery.cancel_scope.cancel()
        finally:
            if not done:
                call.abandoned = True  # the thread stops at its next request
        if error is not None:
            raise error
        if expired or not done:
            if link.logging_on and isinstance(self._credentials, KerberosLogon):
                # Most likely the KDC, not the file server: the service ticket is asked for
                # in the middle of the logon.
                raise UpstreamTimeout(
                    f"the Kerberos logon to {self._server} did not finish within {timeout_s:g} s: "
                    "is a KDC of the realm reachable (krb5.conf, DNS)?"
                )
            raise UpstreamTimeout(
                f"{self._server} did not answer within {timeout_s:g} s while working on {where}; "
                "the connection was dropped"
            )
        return result  # type: ignore[return-value]

    # -- paths ----------------------------------------------------------------------------------

    def _spath(self, path: bytes) -> tuple[str, str]:
        """(path from the share root with backslashes, UNC path for messages); checks names and
        maps what SMB cannot store into their server forms (``cscd.names.server_name``)."""
        serving = self.serving
        comps = list(serving.path)
        if path:
            comps += [server_name(c) for c in path.split(b"/")]
        return "\\".join(comps), str(UncTarget(serving.server, serving.share, tuple(comps)))

    @staticmethod
    def _leaf(path: bytes) -> bytes:
        return path.rsplit(b"/", 1)[-1]

    # -- the protocol ---------------------------------------------------------------------------

    async def probe(self, *, light: bool = False) -> float:
        """One CREATE+CLOSE round trip on the target folder, or with ``light`` one ECHO;
        seconds (connect time not included). Either is one frame on the wire."""
        spath, where = self._spath(b"")

        def timed(link: SmbLink, call: Call) -> float:
            t0 = time.perf_counter()
            if light:
                ops.echo(link, call)
            else:
                ops.probe(link, call, spath)
            return time.perf_counter() - t0

        return await self._run(where, timed, idempotent=True)

    async def stat(self, path: bytes) -> RemoteEntry:
        spath, where = self._spath(path)
        attrs, fid = await self._run(where, ops.stat, spath, idempotent=True)
        return entry_of(self._leaf(path), attrs, fid)

    async def list_dir(self, path: bytes) -> list[RemoteEntry]:
        """All entries of a folder from one enumeration (ids, sizes, times; no content read);
        what is left out and why: ``smb_listing``."""
        out: list[RemoteEntry] = []

        async def keep(entries: list[RemoteEntry]) -> None:
            out.extend(entries)

        await self.list_dir_in_pages(path, keep)
        return out

    async def list_dir_in_pages(self, path: bytes,
                                on_page: Callable[[list[RemoteEntry]], Awaitable[None]]) -> None:
        """``list_dir``, each batch of a large folder handed to ``on_page`` as it arrives
        (``SmbListings.in_pages``)."""
        spath, where = self._spath(path)
        await self._listings.in_pages(spath, where, on_page)

    async def get_eas(self, path: bytes) -> ServerEas:
        spath, where = self._spath(path)
        return canonical(dict(await self._run(where, ops.get_eas, spath, idempotent=True)))

    async def set_eas(self, path: bytes, eas: Mapping[bytes, bytes], *, fresh: bool = False) -> None:
        """Make ``eas`` the whole EA set of ``path`` (the ones it lacks are removed)."""
        eas = {n: v for n, v in eas.items() if v}
        if fresh and not eas:
            return  # a new file has none
        spath, where = self._spath(path)
        if await self._listings.eas_supported(where):
            await self._run(where, ops.set_eas, spath, eas, fresh, idempotent=True)

    async def space(self) -> tuple[int, int]:
        spath, where = self._spath(b"")
        return await self._run(where, ops.space, spath, idempotent=True)

    async def read(
        self, path: bytes, offset: int, length: int, *, timeout_s: float | None = None
    ) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        spath, where = self._spath(path)
        return await self._run(
            where, transfer.read, spath, offset, length, timeout_s=timeout_s, idempotent=True
        )

    async def upload(
        self,
        path: bytes,
        fd: Source,
        size: int,
        mtime_ns: int,
        *,
        expected: RemoteEntry | None = None,
        replace: bool = True,
    ) -> RemoteEntry:
        """Write a temporary, set its write time, check ``expected``, rename it over ``path``.

        Raises ``Conflict`` if the target is not ``expected`` (or, with ``expected=None`` and
        ``replace=False``, if it exists). A cancelled or failed upload deletes its temporary
        when the link allows; otherwise a later upload (or listing) finds and deletes it.
        """
        return await self._conditional_upload(path, fd, size, mtime_ns, None, expected, replace, transfer.upload)

    async def upload_delta(
        self,
        path: bytes,
        fd: Source,
        size: int,
        mtime_ns: int,
        *,
        plan: Sequence[Extent],
        expected: RemoteEntry | None,
        replace: bool = True,
        resume_token: str | None = None,
    ) -> RemoteEntry:
        """Build the new file on the server from copies of the base and writes (see
        ``smb_delta``), then rename it over ``path`` if the target is still ``expected``.

        Raises ``Conflict`` (before anything is copied, or before the rename) as ``upload``
        does; ``ValueError`` for a plan that does not cover ``[0, size)``. Counts copied
        bytes in ``statistics().bytes_copied``, sent ones in ``bytes_written``.
        """
        check_plan(plan, size)
        send = functools.partial(smb_delta.upload_delta, extents=plan, resume=resume_token is not None,
                                 copy_state=self._copy_state)
        return await self._conditional_upload(path, fd, size, mtime_ns, resume_token, expected, replace, send)

    async def _conditional_upload(self, path: bytes, fd: Source, size: int, mtime_ns: int, resume_token: str | None,
                                  expected: RemoteEntry | None, replace: bool,
                                  send: Callable[..., tuple[Attrs, int]]) -> RemoteEntry:
        """The part ``upload`` and ``upload_delta`` share: a temporary name, the check against
        ``expected``, the rename over ``path``; ``send`` fills the temporary."""
        if not path:
            raise BadName("cannot upload over the target folder itself")
        spath, where = self._spath(path)
        name = self._leaf(path)
        work = functools.partial(
            smb_upload.conditional_upload, spath=spath, where=where, temp=smb_upload.temp_spath(spath, resume_token),
            fd=fd, size=size, mtime_ns=mtime_ns, expected=expected, replace=replace, send=send,
            verify=smb_upload.verifier(spath, where, name, expected, replace), leftovers=self._leftovers)

        attrs, fid = await self._run(where, work)
        return entry_of(name, attrs, fid)

    @contextlib.asynccontextmanager
    async def watch(self, path: bytes, *, tree: bool = True) -> AsyncIterator[SmbWatch]:
        """Watch the folder ``path`` (and with ``tree`` its subtree) with CHANGE_NOTIFY (see
        ``smb_watch``); costs the server one open handle and no requests while nothing changes.

        Opening the folder is an ordinary call (``NotFound``, ``UpstreamUnavailable``...).
        The handle is closed on exit, also on cancellation, and early by a ``rename`` of a
        folder above it (the iterator then stops).
        """
        spath, where = self._spath(path)

        async def open_one() -> SmbWatch:
            link, file_id, request = await self._run(
                where, functools.partial(open_watch, tree=tree), spath, idempotent=True
            )
            return SmbWatch(link, file_id, request, tree=tree, spath=spath, where=where, server=self._server,
                            timeout_s=self._timeout_s, run=self._run)

        async with self._watches.opened(open_one) as watcher:
            yield watcher

    async def mkdir(self, path: bytes) -> RemoteEntry:
        if not path:
            raise BadName("the target folder itself cannot be created again")
        spath, where = self._spath(path)
        attrs, fid = await self._run(where, ops.mkdir, spath)
        return entry_of(self._leaf(path), attrs, fid)

    async def delete(self, path: bytes, *, is_dir: bool) -> None:
        if not path:
            raise BadName("cscd never deletes the target folder itself")
        spath, where = self._spath(path)
        if not is_dir:
            await self._run(where, functools.partial(ops.delete, is_dir=False), spath)
            return
        # Our own watch on the folder would keep its delete pending (DELETE_PENDING: it stays
        # in its parent's listings until that handle closes, and came back here as a new
        # folder from such a listing, rsync --delete of a renamed folder showed).
        async with self._watches.none_below(spath):
            await self._run(where, functools.partial(ops.delete, is_dir=True), spath)

    async def rename(self, old: bytes, new: bytes, *, replace: bool = False) -> RemoteEntry:
        if not old or not new:
            raise BadName("the target folder itself cannot be renamed")
        old_spath, where = self._spath(old)
        new_spath, new_where = self._spath(new)
        async with self._watches.none_below(old_spath):
            attrs, fid = await self._run(
                f"{where} → {new_where}",
                functools.partial(ops.rename, replace=replace),
                old_spath,
                new_spath,
            )
        return entry_of(self._leaf(new), attrs, fid)

    async def set_mtime(self, path: bytes, mtime_ns: int) -> RemoteEntry:
        spath, where = self._spath(path)
        attrs, fid = await self._run(where, ops.set_mtime, spath, mtime_ns)
        return entry_of(self._leaf(path), attrs, fid)

    # -- moving the target folder (issue 6) ---------------------------------------------------

    async def make_target(self) -> None:
        """Create the target folder and its missing parents (``mkdir -p``); fine if it exists."""
        await self._ensure_link(self._timeout_s)  # a DFS target says which share it is on
        comps = tuple(self.serving.path)
        await self._run(str(self.target), smb_move.make_dirs, comps, None, idempotent=True)

    def _same_server(self, to: object) -> SmbUpstream:
        if not (isinstance(to, SmbUpstream) and to.serving.server.casefold() == self.serving.server.casefold()
                and to.port == self.port and to._credentials == self._credentials):
            raise Unsupported(f"{self.description} and {getattr(to, 'description', to)} are not on one "
                              f"server with one account: no server-side move between them")
        return to

    async def rename_target(self, to: object) -> RemoteEntry:
        """Rename the target folder itself to ``to``'s target (same server and share only,
        else ``Unsupported``): FileIds and content stay. ``Exists`` if the new place holds files."""
        to = self._same_server(to)
        if to.serving.share.casefold() != self.serving.share.casefold():
            raise Unsupported(f"{self.description} and {to.description} are on different shares")
        spath, where = self._spath(b"")
        attrs, fid = await self._run(f"{where} → {to.description}", smb_move.rename_folder, spath,
                                     tuple(to.serving.path))
        return entry_of(b"", attrs, fid)

    async def copy_to(self, path: bytes, to: object) -> RemoteEntry:
        """Copy the file ``path`` to the same path below ``to``'s target with a server-side copy
        (same server; any share), keeping its write time; nothing crosses the client.
        ``Unsupported`` if the server cannot copy, ``Exists`` if the name is taken there."""
        to = self._same_server(to)
        entry = await self.stat(path)
        spath, where = self._spath(path)
        dst_spath, _ = to._spath(path)
        share = to.serving.share
        same_share = share.casefold() == self.serving.share.casefold()

        def work(link: SmbLink, call: Call) -> tuple[Attrs, int]:
            tree = None
            if not same_share:
                known = self._trees.get(share.casefold())
                if known is None or known[0] is not link:
                    known = (link, smb_move.connect_tree(link, call, f"\\\\{self.serving.server}\\{share}"))
                    self._trees[share.casefold()] = known
                tree = known[1]
            return smb_move.copy_file(link, call, spath, tree, dst_spath, entry.size, entry.mtime_ns)

        attrs, fid = await self._run(f"{where} → {to.description}", work)
        return entry_of(self._leaf(path), attrs, fid)

    async def remove_target(self) -> None:
        """Delete the target folder itself once it is empty (``NotEmpty`` otherwise)."""
        spath, where = self._spath(b"")
        await self._run(where, functools.partial(ops.delete, is_dir=True), spath)


#: this process's DFS referral cache, shared by every upstream (as a Windows client's is)
_REFERRALS = dfs.ReferralCache()

"""One SMB connection (TCP + session + tree) and the request plumbing every SMB operation uses.

Owns: the smbprotocol ``Connection``/``Session``/``TreeConnect`` of one ``SmbUpstream``, the
credit budget, deadlines on every request, and tearing a connection down without blocking.
The messages it carries are built and parsed in ``smb_messages``.

Runs in worker threads only; nothing here knows trio. Thread rules: several threads may use
one ``SmbLink`` at once (smbprotocol serialises sends under its socket lock and hands each
reply to the waiting request). ``teardown()`` may be called from any thread, never blocks, and
wakes every thread that waits on this link: it shuts the socket down first, because
``Connection.disconnect()`` can deadlock behind a writer stuck in ``sock.send`` (FACTS.md).
"""

from __future__ import annotations

import datetime
import errno
import logging
import socket
import struct
import threading
import time
import uuid
from collections.abc import Sequence

from smbprotocol.connection import Connection, SMB2Echo
from smbprotocol.exceptions import SMBAuthenticationError, SMBConnectionClosed, SMBResponseException
from smbprotocol.session import Session, SMB2SessionSetupRequest
from smbprotocol.tree import TreeConnect

from cscd.errors import TicketMissing, UpstreamUnavailable
from cscd.upstream.smb_errors import STATUS_LOGON_FAILURE, Abandoned, WireTimeout

log = logging.getLogger(__name__)

#: Credits asked for right after logon, so that pipelined transfers of several threads fit.
CREDITS_WANTED = 1024
_CREDIT_RESERVE = 8  # left for smbprotocol's own keep-alive echo


class Stats:
    """Counters shared by the threads of one upstream; ``bytes_*`` are READ/WRITE payloads,
    ``bytes_copied`` what server-side copies moved (as the server reported it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes_read = 0
        self.bytes_written = 0
        self.bytes_copied = 0
        self.requests = 0
        #: ``time.monotonic()`` of the last reply of any kind, 0.0 before the first
        self.last_reply = 0.0
        #: the fastest round trip of a small request since ``take_fastest_rtt``
        self._fastest_rtt: float | None = None

    def replied(self, rtt_s: float | None) -> None:
        """A reply arrived; ``rtt_s`` is its round trip if the request was a small one."""
        now = time.monotonic()
        with self._lock:
            self.last_reply = now
            if rtt_s is not None and (self._fastest_rtt is None or rtt_s < self._fastest_rtt):
                self._fastest_rtt = rtt_s

    def take_fastest_rtt(self) -> float | None:
        """The fastest small round trip since the last call (``link`` samples traffic with it)."""
        with self._lock:
            rtt, self._fastest_rtt = self._fastest_rtt, None
            return rtt

    def add(self, *, read: int = 0, written: int = 0, copied: int = 0, requests: int = 0) -> None:
        with self._lock:
            self.bytes_read += read
            self.bytes_written += written
            self.bytes_copied += copied
            self.requests += requests


class Call:
    """Deadline and cancellation state of one upstream call, shared with the trio side.

    The deadline is progress based: every reply moves it ``timeout_s`` ahead, so a large
    transfer that keeps moving never times out while a request without an answer does.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.stamp = time.monotonic()
        #: Set by the trio side when it stopped waiting (cancelled or timed out).
        self.abandoned = False

    def touch(self) -> None:
        self.stamp = time.monotonic()

    @property
    def deadline(self) -> float:
        return self.stamp + self.timeout_s

    def check(self) -> None:
        if self.abandoned:
            raise Abandoned("the caller went away")


#: Requests whose reply comes as soon as the server sees them: their round trips are the
#: link's (a READ, WRITE or listing also measures the server's disk and the payload).
_SMALL_COMMANDS = frozenset({0x05, 0x06, 0x0D, 0x10, 0x11})  # CREATE CLOSE ECHO QUERY_INFO SET_INFO


def _round_trip(request: object) -> float | None:
    sent = getattr(request, "cscd_sent", None)
    if sent is None:
        return None
    try:
        command = request.message["command"].get_value()  # type: ignore[attr-defined]
    except (AttributeError, KeyError, TypeError):
        return None
    return time.monotonic() - sent if command in _SMALL_COMMANDS else None


class _Connection(Connection):
    """smbprotocol's ``Connection`` with two things it lacks.

    PreviousSessionId: a link given up while the server still thinks it alive (a hung
    network, a laptop suspended) leaves its session on the server, with every handle it held
    open. Samba then refuses to rename a folder below which such a ghost holds a watch, for as
    long as the ghost lives (minutes to hours). Naming the dead session in the new logon is how
    Windows clients reconnect: the server closes the old session and its handles
    ([MS-SMB2] 3.3.5.5.3) once the same user has logged on again.

    A snapshot of outstanding requests: smbprotocol's receive thread, when the connection
    dies, walks ``outstanding_requests`` to wake every waiter while other threads still add
    requests to it; a plain dict then raises "dictionary changed size during iteration" in
    that thread.
    """

    def __init__(self, *args: object, previous_session_id: int = 0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.previous_session_id = previous_session_id
        self.outstanding_requests = _SnapshotDict()
        #: the server's clock minus ours, from the NEGOTIATE reply (``cscd doctor``; Kerberos
        #: refuses more than 5 minutes)
        self.clock_offset_s: float | None = None

    def _send_smb2_negotiate(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        reply = super()._send_smb2_negotiate(*args, **kwargs)
        try:
            server = reply["system_time"].get_value()
            if server.tzinfo is None:
                server = server.replace(tzinfo=datetime.UTC)
            self.clock_offset_s = server.timestamp() - time.time()
        except (KeyError, AttributeError, ValueError, OverflowError):
            self.clock_offset_s = None  # a server that sends no time (0) says nothing
        return reply

    def send(self, message, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.previous_session_id and isinstance(message, SMB2SessionSetupRequest):
            message["previous_session_id"] = self.previous_session_id
        return super().send(message, *args, **kwargs)


class _SnapshotDict(dict):
    """A dict whose ``values()`` is a list taken at once (under the GIL), safe to walk while
    other threads insert."""

    def values(self):  # type: ignore[override]
        return list(super().values())


def _spnego_reason(exc: BaseException) -> str:
    """The GSSAPI reason of a failed Kerberos logon, without smbprotocol's prefix."""
    text = str(exc).removeprefix("Failed to authenticate with server: ")
    return text.strip() or type(exc).__name__


class SmbLink:
    """One TCP connection with an authenticated session and a tree connect to one share."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        share: str,
        username: str,
        password: str,
        domain: str,
        require_encryption: bool,
        stats: Stats,
        kerberos: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.share_unc = f"\\\\{host}\\{share}"
        #: None with ``kerberos``: the ticket cache's default principal
        self._username: str | None = (f"{domain}\\{username}" if domain else username) or None
        self._password: str | None = password or None
        self._kerberos = kerberos
        self._require_encryption = require_encryption
        self.stats = stats
        #: the upload cap (``RateLimit``) the owning upstream shares with this link, or None
        self.rate_limit = None
        self.conn: Connection | None = None
        self.session: Session | None = None
        self.tree: TreeConnect | None = None
        self._credits = threading.Condition()
        self._dead = False
        self.encrypted = False
        #: the session of the link this one replaces, closed on the server at logon (see
        #: ``_Connection``); 0 for a first connection
        self.previous_session_id = 0
        #: this link's session on the server, kept after teardown for the next link to name
        self.session_id = 0
        #: True while the session setup runs (a Kerberos logon asks the KDC then)
        self.logging_on = False

    # -- lifecycle --------------------------------------------------------------------------

    def open(self, call: Call) -> None:
        """Connect, negotiate SMB3, log on with NTLM, connect the tree, ask for credits.

        A ``threading.Timer`` tears the link down at the deadline, because smbprotocol's
        session setup and tree connect wait without a timeout of their own.
        """
        fired = threading.Event()

        def expire() -> None:
            fired.set()
            self.teardown()

        guard = threading.Timer(max(0.0, call.deadline - time.monotonic()), expire)
        guard.daemon = True
        guard.start()
        try:
            # Signing stays required: with require_signing=False Samba refuses the tree
            # connect on SMB 3.1.1 (FACTS.md); encryption, when on, covers it anyway.
            conn = _Connection(
                uuid.uuid4(),
                self.host,
                self.port,
                require_signing=True,
                previous_session_id=self.previous_session_id,
            )
            self.conn = conn
            conn.connect(timeout=int(call.timeout_s) + 1)  # smbprotocol waits int(T) - 1 s
            self._check_alive()
            self._set_send_timeout(call.timeout_s)
            # Kerberos asks for a ticket to cifs/<the host as the target names it>, the
            # service principal a Windows client would use; NTLM needs the password.
            session = Session(
                conn,
                self._username,
                self._password,
                require_encryption=self._require_encryption,
                auth_protocol="kerberos" if self._kerberos else "ntlm",
                hostname_override=self.host,
            )
            self.logging_on = True
            try:
                session.connect()
            except SMBAuthenticationError as exc:
                if not self._kerberos:
                    raise
                if "Cannot contact any KDC" in str(exc):  # the ticket may be fine: no KDC answers
                    raise UpstreamUnavailable(
                        f"cannot log on to {self.host}: no KDC of the realm answers "
                        "(krb5.conf, DNS, the network path to a domain controller)"
                    ) from None
                if "Clock skew too great" in str(exc):  # kinit would not help: the clock is wrong
                    raise UpstreamUnavailable(
                        f"cannot log on to {self.host} with Kerberos: this machine's clock and the "
                        "domain's differ by more than Kerberos allows (5 minutes by default): set the "
                        "time (timedatectl set-ntp true, chrony)"
                    ) from None
                raise TicketMissing(
                    f"cannot log on to {self.host} with a Kerberos ticket ({_spnego_reason(exc)}): "
                    "get one with kinit, or lock and unlock the session"
                ) from None
            except SMBResponseException as exc:
                if not (self._kerberos and int(exc.status) == STATUS_LOGON_FAILURE):
                    raise
                raise TicketMissing(
                    f"{self.host} refused the Kerberos ticket (status 0x{int(exc.status):08x}): "
                    "get a new one with kinit, or lock and unlock the session"
                ) from None
            self.logging_on = False
            self.session = session
            self.session_id = session.session_id
            self._check_alive()
            tree = TreeConnect(session, self.share_unc)
            tree.connect()
            self.tree = tree
            self._check_alive()
            self.encrypted = bool(session.encrypt_data or tree.encrypt_data)
            self._ask_for_credits(call)
        except BaseException:
            self.teardown()
            if fired.is_set():
                raise WireTimeout(f"connecting took longer than {call.timeout_s:.0f} s") from None
            raise
        finally:
            guard.cancel()

    @property
    def is_dfs(self) -> bool:
        """True if the connected share is a DFS namespace root (its paths may be links)."""
        tree = self.tree
        return bool(tree is not None and tree.share_name.rsplit("\\", 1)[-1].upper() != "IPC$"
                    and tree.is_dfs_share)

    def _ask_for_credits(self, call: Call) -> None:
        conn = self.conn
        assert conn is not None and self.session is not None
        req = conn.send(SMB2Echo(), sid=self.session.session_id, credit_request=CREDITS_WANTED)
        self.stats.add(requests=1)
        self._wait_raw(req, call)
        log.debug("%s: %d credits after logon", self.share_unc, self._credits_free())

    def _set_send_timeout(self, timeout_s: float) -> None:
        """SO_SNDTIMEO: a send into a full buffer of a hung server fails instead of hanging."""
        sock = getattr(getattr(self.conn, "transport", None), "_sock", None)
        if sock is None:
            return
        secs = int(timeout_s)
        usecs = int((timeout_s - secs) * 1_000_000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", secs, usecs))

    @property
    def alive(self) -> bool:
        conn = self.conn
        return (
            not self._dead
            and conn is not None
            and conn.transport is not None
            and conn.transport.connected
            and conn._t_exc is None  # noqa: SLF001 - the worker's failure is only kept there
        )

    def _check_alive(self) -> None:
        if self._dead:
            raise WireTimeout("the connection was torn down")

    def teardown(self) -> None:
        """Drop the connection now; never blocks, wakes every thread waiting on it."""
        self._dead = True
        with self._credits:
            self._credits.notify_all()
        conn = self.conn
        transport = getattr(conn, "transport", None)
        sock = getattr(transport, "_sock", None)
        if sock is not None:
            try:
                # Without taking smbprotocol's socket lock: a writer blocked in send()
                # holds it. The shutdown makes that send fail and the reader see EOF.
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        # The reader thread now sees EOF, closes the transport and fires every pending
        # request's event, so waiting threads fail with SMBConnectionClosed.

    def close(self) -> None:
        """Tear down and release the socket (the reader thread closes it on EOF)."""
        self.teardown()
        conn = self.conn
        worker = getattr(conn, "_t_worker", None)
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=2)

    # -- credits ----------------------------------------------------------------------------

    def _credits_free(self) -> int:
        conn = self.conn
        assert conn is not None
        with conn.sequence_lock:
            window = conn.sequence_window["high"] - conn.sequence_window["low"]
        return int(window) - _CREDIT_RESERVE

    # -- sending and waiting ----------------------------------------------------------------

    def send(
        self, messages: Sequence[object], call: Call, *, related: bool = False,
        tree: TreeConnect | None = None,
    ) -> list[object]:
        """Send one message or a compound; returns the ``Request`` objects to ``wait`` on.

        Waits (until the deadline) for SMB credits if other requests hold them all. ``tree``:
        another share connected on this session (a move across shares), else the link's own.
        """
        reqs = self._send(messages, call, related=related, block=True, tree=tree)
        assert reqs is not None
        return reqs

    def try_send(self, message: object, call: Call) -> object | None:
        """Send one message if credits are free now, else return None (for pipelines, which
        must first wait for their own requests in flight to get credits back)."""
        reqs = self._send([message], call, related=False, block=False)
        return reqs[0] if reqs else None

    def _send(
        self, messages: Sequence[object], call: Call, *, related: bool, block: bool,
        tree: TreeConnect | None = None,
    ) -> list[object] | None:
        conn, session, tree = self.conn, self.session, tree or self.tree
        if conn is None or session is None or tree is None or self._dead:
            raise SMBConnectionClosed("the connection was dropped")
        call.check()
        charges = [max(1, conn._calculate_credit_charge(m)) for m in messages]  # noqa: SLF001
        total = sum(charges)
        # The server's credit window is the truth (it may grant less than we ask). Checking it
        # and sending happen under one lock: smbprotocol would raise half-way through a
        # compound without credits and leave a hole in the message ids.
        with self._credits:
            while self._credits_free() < total:
                if self._dead:
                    raise SMBConnectionClosed("the connection was dropped")
                if not block:
                    return None
                left = call.deadline - time.monotonic()
                if left <= 0:
                    raise WireTimeout("no SMB credits became free in time")
                # Replies return credits in smbprotocol's reader thread; ``wait`` notifies,
                # the short timeout covers replies nobody has collected yet.
                self._credits.wait(min(left, 0.05))
            try:
                if len(messages) == 1:
                    reqs = [
                        conn.send(messages[0], sid=session.session_id, tid=tree.tree_connect_id)
                    ]
                else:
                    reqs = conn.send_compound(
                        list(messages), session.session_id, tree.tree_connect_id, related=related
                    )
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    # SO_SNDTIMEO expired: the server stopped reading.
                    self.teardown()
                    raise WireTimeout("the server stopped accepting data") from None
                raise
        self.stats.add(requests=len(reqs))
        sent = time.monotonic()
        for req in reqs:
            req.cscd_sent = sent  # type: ignore[attr-defined]
        return reqs

    def wait(self, request: object, call: Call) -> object:
        """Wait for the reply to ``request`` until the call's deadline; returns the header.

        Raises ``WireTimeout`` past the deadline (the caller tears the link down), smbprotocol's
        ``SMBResponseException`` for an error status, ``SMBConnectionClosed`` if the link died.
        """
        try:
            return self._wait_raw(request, call)
        finally:
            with self._credits:
                self._credits.notify_all()

    def _wait_raw(self, request: object, call: Call) -> object:
        conn = self.conn
        assert conn is not None
        left = call.deadline - time.monotonic()
        if left <= 0 or not request.response_event.wait(left):  # type: ignore[attr-defined]
            # The link is in an unknown state now (replies may still come): drop it, which
            # also wakes every other thread waiting on it.
            self.teardown()
            raise WireTimeout(f"no answer within {call.timeout_s:g} s")
        # The reply (or a STATUS_PENDING interim) is there; receive() pops it, raises for an
        # error status and waits for the final reply of a pending request with a timeout.
        self.stats.replied(_round_trip(request))
        left = call.deadline - time.monotonic()
        response = conn.receive(request, timeout=max(1.0, left))
        call.touch()
        return response

    def drain(self, requests: Sequence[object], call: Call) -> None:
        """Collect and drop the replies of requests a failed operation leaves in flight, so
        that their credits come back; gives up quietly once the link is gone."""
        for req in requests:
            if not self.alive:
                return
            try:
                self.wait(req, call)
            except WireTimeout:
                return
            except Exception:  # noqa: BLE001, S112 - the operation already failed
                continue

    def wait_all(self, requests: Sequence[object], call: Call) -> list[object]:
        """Wait for every reply of a compound; each item is a header or the exception it raised.

        A timeout or a lost connection is raised at once (the rest would fail the same way).
        """
        out: list[object] = []
        for req in requests:
            try:
                out.append(self.wait(req, call))
            except Exception as exc:  # noqa: BLE001 - sorted by the caller
                if isinstance(exc, WireTimeout) or not self.alive:
                    raise
                out.append(exc)
        return out


# -- message builders -------------------------------------------------------------------------

"""One SMB connection (TCP + session + tree) and the request plumbing every SMB operation uses.

Owns: the smbprotocol ``Connection``/``Session``/``TreeConnect`` of one ``SmbUpstream``, the
credit budget, deadlines on every request, tearing a connection down without blocking, and
building/parsing the raw SMB2 messages (smbprotocol's ``Open`` helpers wait without a timeout
and round times to microseconds, so we build requests with ``send=False``-style structures and
parse replies with ``struct``).

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from smbprotocol.connection import Connection, SMB2Echo
from smbprotocol.exceptions import SMBAuthenticationError, SMBConnectionClosed, SMBResponseException
from smbprotocol.file_info import FileInformationClass, InfoType
from smbprotocol.open import (
    SMB2CloseRequest,
    SMB2CreateRequest,
    SMB2QueryDirectoryRequest,
    SMB2QueryInfoRequest,
    SMB2ReadRequest,
    SMB2SetInfoRequest,
    SMB2WriteRequest,
)
from smbprotocol.session import Session, SMB2SessionSetupRequest
from smbprotocol.tree import TreeConnect

from cscd.errors import TicketMissing, UpstreamUnavailable
from cscd.upstream.smb_errors import STATUS_LOGON_FAILURE, Abandoned, WireTimeout

log = logging.getLogger(__name__)

#: FileId for "the file the previous CREATE in this related compound opened".
RELATED_FILE_ID = b"\xff" * 16
#: Largest single READ/WRITE payload: 16 credits; a fresh connection has only 64 (FACTS.md).
MAX_IO = 1 << 20
#: Credits asked for right after logon, so that pipelined transfers of several threads fit.
CREDITS_WANTED = 1024
_CREDIT_RESERVE = 8  # left for smbprotocol's own keep-alive echo

_FILETIME_EPOCH = 116_444_736_000_000_000  # 1601-01-01 → 1970-01-01 in 100 ns units

# Access masks and flags ([MS-SMB2] 2.2.13); the names say what each call needs.
FILE_READ_DATA = 0x1
FILE_LIST_DIRECTORY = 0x1
FILE_WRITE_DATA = 0x2
FILE_READ_EA = 0x8
FILE_WRITE_EA = 0x10
FILE_READ_ATTRIBUTES = 0x80
FILE_WRITE_ATTRIBUTES = 0x100
DELETE = 0x10000
SYNCHRONIZE = 0x100000
SHARE_ALL = 0x7  # read | write | delete: never lock other clients out
FILE_OPEN = 1
FILE_CREATE = 2
FILE_DIRECTORY_FILE = 0x1
FILE_NON_DIRECTORY_FILE = 0x40
FILE_ATTRIBUTE_DIRECTORY = 0x10
SMB2_RESTART_SCANS = 0x1
CLOSE_POSTQUERY = 0x1
FILE_SUPPORTS_EXTENDED_ATTRIBUTES = 0x00800000
IMPERSONATION = 2


def filetime_to_ns(ft: int) -> int:
    """FILETIME (100 ns since 1601) → integer ns since the Unix epoch (0 stays 0)."""
    return (ft - _FILETIME_EPOCH) * 100 if ft else 0


def ns_to_filetime(ns: int) -> int:
    """Integer ns since the Unix epoch → FILETIME, truncated to 100 ns."""
    return ns // 100 + _FILETIME_EPOCH


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


@dataclass(frozen=True, slots=True)
class Attrs:
    """What a CREATE or CLOSE(postquery) reply says about a file."""

    is_dir: bool
    size: int
    mtime_ns: int
    ctime_ns: int


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


def create_req(
    name: str,
    *,
    access: int,
    disposition: int = FILE_OPEN,
    options: int = 0,
    attributes: int = 0,
) -> SMB2CreateRequest:
    msg = SMB2CreateRequest()
    msg["impersonation_level"] = IMPERSONATION
    msg["desired_access"] = access
    msg["file_attributes"] = attributes
    msg["share_access"] = SHARE_ALL
    msg["create_disposition"] = disposition
    msg["create_options"] = options
    msg["buffer_path"] = name.encode("utf-16-le") if name else b"\x00\x00"
    return msg


def read_req(file_id: bytes, offset: int, length: int) -> SMB2ReadRequest:
    msg = SMB2ReadRequest()
    msg["padding"] = 0x50
    msg["length"] = length
    msg["offset"] = offset
    msg["file_id"] = file_id
    return msg


def write_req(file_id: bytes, offset: int, data: bytes) -> SMB2WriteRequest:
    msg = SMB2WriteRequest()
    msg["length"] = len(data)
    msg["offset"] = offset
    msg["file_id"] = file_id
    msg["buffer"] = data
    return msg


def close_req(file_id: bytes, *, postquery: bool = False) -> SMB2CloseRequest:
    msg = SMB2CloseRequest()
    msg["file_id"] = file_id
    if postquery:
        msg["flags"] = CLOSE_POSTQUERY
    return msg


def query_id_req(file_id: bytes) -> SMB2QueryInfoRequest:
    """QUERY_INFO FileInternalInformation: the server's 64-bit file id."""
    msg = SMB2QueryInfoRequest()
    msg["info_type"] = InfoType.SMB2_0_INFO_FILE
    msg["file_info_class"] = FileInformationClass.FILE_INTERNAL_INFORMATION
    msg["output_buffer_length"] = 8
    msg["file_id"] = file_id
    return msg


def query_ea_req(file_id: bytes, max_output: int = 65536) -> SMB2QueryInfoRequest:
    """QUERY_INFO FileFullEaInformation: every EA of the file ([MS-FSCC] 2.4.15)."""
    msg = SMB2QueryInfoRequest()
    msg["info_type"] = InfoType.SMB2_0_INFO_FILE
    msg["file_info_class"] = FileInformationClass.FILE_FULL_EA_INFORMATION
    msg["output_buffer_length"] = max_output
    msg["file_id"] = file_id
    return msg


def fs_full_size_req(file_id: bytes) -> SMB2QueryInfoRequest:
    """QUERY_INFO FileFsFullSizeInformation ([MS-FSCC] 2.5.4): the share's size and the
    space left to this user (quotas included, as Explorer shows it)."""
    msg = SMB2QueryInfoRequest()
    msg["info_type"] = InfoType.SMB2_0_INFO_FILESYSTEM
    msg["file_info_class"] = 7  # FileFsFullSizeInformation
    msg["output_buffer_length"] = 32
    msg["file_id"] = file_id
    return msg


def parse_fs_full_size(header: object) -> tuple[int, int]:
    """(total bytes, bytes available to the caller)."""
    total, caller, _actual, sectors, sector_bytes = struct.unpack_from("<QQQII", _out_buffer(header), 0)
    unit = sectors * sector_bytes
    return total * unit, caller * unit


def ea_info(eas: Mapping[bytes, bytes]) -> bytes:
    """A FileFullEaInformation list; an empty value removes that EA."""
    items = sorted(eas.items())
    out = []
    for i, (name, value) in enumerate(items):
        entry = struct.pack("<BBH", 0, len(name), len(value)) + name + b"\0" + value
        if i + 1 < len(items):
            entry += b"\0" * (-(len(entry) + 4) % 4)
            out.append(struct.pack("<I", len(entry) + 4) + entry)
        else:
            out.append(struct.pack("<I", 0) + entry)
    return b"".join(out)


def parse_eas(header: object) -> list[tuple[bytes, bytes]]:
    """(name, value) pairs of a FileFullEaInformation QUERY_INFO reply."""
    buf = _out_buffer(header)
    out = []
    pos = 0
    while pos + 8 <= len(buf):
        next_off, _flags, name_len, value_len = struct.unpack_from("<IBBH", buf, pos)
        name = bytes(buf[pos + 8 : pos + 8 + name_len])
        value = bytes(buf[pos + 9 + name_len : pos + 9 + name_len + value_len])
        out.append((name, value))
        if not next_off:
            break
        pos += next_off
    return out


def set_info_req(file_id: bytes, info_class: int, buffer: bytes) -> SMB2SetInfoRequest:
    msg = SMB2SetInfoRequest()
    msg["info_type"] = InfoType.SMB2_0_INFO_FILE
    msg["file_info_class"] = info_class
    msg["file_id"] = file_id
    msg["buffer"] = buffer
    return msg


def basic_info(*, mtime_ns: int) -> bytes:
    """FileBasicInformation that changes only the last-write time (0 = leave unchanged)."""
    return struct.pack("<qqqqII", 0, 0, ns_to_filetime(mtime_ns), 0, 0, 0)


def rename_info(new_name: str, *, replace: bool) -> bytes:
    """FileRenameInformation for SMB2: the new name is the full path from the share root."""
    name = new_name.encode("utf-16-le")
    return struct.pack("<B7xQI", 1 if replace else 0, 0, len(name)) + name


def disposition_info() -> bytes:
    return b"\x01"


def query_dir_req(file_id: bytes, *, restart: bool, max_output: int) -> SMB2QueryDirectoryRequest:
    msg = SMB2QueryDirectoryRequest()
    msg["file_information_class"] = FileInformationClass.FILE_ID_FULL_DIRECTORY_INFORMATION
    msg["flags"] = SMB2_RESTART_SCANS if restart else 0
    msg["file_index"] = 0
    msg["file_id"] = file_id
    msg["output_buffer_length"] = max_output
    msg["buffer"] = "*".encode("utf-16-le")
    return msg


# -- reply parsers ----------------------------------------------------------------------------


def body(header: object) -> bytes:
    return header["data"].get_value()  # type: ignore[index,no-any-return]


def parse_create(header: object) -> tuple[bytes, Attrs]:
    """(file id, attributes) from a CREATE reply."""
    b = body(header)
    _ctime, _atime, mtime, change, _alloc, eof, attrs = struct.unpack_from("<QQQQqqI", b, 8)
    file_id = b[64:80]
    is_dir = bool(attrs & FILE_ATTRIBUTE_DIRECTORY)
    return file_id, Attrs(
        is_dir, 0 if is_dir else eof, filetime_to_ns(mtime), filetime_to_ns(change)
    )


def parse_close(header: object) -> Attrs | None:
    """Attributes from a CLOSE reply sent with the post-query flag (None if not filled in)."""
    b = body(header)
    flags = struct.unpack_from("<H", b, 2)[0]
    if not flags & CLOSE_POSTQUERY:
        return None
    _ctime, _atime, mtime, change, _alloc, eof, attrs = struct.unpack_from("<QQQQqqI", b, 8)
    is_dir = bool(attrs & FILE_ATTRIBUTE_DIRECTORY)
    return Attrs(is_dir, 0 if is_dir else eof, filetime_to_ns(mtime), filetime_to_ns(change))


def _out_buffer(header: object) -> bytes:
    b = body(header)
    offset, length = struct.unpack_from("<HI", b, 2)
    start = offset - 64  # offsets count from the start of the SMB2 header
    return b[start : start + length]


def parse_file_id(header: object) -> int:
    """The 64-bit id from a FileInternalInformation QUERY_INFO reply."""
    return int(struct.unpack_from("<Q", _out_buffer(header), 0)[0])


def parse_read(header: object) -> memoryview:
    """The data of a READ reply, as a view (no copy of up to 1 MiB)."""
    b = body(header)
    offset = b[2]
    length = struct.unpack_from("<I", b, 4)[0]
    start = offset - 64
    return memoryview(b)[start : start + length]


def parse_write(header: object) -> int:
    return int(struct.unpack_from("<I", body(header), 4)[0])


@dataclass(frozen=True, slots=True)
class DirEntry:
    name: str
    is_dir: bool
    size: int
    mtime_ns: int
    ctime_ns: int
    file_id: int
    ea_size: int = 0


def parse_dir(header: object) -> list[DirEntry]:
    """Entries of a FileIdFullDirectoryInformation QUERY_DIRECTORY reply ([MS-FSCC] 2.4.18)."""
    buf = _out_buffer(header)
    out = []
    pos = 0
    while pos < len(buf):
        (next_off, _idx, _ct, _at, mtime, change, eof, _alloc, attrs, name_len, ea_size, _res, fid) = (
            struct.unpack_from("<IIQQQQqqIIIIQ", buf, pos)
        )
        name = buf[pos + 80 : pos + 80 + name_len].decode("utf-16-le", "surrogatepass")
        is_dir = bool(attrs & FILE_ATTRIBUTE_DIRECTORY)
        out.append(
            DirEntry(
                name,
                is_dir,
                0 if is_dir else eof,
                filetime_to_ns(mtime),
                filetime_to_ns(change),
                fid,
                ea_size,
            )
        )
        if not next_off:
            break
        pos += next_off
    return out

"""Events with stable IDs: the table, ``emit``, the in-memory ring and the journald writer.

Leaf module: imports nothing from cscd. It owns the numbers an admin filters on (``journalctl
CSCD_EVENT=2001``, or ``MESSAGE_ID=…``), in the spirit of the Windows event IDs of Offline
Files and Work Folders. **The numbers and MESSAGE_IDs below are stable**: never renumber or
reuse one; add new ones in their group.

| id   | name                     | level   | fields (besides ``folder``)            |
|------|--------------------------|---------|----------------------------------------|
| 1000 | DAEMON_READY             | INFO    | mount, modes                           |
| 1001 | DAEMON_STOPPING          | INFO    | reason                                 |
| 1002 | RELOADED                 | INFO    | result                                 |
| 2000 | SYNC_STARTED             | INFO    | trigger (change, background, manual), pending |
| 2001 | SYNC_FINISHED            | INFO    | trigger, files, bytes, pending, duration_s |
| 2002 | SYNC_FAILED              | WARNING | trigger, reason, pending               |
| 2010 | UPLOAD_FAILED_QUOTA      | ERROR   | path, reason                           |
| 2011 | UPLOAD_FAILED_PERMISSION | ERROR   | path, reason                           |
| 2012 | UPLOAD_FAILED_WRITE_THROUGH | WARNING | path, reason, kept (dropped, pending): a folder that is not cached |
| 2020 | NOT_AVAILABLE_OFFLINE    | INFO    | path, mode                             |
| 2030 | SYNC_FILE_TOO_LARGE      | INFO    | path, size, limit (offline_files.max_file_size) |
| 2040 | SYNC_PROBLEM             | WARNING | path, failures, reason, retry_s: a file that keeps failing to sync |
| 2041 | SYNC_PROBLEM_CLEARED     | INFO    | path, failures: it synced after all    |
| 3000 | MODE_CHANGED             | INFO    | mode, previous, reason, cause (start, rtt, error, policy, user) |
| 3001 | CREDENTIALS_EXPIRED      | WARNING | server, reason: no usable Kerberos ticket (once per loss) |
| 4000 | CONFLICT_CREATED         | WARNING | path, copy, count                      |
| 4001 | CONFLICT_RESOLVED        | INFO    | path, keep                             |
| 5000 | POLICY_REJECTED          | ERROR   | file, line, key, reason                |
| 6000 | PROFILE_UPLOAD_STARTED   | INFO    | trigger                                |
| 6001 | PROFILE_UPLOAD_FINISHED  | INFO    | files, bytes, duration_s               |
| 6002 | PROFILE_UPLOAD_SKIPPED   | INFO    | reason (slow link, server unavailable, metered) |
| 6003 | PROFILE_UPLOAD_FAILED    | WARNING | reason                                 |
| 7000 | CACHE_ENCRYPTED          | INFO    | how: the device policy's encryption at rest is in force |
| 7001 | CACHE_NOT_ENCRYPTED      | WARNING | reason: the policy asks for it and it cannot be done; nothing is cached |
| 7010 | CACHE_WIPE_STARTED       | WARNING | pending, then: a folder revoked by device.wipe: not served any more |
| 7011 | CACHE_WIPED              | WARNING | files, how, lost: its cached copy destroyed |
| 7020 | DEVICE_NOT_COMPLIANT     | WARNING | reason, offline: the session does not lock its screen as the policy asks |
| 7021 | DEVICE_COMPLIANT         | INFO    | reason: it does (again)                |

``emit(EventId.X, folder=..., **fields)`` renders the message, keeps the event in a bounded
ring (``RING_SIZE``; the control socket serves it to ``cscd events``) and logs it through
``logging`` (logger ``cscd.events``) with the journal fields attached. Where the output goes
is the logging set-up's business: ``cli.py`` installs ``JournalHandler`` when stderr is the
journal stream (``$JOURNAL_STREAM``, as systemd sets it), so every record — events with
``MESSAGE_ID``, ``CSCD_EVENT``, ``CSCD_EVENT_NAME``, ``CSCD_FOLDER`` and one ``CSCD_<FIELD>``
per field — reaches journald through its native datagram protocol; elsewhere records go to
stderr as text with the id in brackets.

``emit`` is cheap, never blocks (the journal socket is non-blocking; a record it cannot take
goes to stderr), never raises (a missing field renders as ``?``), and may be called from any
thread.
"""

from __future__ import annotations

import enum
import itertools
import logging
import os
import re
import socket
import struct
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("cscd.events")

#: How many events the ring keeps; older ones are only in the journal.
RING_SIZE = 1000
#: journald's native socket; ``$CSCD_JOURNAL_SOCKET`` overrides it (tests, containers).
JOURNAL_SOCKET = "/run/systemd/journal/socket"


class EventId(enum.IntEnum):
    """Stable event numbers, grouped by thousands (see the module docstring's table)."""

    DAEMON_READY = 1000
    DAEMON_STOPPING = 1001
    RELOADED = 1002
    SYNC_STARTED = 2000
    SYNC_FINISHED = 2001
    SYNC_FAILED = 2002
    UPLOAD_FAILED_QUOTA = 2010
    UPLOAD_FAILED_PERMISSION = 2011
    UPLOAD_FAILED_WRITE_THROUGH = 2012
    NOT_AVAILABLE_OFFLINE = 2020
    SYNC_FILE_TOO_LARGE = 2030
    SYNC_PROBLEM = 2040
    SYNC_PROBLEM_CLEARED = 2041
    MODE_CHANGED = 3000
    CREDENTIALS_EXPIRED = 3001
    CONFLICT_CREATED = 4000
    CONFLICT_RESOLVED = 4001
    POLICY_REJECTED = 5000
    PROFILE_UPLOAD_STARTED = 6000
    PROFILE_UPLOAD_FINISHED = 6001
    PROFILE_UPLOAD_SKIPPED = 6002
    PROFILE_UPLOAD_FAILED = 6003
    CACHE_ENCRYPTED = 7000
    CACHE_NOT_ENCRYPTED = 7001
    CACHE_WIPE_STARTED = 7010
    CACHE_WIPED = 7011
    DEVICE_NOT_COMPLIANT = 7020
    DEVICE_COMPLIANT = 7021


@dataclass(frozen=True)
class EventSpec:
    """What one event id means: its level, message template and journald MESSAGE_ID."""

    level: int
    template: str
    message_id: uuid.UUID


def _spec(level: int, template: str, message_id: str) -> EventSpec:
    return EventSpec(level, template, uuid.UUID(message_id))


# MESSAGE_IDs are uuid5(6f1c2a4e-5b0d-4c1e-9a57-0c5cd0e7e1a1, "cscd.event.<id>"), written out
# so that they stay fixed whatever happens to that derivation.
EVENTS: dict[EventId, EventSpec] = {
    EventId.DAEMON_READY: _spec(
        logging.INFO, "cscd serves {mount} ({modes})", "1aeb600b65e65727916a2cfe866443ee"),
    EventId.DAEMON_STOPPING: _spec(
        logging.INFO, "cscd stops: {reason}", "27cc6ec489b053baaf3f3ee645c4929b"),
    EventId.RELOADED: _spec(
        logging.INFO, "reload: {result}", "c1f78f763768563eb1d41d6bcb3f1061"),
    EventId.SYNC_STARTED: _spec(
        logging.INFO, "sync of {folder} started ({trigger})", "417506409c835b73b6260ea8d2e0d731"),
    EventId.SYNC_FINISHED: _spec(
        logging.INFO, "sync of {folder} finished ({trigger}): {files} files, {bytes} bytes up; "
        "{pending} changes pending", "45e0afa6b6785759bc6cd58bd755d79a"),
    EventId.SYNC_FAILED: _spec(
        logging.WARNING, "sync of {folder} did not finish ({trigger}): {reason}; "
        "{pending} changes kept for later", "ccc054f3587552acb3f44e3cf5a9b6f4"),
    EventId.UPLOAD_FAILED_QUOTA: _spec(
        logging.ERROR, "{path} in {folder} cannot be uploaded: the server is out of space or "
        "quota ({reason}); it stays in the cache", "33413896d8215390b05e25b0658bc7d2"),
    EventId.UPLOAD_FAILED_PERMISSION: _spec(
        logging.ERROR, "{path} in {folder} cannot be uploaded: access denied ({reason}); it "
        "stays in the cache", "2aa7415f938c506ca2f51cc7e1ba83db"),
    EventId.NOT_AVAILABLE_OFFLINE: _spec(
        logging.INFO, "{path} in {folder} is not available offline ({mode})",
        "3fd60de9a58c5195a75fab9676925627"),
    EventId.UPLOAD_FAILED_WRITE_THROUGH: _spec(
        logging.WARNING, "{path} in {folder} (not cached) could not be written to the server: "
        "{reason}; the application was told (change {kept})",
        "cdb2aaf37f9e5d05a753a166afe8d863"),
    EventId.SYNC_FILE_TOO_LARGE: _spec(
        logging.INFO, "{path} in {folder}: {size} bytes is more than offline_files.max_file_size "
        "({limit} bytes); refused with EFBIG", "d2b952d881ea59eb8894e8704a90e029"),
    EventId.SYNC_PROBLEM: _spec(
        logging.WARNING, "{path} in {folder} keeps failing to sync ({failures} tries): {reason}; "
        "it stays in the cache and is tried again in {retry_s} s", "5aeb56208cc350ef89f28ec22fc35f7a"),
    EventId.SYNC_PROBLEM_CLEARED: _spec(
        logging.INFO, "{path} in {folder} synced after {failures} failed tries",
        "c90d2514b3c857f6a54ada28220bf499"),
    EventId.MODE_CHANGED: _spec(
        logging.INFO, "mode of {folder} changed from {previous} to {mode} ({cause}): {reason}",
        "b0efcac3408f5e65a36ed5e97ce63804"),
    EventId.CREDENTIALS_EXPIRED: _spec(
        logging.WARNING, "{folder} cannot log on to {server}: {reason}; cached files stay "
        "available and changes wait", "2e07bceb480353e9b52017f0942f2a2b"),
    EventId.CONFLICT_CREATED: _spec(
        logging.WARNING, "conflict in {folder}: {path} changed on both sides; the local version "
        "is kept as {copy}", "276a295dc44b5fe68fab9978b91f35d8"),
    EventId.CONFLICT_RESOLVED: _spec(
        logging.INFO, "conflict in {folder} resolved: {path}, kept {keep}",
        "4095e0331fd25704be2446ff0d44dc9e"),
    EventId.POLICY_REJECTED: _spec(
        logging.ERROR, "policy rejected: {file}:{line}: {key}: {reason}",
        "052d772df10b5075b07ad05df0dd7519"),
    EventId.PROFILE_UPLOAD_STARTED: _spec(
        logging.INFO, "profile upload started ({trigger})", "9f1116eff2d254fbbe277f2f3b186387"),
    EventId.PROFILE_UPLOAD_FINISHED: _spec(
        logging.INFO, "profile upload finished: {files} files, {bytes} bytes in {duration_s} s",
        "678d1d0673f55d7995b360413285f527"),
    EventId.PROFILE_UPLOAD_SKIPPED: _spec(
        logging.INFO, "profile upload skipped: {reason}", "317300cd6ac35b5a816c25f534b02a78"),
    EventId.PROFILE_UPLOAD_FAILED: _spec(
        logging.WARNING, "profile upload failed: {reason}", "e1ba0006a1f5513c970d8ee3a0856b7d"),
    EventId.CACHE_ENCRYPTED: _spec(
        logging.INFO, "the cache is encrypted at rest ({how})", "a0d68e350d4651478b3aa2a66ae65af9"),
    EventId.CACHE_NOT_ENCRYPTED: _spec(
        logging.WARNING, "the device policy requires an encrypted cache and {reason}: no folder is "
        "cached, all are served from the server only", "9a9116190ea656bc9ea6dc531178bba8"),
    EventId.CACHE_WIPE_STARTED: _spec(
        logging.WARNING, "{folder} is revoked by the device policy (device.wipe): it is not served here any "
        "more; {pending} changes {then}", "3ba6fc8f291d5acaac20aa25d5d6340d"),
    EventId.CACHE_WIPED: _spec(
        logging.WARNING, "the cached copy of {folder} is destroyed: {files} files, {how}; "
        "{lost} changes that had not reached the server are lost", "9809d72ebe925b159a782469f86a936a"),
    EventId.DEVICE_NOT_COMPLIANT: _spec(
        logging.WARNING, "the session does not comply with device.require_screen_lock: {reason}; the "
        "offline cache is {offline}", "f58aeab8a9ea5fccb36f1db808d19143"),
    EventId.DEVICE_COMPLIANT: _spec(
        logging.INFO, "the session complies with device.require_screen_lock: {reason}",
        "c870f446de485c77a703b55c127ebcaf"),
}


@dataclass(frozen=True)
class Event:
    """One emitted event as the ring keeps it; ``time`` is wall-clock seconds (epoch)."""

    seq: int
    time: float
    id: int
    name: str
    level: str
    folder: str | None
    message: str
    fields: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": self.time, "id": self.id, "name": self.name,
                "level": self.level, "folder": self.folder, "message": self.message,
                "fields": self.fields}


class EventRing:
    """The last ``size`` events, numbered from 1; thread-safe."""

    def __init__(self, size: int = RING_SIZE) -> None:
        self._events: deque[Event] = deque(maxlen=size)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self.last_seq = 0

    def add(self, make: Any) -> Event:
        """Append ``make(seq)`` under the lock, so numbers and order agree."""
        with self._lock:
            seq = next(self._seq)
            event = make(seq)
            self._events.append(event)
            self.last_seq = seq
            return event

    def select(self, *, after_seq: int = 0, since: float | None = None,
               limit: int | None = None) -> list[Event]:
        """Events newer than ``after_seq`` and not older than ``since``; the newest ``limit``."""
        with self._lock:
            out = [e for e in self._events
                   if e.seq > after_seq and (since is None or e.time >= since)]
        return out[-limit:] if limit else out


#: The daemon's ring (one daemon per process).
ring = EventRing()


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, enum.Enum):
        return value.value
    return str(value)


class _Missing(dict):
    def __missing__(self, key: str) -> str:
        return "?"


def render(event_id: EventId, fields: dict[str, Any]) -> str:
    """The event's message with ``fields`` filled in; a missing field shows as ``?``."""
    try:
        return EVENTS[event_id].template.format_map(_Missing(fields))
    except (ValueError, IndexError, AttributeError):
        return EVENTS[event_id].template


def journal_key(name: str) -> str:
    """A journald field name for ``name``: upper case, ``[A-Z0-9_]``, not starting with ``_``."""
    key = re.sub(r"[^A-Z0-9_]", "_", name.upper()).lstrip("_") or "FIELD"
    return "F" + key if key[0].isdigit() else key


def emit(event_id: EventId, /, **fields: Any) -> Event:
    """Record one event: the ring, then ``logging`` with journal fields; returns the event.

    ``folder`` names the redirected folder, when there is one. Other fields are kept as they
    are when JSON-able (numbers, strings, booleans), else as text. Never raises.
    """
    spec = EVENTS[event_id]
    clean = {k: _jsonable(v) for k, v in fields.items()}
    folder = clean.pop("folder", None)
    message = render(event_id, {**clean, "folder": folder if folder is not None else "?"})
    event = ring.add(lambda seq: Event(seq, time.time(), int(event_id), event_id.name,
                                       logging.getLevelName(spec.level), folder, message, clean))
    journal = {
        "MESSAGE_ID": spec.message_id.hex,
        "CSCD_EVENT": str(int(event_id)),
        "CSCD_EVENT_NAME": event_id.name,
    }
    if folder is not None:
        journal["CSCD_FOLDER"] = str(folder)
    for key, value in clean.items():
        journal["CSCD_" + journal_key(key)] = "" if value is None else str(value)
    log.log(spec.level, "[%d] %s", int(event_id), message,
            extra={"journal_fields": journal, "cscd_event": int(event_id)})
    return event


# ---------------------------------------------------------------- journald native protocol

_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
             logging.DEBUG: 7}
#: Longest MESSAGE we send; longer ones are cut (a datagram must fit the socket buffer).
MAX_MESSAGE_BYTES = 64 * 1024


def journal_stream_is_stderr() -> bool:
    """Whether systemd connected our stderr to the journal (``$JOURNAL_STREAM`` is dev:ino)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def encode_journal(fields: dict[str, str]) -> bytes:
    """One native-protocol datagram: ``KEY=value\\n``, or for values with a newline
    ``KEY\\n`` + 64-bit little-endian length + value + ``\\n``."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", errors="replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """A ``logging`` handler that writes each record to journald as structured fields.

    Adds ``journal_fields`` from the record's ``extra`` (how ``emit`` passes MESSAGE_ID and
    the CSCD_* fields). If the journal socket cannot take a record, the record goes to
    stderr as text, so nothing is lost.
    """

    def __init__(self, identifier: str = "cscd", path: str | None = None) -> None:
        super().__init__()
        self.identifier = identifier
        self.path = path or os.environ.get("CSCD_JOURNAL_SOCKET") or JOURNAL_SOCKET
        # Non-blocking: if journald falls behind, a record goes to stderr rather than stall
        # the event loop.
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        self.fallback = logging.StreamHandler(sys.stderr)

    def setFormatter(self, fmt: logging.Formatter | None) -> None:  # noqa: N802 - logging API
        super().setFormatter(fmt)
        self.fallback.setFormatter(fmt)

    def fields_of(self, record: logging.LogRecord) -> dict[str, str]:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        encoded = message.encode("utf-8", errors="replace")
        if len(encoded) > MAX_MESSAGE_BYTES:
            message = encoded[:MAX_MESSAGE_BYTES].decode("utf-8", errors="ignore") + " …"
        fields = {
            "MESSAGE": message,
            "PRIORITY": str(_PRIORITY.get(record.levelno, 6)),
            "SYSLOG_IDENTIFIER": self.identifier,
            "LOGGER": record.name,
            "CODE_FILE": record.pathname,
            "CODE_LINE": str(record.lineno),
            "CODE_FUNC": record.funcName,
            "THREAD_NAME": record.threadName or "",
        }
        fields.update(getattr(record, "journal_fields", None) or {})
        return fields

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sock.sendto(encode_journal(self.fields_of(record)), self.path)
        except OSError:
            self.fallback.handle(record)
        except Exception:  # noqa: BLE001 - logging must not raise into the caller
            self.handleError(record)

    def close(self) -> None:
        self.sock.close()
        super().close()

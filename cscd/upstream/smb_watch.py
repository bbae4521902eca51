r"""``SmbWatch``: SMB2 CHANGE_NOTIFY on one open folder, as an async iterator of change batches.

Owns the watch's directory handle and its one outstanding CHANGE_NOTIFY request. What
Samba reports (FACTS.md, "CHANGE_NOTIFY on Samba"): with ``SMB2_WATCH_TREE`` creates,
deletes, renames (old and new name in one reply) and mkdir/rmdir at any depth, names
relative to the watched folder with backslashes, 0-2 ms after the other client. Writes to
files (MODIFIED) are reported only for files directly in the watched folder, and changes
made on the server's disk behind smbd's back only there too: content elsewhere still needs
the periodic scan. Changes between two requests are queued on the handle; an overflow
(~400 queued changes) answers STATUS_NOTIFY_ENUM_DIR, which becomes an empty batch
("rescan everything"). ``change notify = no`` answers STATUS_NOT_IMPLEMENTED: ``Unsupported``.

Threads and deadlines: waiting for a reply may take hours, so it does not go through
``SmbUpstream._run`` (whose watchdog would call a quiet folder a hung server), and it takes no
thread at all: a client holds hundreds of watches (issue 16), and a thread each, waking to
look around, would cost the idle laptop what the server is spared. smbprotocol's reader
thread sets the pending request's ``response_event``; the watch swaps that event for one
that also wakes the waiting trio task (``_WakingEvent``, swapped under the request's
``response_event_lock``, which the reader holds while it sets it). A dead connection sets
every pending event as well; ``SAFETY_S`` bounds the wait in case nothing ever does.
Sending the re-armed request and closing the handle are ordinary deadline-bound calls.

A watch is ended from outside with ``release()`` (the upstream does it before renaming a
folder above it: Samba refuses to rename a folder with an open handle below it from the
same connection, ``strict rename = no``). A folder deleted on the server ends its watch
(STATUS_DELETE_PENDING) the same way: the iterator stops. ``SmbWatches`` keeps one
connection's watches and that order between opening them and renaming.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import trio
from smbprotocol.exceptions import SMBConnectionClosed, SMBResponseException

from cscd.errors import CscdError, Unsupported
from cscd.names import is_internal_name, local_name
from cscd.upstream import smb_fsctl as f
from cscd.upstream import smb_messages as m
from cscd.upstream.base import Change, ChangeAction
from cscd.upstream.smb_errors import status_of, translate
from cscd.upstream.smb_wire import Call, SmbLink

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Longest wait for a reply without looking at the link (a dead one normally wakes it).
SAFETY_S = 30.0
#: How long opening a watch waits for an immediate refusal (NOT_IMPLEMENTED comes at once).
ARM_WAIT_S = 0.25
STATUS_PENDING = 0x00000103
STATUS_NOTIFY_CLEANUP = 0x0000010B
STATUS_NOTIFY_ENUM_DIR = 0x0000010C
STATUS_CANCELLED = 0xC0000120
STATUS_DELETE_PENDING = 0xC0000056
_UNSUPPORTED = {0xC0000002, 0xC00000BB, 0xC0000010}  # NOT_IMPLEMENTED, NOT_SUPPORTED, ...


def open_watch(
    link: SmbLink, call: Call, spath: str, *, tree: bool
) -> tuple[SmbLink, bytes, object]:
    """Open the folder and arm the first CHANGE_NOTIFY (blocking; in a worker thread).

    The server only starts collecting changes once a request is pending, so the watch is
    armed before the caller looks at the folder. Returns (link, handle, pending request);
    raises ``Unsupported`` if the server refuses at once.
    """
    create = m.create_req(
        spath, access=m.FILE_LIST_DIRECTORY | m.FILE_READ_ATTRIBUTES, options=m.FILE_DIRECTORY_FILE
    )
    # One round trip: the CHANGE_NOTIFY rides in a related compound behind the CREATE (a
    # directory's first listing waits for its watch, ``dirwatch.arm_before_listing``).
    create_req, req = link.send([create, f.notify_req(m.RELATED_FILE_ID, tree=tree)], call, related=True)
    (reply,) = link.wait_all([create_req], call)
    if isinstance(reply, BaseException):
        link.drain([req], call)  # failed with the CREATE it depends on
        raise reply
    file_id, _ = m.parse_create(reply)
    event = req.response_event  # type: ignore[attr-defined]
    if event.wait(ARM_WAIT_S):
        with req.response_event_lock:  # type: ignore[attr-defined]
            status = _status(req)
        if status in _UNSUPPORTED:
            link.drain([req], call)
            (close,) = link.send([m.close_req(file_id)], call)
            link.drain([close], call)
            raise Unsupported(f"{link.host} does not send change notifications")
    return link, file_id, req


def _status(req: object) -> int:
    """The status of a request whose event is set; smbprotocol also sets it, with no
    response at all, for every request outstanding when the connection dies."""
    response = req.response  # type: ignore[attr-defined]
    if response is None:
        raise SMBConnectionClosed("the connection was lost while watching")
    return response["status"].get_value()


class _WakingEvent(threading.Event):
    """A request's response event that also wakes the trio task waiting for it."""

    def __init__(self, token: trio.lowlevel.TrioToken, wake: Callable[[], None]) -> None:
        super().__init__()
        self._token = token
        self._wake = wake

    def set(self) -> None:
        super().set()
        try:
            self._token.run_sync_soon(self._wake)
        except trio.RunFinishedError:
            pass  # the daemon is leaving; nobody waits any more


class SmbWatch:
    """Batches of changes below one folder; made by ``SmbUpstream.watch``."""

    def __init__(
        self,
        link: SmbLink,
        file_id: bytes,
        request: object | None,
        *,
        tree: bool,
        spath: str,
        where: str,
        server: str,
        timeout_s: float,
        run: Callable[..., Awaitable[T]],
    ) -> None:
        self._link = link
        self._file_id = file_id
        self._tree = tree
        self.spath = spath
        self._where = where
        self._server = server
        self._timeout_s = timeout_s
        self._run = run  # SmbUpstream._run: deadline-bound calls on the live link
        self._token = trio.lowlevel.current_trio_token()
        self._ready = trio.Event()
        self._request: object | None = None
        if request is not None:
            self._hook(request)
        self._ending = False
        self._closed = trio.Event()
        self.closed = False

    def _hook(self, req: object) -> None:
        with req.response_event_lock:  # type: ignore[attr-defined]
            old = req.response_event  # type: ignore[attr-defined]
            new = _WakingEvent(self._token, self._wake)
            if old.is_set():
                threading.Event.set(new)  # already answered: no need to wake anyone
            req.response_event = new  # type: ignore[attr-defined]
        self._request = req

    def _wake(self) -> None:
        self._ready.set()

    def __aiter__(self) -> SmbWatch:
        return self

    async def __anext__(self) -> list[Change]:
        """The next batch; ``[]`` means "lost track, rescan". Raises ``StopAsyncIteration``
        once the handle is closed or released, ``UpstreamUnavailable`` if the link died,
        ``Unsupported`` if the server does not notify."""
        while True:
            raw = await self._wait()
            if raw is None:
                raise StopAsyncIteration
            if not raw:
                return []
            out = []
            for code, name in raw:
                try:
                    action = ChangeAction(code)
                except ValueError:
                    continue  # stream events and the like
                parts = name.split("\\")
                if is_internal_name(parts[-1]):
                    continue  # upload temporaries, our own or another cscd's
                out.append(Change(action, b"/".join(local_name(p) for p in parts)))
            if out:
                return out

    async def _wait(self) -> list[tuple[int, str]] | None:
        try:
            if self._request is None and not self._ending:
                tree, file_id = self._tree, self._file_id

                def arm(link: SmbLink, call: Call) -> object:
                    if link is not self._link:
                        raise SMBConnectionClosed("the connection of the watch was replaced")
                    (req,) = link.send([f.notify_req(file_id, tree=tree)], call)
                    return req

                self._hook(await self._run(self._where, arm))
            while True:
                if self._ending:
                    return None
                req = self._request
                assert req is not None
                with req.response_event_lock:  # type: ignore[attr-defined]
                    answered = req.response_event.is_set()  # type: ignore[attr-defined]
                    if answered:
                        status = _status(req)
                        if status == STATUS_PENDING:
                            req.response_event.clear()  # type: ignore[attr-defined]
                            answered = False  # the interim reply: the real one comes later
                if answered:
                    self._request = None
                    return self._collect(req)
                if not self._link.alive:
                    raise SMBConnectionClosed("the connection was lost while watching")
                self._ready = trio.Event()
                with trio.move_on_after(SAFETY_S):
                    await self._ready.wait()
        except CscdError:
            raise
        except Exception as exc:
            err = translate(exc, server=self._server, where=self._where)
            if status_of(exc) in _UNSUPPORTED:
                err = Unsupported(f"{self._server} does not send change notifications")
            if isinstance(exc, SMBConnectionClosed) or not self._link.alive:
                self._link.teardown()
            raise err from exc

    def _collect(self, req: object) -> list[tuple[int, str]] | None:
        """The final reply, which is there already (``receive`` does not wait for it)."""
        conn = self._link.conn
        if conn is None:
            raise SMBConnectionClosed("the connection was lost while watching")
        try:
            header = conn.receive(req, timeout=1)
        except SMBResponseException as exc:
            status = status_of(exc)
            if status == STATUS_NOTIFY_ENUM_DIR:
                return []
            if status in (STATUS_NOTIFY_CLEANUP, STATUS_CANCELLED, STATUS_DELETE_PENDING):
                return None
            raise
        return f.parse_notify(header) or []

    async def release(self) -> None:
        """End this watch from outside and wait until its handle is closed (or the deadline):
        the owner's iterator stops, and leaving its ``watch`` block closes the handle."""
        self._ending = True
        self._ready.set()
        with trio.move_on_after(self._timeout_s):
            await self._closed.wait()

    async def aclose(self) -> None:
        """Close the handle (the pending request ends with NOTIFY_CLEANUP); never raises."""
        if self.closed:
            return
        self.closed = True
        try:
            if not self._link.alive:
                return
            link, file_id, request = self._link, self._file_id, self._request

            def close(_live: SmbLink, call: Call) -> None:
                (req,) = link.send([m.close_req(file_id)], call)
                link.wait(req, call)
                if request is not None:
                    link.drain([request], call)

            with trio.CancelScope(shield=True), trio.move_on_after(self._timeout_s):
                try:
                    await self._run(self._where, close)
                except CscdError as exc:
                    log.debug("closing the watch on %s: %s", self._where, exc)
        finally:
            self._closed.set()


class SmbWatches:
    """One connection's open watches, and the gate between opening them and renaming.

    A rename (or delete) of a folder and the opening of watches exclude each other (many
    opens or many renames at once are fine): a watch opened below a folder while it is
    renamed would make Samba refuse the rename, or report changes under the folder's old
    name. Before the rename, this connection's watches on the folder and below it are
    closed: Samba refuses to rename a folder that has a handle open below it from the same
    connection (ACCESS_DENIED; other clients' handles do not count, ``strict rename = no``),
    and a watch on the folder itself would go on reporting under its old name. Their owners
    open them again.
    """

    def __init__(self) -> None:
        self._open: set[SmbWatch] = set()
        self._gate = trio.Condition()
        self._opening = 0
        self._renaming = 0

    @contextlib.asynccontextmanager
    async def opened(self, open_one: Callable[[], Awaitable[SmbWatch]]) -> AsyncIterator[SmbWatch]:
        """A watch ``open_one`` opens once no rename runs, closed on exit (also cancelled)."""
        async with self._gate:
            while self._renaming:
                await self._gate.wait()
            self._opening += 1
        try:
            watcher = await open_one()
            self._open.add(watcher)  # before the gate opens: a rename must find it
        finally:
            with trio.CancelScope(shield=True):
                async with self._gate:
                    self._opening -= 1
                    self._gate.notify_all()
        try:
            yield watcher
        finally:
            self._open.discard(watcher)
            await watcher.aclose()

    @contextlib.asynccontextmanager
    async def none_below(self, spath: str) -> AsyncIterator[None]:
        """While a folder is renamed or deleted: the watches on it and below it closed, and
        none opened until it is done."""
        async with self._gate:
            self._renaming += 1
        try:
            async with self._gate:
                while self._opening:
                    await self._gate.wait()
            below = [wt for wt in self._open if wt.spath == spath or wt.spath.startswith(spath + "\\")]
            for wt in below:
                await wt.release()
            if below:
                log.debug("closed %d watches below %s before renaming or deleting it", len(below), spath)
            yield
        finally:
            with trio.CancelScope(shield=True):
                async with self._gate:
                    self._renaming -= 1
                    self._gate.notify_all()

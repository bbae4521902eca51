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
``SmbUpstream._run`` (whose watchdog would call a quiet folder a hung server) and does not
hold a token of the upstream's limiter: it runs in its own thread (``abandon_on_cancel``),
waking every ``POLL_S`` to notice a cancelled caller or a dead link. Sending the request and
closing the handle are ordinary deadline-bound calls.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio
from smbprotocol.exceptions import SMBConnectionClosed, SMBResponseException

from cscd.errors import CscdError, Unsupported
from cscd.names import is_internal_name, local_name
from cscd.upstream import smb_fsctl as f
from cscd.upstream import smb_wire as w
from cscd.upstream.base import Change, ChangeAction
from cscd.upstream.smb_errors import status_of, translate
from cscd.upstream.smb_wire import Call, SmbLink

log = logging.getLogger(__name__)

T = TypeVar("T")

POLL_S = 0.5
#: How long opening a watch waits for an immediate refusal (NOT_IMPLEMENTED comes at once).
ARM_WAIT_S = 0.25
STATUS_PENDING = 0x00000103
STATUS_NOTIFY_CLEANUP = 0x0000010B
STATUS_NOTIFY_ENUM_DIR = 0x0000010C
STATUS_CANCELLED = 0xC0000120
_UNSUPPORTED = {0xC0000002, 0xC00000BB, 0xC0000010}  # NOT_IMPLEMENTED, NOT_SUPPORTED, ...


def open_watch(
    link: SmbLink, call: Call, spath: str, *, tree: bool
) -> tuple[SmbLink, bytes, object]:
    """Open the folder and arm the first CHANGE_NOTIFY (blocking; in a worker thread).

    The server only starts collecting changes once a request is pending, so the watch is
    armed before the caller looks at the folder. Returns (link, handle, pending request);
    raises ``Unsupported`` if the server refuses at once.
    """
    create = w.create_req(
        spath, access=w.FILE_LIST_DIRECTORY | w.FILE_READ_ATTRIBUTES, options=w.FILE_DIRECTORY_FILE
    )
    (reply,) = link.wait_all(link.send([create], call), call)
    if isinstance(reply, BaseException):
        raise reply
    file_id, _ = w.parse_create(reply)
    (req,) = link.send([f.notify_req(file_id, tree=tree)], call)
    event = req.response_event  # type: ignore[attr-defined]
    if event.wait(ARM_WAIT_S):
        with req.response_event_lock:  # type: ignore[attr-defined]
            status = _status(req)
        if status in _UNSUPPORTED:
            link.drain([req], call)
            (close,) = link.send([w.close_req(file_id)], call)
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


class SmbWatch:
    """Batches of changes below one folder; made by ``SmbUpstream.watch``."""

    def __init__(
        self,
        link: SmbLink,
        file_id: bytes,
        request: object | None,
        *,
        tree: bool,
        where: str,
        server: str,
        timeout_s: float,
        run: Callable[..., Awaitable[T]],
    ) -> None:
        self._link = link
        self._file_id = file_id
        self._tree = tree
        self._where = where
        self._server = server
        self._timeout_s = timeout_s
        self._run = run  # SmbUpstream._run: deadline-bound calls on the live link
        self._request = request
        self._limiter = trio.CapacityLimiter(1)
        self.closed = False

    def __aiter__(self) -> SmbWatch:
        return self

    async def __anext__(self) -> list[Change]:
        """The next batch; ``[]`` means "lost track, rescan". Raises ``StopAsyncIteration``
        once the handle is closed, ``UpstreamUnavailable`` if the link died, ``Unsupported``
        if the server does not notify."""
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
        call = Call(self._timeout_s)
        done = False
        try:
            result = await trio.to_thread.run_sync(
                self._wait_in_thread, call, limiter=self._limiter, abandon_on_cancel=True
            )
            done = True
            return result
        except CscdError:
            raise
        except Exception as exc:
            err = translate(exc, server=self._server, where=self._where)
            if status_of(exc) in _UNSUPPORTED:
                err = Unsupported(f"{self._server} does not send change notifications")
            if isinstance(exc, SMBConnectionClosed) or not self._link.alive:
                self._link.teardown()
            raise err from exc
        finally:
            if not done:
                call.abandoned = True

    def _wait_in_thread(self, call: Call) -> list[tuple[int, str]] | None:
        link = self._link
        if self._request is None:
            (self._request,) = link.send([f.notify_req(self._file_id, tree=self._tree)], call)
        req = self._request
        event = req.response_event  # type: ignore[attr-defined]
        while True:
            call.check()
            if event.wait(POLL_S):
                call.check()  # a caller that went away leaves the reply to the next one
                with req.response_event_lock:  # type: ignore[attr-defined]
                    status = _status(req)
                    if status == STATUS_PENDING:
                        event.clear()  # the interim reply: the real one comes later
                        continue
                self._request = None
                assert link.conn is not None
                try:
                    header = link.conn.receive(req, timeout=max(1.0, self._timeout_s))
                except SMBResponseException as exc:
                    status = status_of(exc)
                    if status == STATUS_NOTIFY_ENUM_DIR:
                        return []
                    if status in (STATUS_NOTIFY_CLEANUP, STATUS_CANCELLED):
                        return None
                    raise
                return f.parse_notify(header) or []
            if not link.alive:
                raise SMBConnectionClosed("the connection was lost while watching")

    async def aclose(self) -> None:
        """Close the handle (the pending request ends with NOTIFY_CLEANUP); never raises."""
        if self.closed:
            return
        self.closed = True
        if not self._link.alive:
            return
        link, file_id, request = self._link, self._file_id, self._request

        def close(_live: SmbLink, call: Call) -> None:
            (req,) = link.send([w.close_req(file_id)], call)
            link.wait(req, call)
            if request is not None:
                link.drain([request], call)

        with trio.CancelScope(shield=True), trio.move_on_after(self._timeout_s):
            try:
                await self._run(self._where, close)
            except CscdError as exc:
                log.debug("closing the watch on %s: %s", self._where, exc)


"""Moving file content over SMB: reads and uploads, pipelined.

Owns the blocking request sequences that carry bytes, as ``smb_ops`` owns those that do
not: a read of up to 1 MiB is one related compound (CREATE + READ + CLOSE); larger reads and
uploads keep ``PIPELINE_DEPTH`` requests of 1 MiB in flight. An upload writes a temporary
and renames it over its target (``smb_upload`` owns the check before the rename); a new
small file goes in one round trip. Runs in worker threads; no trio, no error translation.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Callable

from smbprotocol.exceptions import SMBResponseException
from smbprotocol.file_info import FileInformationClass

from cscd.errors import CscdError, UpstreamError
from cscd.sealed_files import Source, read_source
from cscd.upstream import smb_messages as m
from cscd.upstream import smb_ops as ops
from cscd.upstream.smb_errors import STATUS_END_OF_FILE, status_of
from cscd.upstream.smb_messages import Attrs
from cscd.upstream.smb_wire import Call, SmbLink

log = logging.getLogger(__name__)

#: Requests of one transfer in flight at once (8 × 1 MiB = 128 credits).
PIPELINE_DEPTH = 8


def read(link: SmbLink, call: Call, spath: str, offset: int, length: int) -> bytes:
    """Up to ``length`` bytes at ``offset``; shorter only at end of file."""
    conn = link.conn
    assert conn is not None
    chunk = min(m.MAX_IO, int(conn.max_read_size))
    access = m.FILE_READ_DATA | m.FILE_READ_ATTRIBUTES
    create = m.create_req(spath, access=access, options=m.FILE_NON_DIRECTORY_FILE)
    first = min(length, chunk)
    if length <= chunk:
        msgs = (
            [create, m.read_req(ops.R, offset, first), m.close_req(ops.R)]
            if first
            else [create, m.close_req(ops.R)]
        )
        replies = link.wait_all(link.send(msgs, call, related=True), call)
        if isinstance(replies[0], BaseException):
            raise replies[0]
        if not first:
            return b""
        data = _read_reply(replies[1])
        link.stats.add(read=len(data))
        return bytes(data)
    replies = link.wait_all(
        link.send([create, m.read_req(ops.R, offset, first)], call, related=True), call
    )
    if isinstance(replies[0], BaseException):
        raise replies[0]
    file_id, attrs = m.parse_create(replies[0])
    try:
        data = _read_reply(replies[1])
        link.stats.add(read=len(data))
        if len(data) < first:
            return bytes(data)
        end = min(offset + length, attrs.size)
        pieces = [data]
        _pipelined_read(link, call, file_id, offset + first, end, chunk, pieces)
        return b"".join(pieces)
    finally:
        ops.close_quietly(link, call, file_id)


def _read_reply(reply: object) -> memoryview | bytes:
    if isinstance(reply, BaseException):
        if status_of(reply) == STATUS_END_OF_FILE:
            return b""
        raise reply
    return m.parse_read(reply)


def _pipelined_read(
    link: SmbLink,
    call: Call,
    file_id: bytes,
    start: int,
    end: int,
    chunk: int,
    out: list[memoryview | bytes],
) -> None:
    """Append ``[start, end)`` to ``out`` with up to ``PIPELINE_DEPTH`` requests in flight.

    Stops early at end of file (the file shrank since it was opened).
    """
    todo = collections.deque((o, min(chunk, end - o)) for o in range(start, end, chunk))
    inflight: collections.deque[tuple[int, int, object]] = collections.deque()
    pieces: dict[int, memoryview | bytes] = {}
    eof_at = end
    try:
        while todo or inflight:
            while todo and len(inflight) < PIPELINE_DEPTH:
                off, n = todo[0]
                if off >= eof_at:
                    todo.popleft()
                    continue
                msg = m.read_req(file_id, off, n)
                req = link.try_send(msg, call) if inflight else link.send([msg], call)[0]
                if req is None:
                    break  # no credits free: first collect a reply of our own
                todo.popleft()
                inflight.append((off, n, req))
            if not inflight:
                break
            off, n, req = inflight.popleft()
            try:
                data: memoryview | bytes = m.parse_read(link.wait(req, call))
            except SMBResponseException as exc:
                if status_of(exc) != STATUS_END_OF_FILE:
                    raise
                data = b""
            link.stats.add(read=len(data))
            pieces[off] = data
            if len(data) < n:
                if not data:
                    eof_at = min(eof_at, off)
                else:
                    todo.appendleft((off + len(data), n - len(data)))
    except BaseException:
        link.drain([req for _, _, req in inflight], call)
        raise
    pos = start
    while pos < eof_at and pieces.get(pos):
        piece = pieces.pop(pos)
        out.append(piece)
        pos += len(piece)


#: what an upload temporary is opened with: write it, set its time, rename or delete it
_UPLOAD_ACCESS = m.FILE_WRITE_DATA | m.FILE_READ_ATTRIBUTES | m.FILE_WRITE_ATTRIBUTES | m.DELETE | m.SYNCHRONIZE


def upload(
    link: SmbLink,
    call: Call,
    *,
    temp_spath: str,
    target_spath: str,
    fd: Source,
    size: int,
    mtime_ns: int,
    replace: bool,
    verify: Callable[[SmbLink, Call], None],
    leftovers: set[str],
) -> tuple[Attrs, int]:
    """Write ``fd[:size]`` to ``temp_spath``, set its write time, ``verify()``, rename it.

    ``verify`` runs right before the rename (it raises ``Conflict``). On any failure the
    temporary file is deleted if the link still works, else its path is added to
    ``leftovers`` for a later upload to delete; the exception is re-raised either way.
    """
    conn = link.conn
    assert conn is not None
    chunk = min(m.MAX_IO, int(conn.max_write_size))
    create = m.create_req(
        temp_spath, access=_UPLOAD_ACCESS, disposition=m.FILE_CREATE, options=m.FILE_NON_DIRECTORY_FILE
    )
    first = pread_exact(fd, min(size, chunk), 0)
    msgs = [create, m.write_req(ops.R, 0, first)] if first else [create]
    try:
        replies = link.wait_all(link.send(msgs, call, related=True), call)
    except BaseException:
        leftovers.add(temp_spath)  # it may have been created; a later upload deletes it
        raise
    if isinstance(replies[0], BaseException):
        raise replies[0]
    file_id, _ = m.parse_create(replies[0])
    closed = renamed = False
    try:
        if first:
            if isinstance(replies[1], BaseException):
                raise replies[1]
            count_write(link, replies[1], len(first))
        if size > len(first):
            _pipelined_write(link, call, fd, file_id, len(first), size, chunk)
        call.check()
        verify(link, call)
        call.check()
        reqs = link.send(m.rename_into_place_reqs(file_id, target_spath, mtime_ns=mtime_ns, replace=replace), call)
        replies = link.wait_all(reqs, call)
        renamed = not isinstance(replies[1], BaseException)
        closed = not isinstance(replies[3], BaseException)
        ops.raise_first(replies)
        attrs = m.parse_close(replies[3])
        assert attrs is not None
        return attrs, m.parse_file_id(replies[2])
    except BaseException:
        # After a successful rename the handle is the target: never delete through it.
        if not renamed and not discard_temp(link, call, file_id, temp_spath, closed=closed):
            leftovers.add(temp_spath)
        raise


#: A new file this small goes up in one round trip (``upload_new_small``).
SMALL_UPLOAD_BYTES = 256 << 10


def upload_new_small(
    link: SmbLink,
    call: Call,
    *,
    temp_spath: str,
    target_spath: str,
    fd: Source,
    size: int,
    mtime_ns: int,
    leftovers: set[str],
) -> tuple[Attrs, int]:
    """A new file of at most ``SMALL_UPLOAD_BYTES`` in one related compound, one round trip:
    CREATE the temporary, WRITE, SET_INFO its write time, rename it to ``target_spath``
    without replacing, QUERY its id, CLOSE. The rename that must not replace is the check
    that the name is still free (STATUS_OBJECT_NAME_COLLISION otherwise, which the caller
    turns into ``Conflict``): atomic on the server, so no separate look first.

    The temporary keeps a crash or a lost link from leaving a half-written file under the
    real name. On failure the temporary is deleted when the link allows, else remembered in
    ``leftovers``; the exception is re-raised.
    """
    data = pread_exact(fd, size, 0) if size else b""
    msgs = [m.create_req(temp_spath, access=_UPLOAD_ACCESS, disposition=m.FILE_CREATE,
                         options=m.FILE_NON_DIRECTORY_FILE)]
    if data:
        msgs.append(m.write_req(ops.R, 0, data))
    msgs += [
        m.set_info_req(ops.R, FileInformationClass.FILE_BASIC_INFORMATION, m.basic_info(mtime_ns=mtime_ns)),
        m.set_info_req(ops.R, FileInformationClass.FILE_RENAME_INFORMATION, m.rename_info(target_spath, replace=False)),
        m.query_id_req(ops.R),
        m.close_req(ops.R, postquery=True),
    ]
    try:
        replies = link.wait_all(link.send(msgs, call, related=True), call)
    except BaseException:
        leftovers.add(temp_spath)  # created or not, renamed or not: a later upload looks
        raise
    create, *rest = replies
    if isinstance(create, BaseException):
        raise create
    file_id, _ = m.parse_create(create)
    query, close = rest[-2], rest[-1]
    rename = rest[-3]
    if data and not isinstance(rest[0], BaseException):
        count_write(link, rest[0], len(data))
    if not any(isinstance(r, BaseException) for r in rest):
        attrs = m.parse_close(close)
        assert attrs is not None
        return attrs, m.parse_file_id(query)
    renamed = not isinstance(rename, BaseException)
    if not renamed and not discard_temp(link, call, file_id, temp_spath,
                                         closed=not isinstance(close, BaseException)):
        leftovers.add(temp_spath)
    if renamed and isinstance(close, BaseException):
        ops.close_quietly(link, call, file_id)
    ops.raise_first(rest)
    raise AssertionError("unreachable")


def pread_exact(fd: Source, n: int, offset: int) -> bytes:
    """``n`` bytes of ``fd`` at ``offset``; the local file must not shrink during the upload.

    Local failures raise a plain ``CscdError`` (EIO): they are not the server's fault.
    """
    try:
        data = read_source(fd, n, offset)
        while len(data) < n:
            more = read_source(fd, n - len(data), offset + len(data))
            if not more:
                break
            data += more
    except OSError as exc:
        raise CscdError(f"cannot read the local file to upload: {exc}") from exc
    if len(data) < n:
        raise CscdError(
            f"the local file ended at {offset + len(data)} bytes, "
            f"{n - len(data)} short of the size to upload"
        )
    return data


def count_write(link: SmbLink, reply: object, expected: int) -> None:
    count = m.parse_write(reply)
    link.stats.add(written=count)
    if count != expected:
        raise UpstreamError(f"the server accepted {count} of {expected} bytes of a write")


def _pipelined_write(
    link: SmbLink, call: Call, fd: Source, file_id: bytes, start: int, end: int, chunk: int
) -> None:
    inflight: collections.deque[tuple[int, object]] = collections.deque()
    pos = start
    try:
        while pos < end or inflight:
            while pos < end and len(inflight) < PIPELINE_DEPTH:
                call.check()
                if link.rate_limit is not None:
                    link.rate_limit.take(min(chunk, end - pos), call.touch)
                data = pread_exact(fd, min(chunk, end - pos), pos)
                msg = m.write_req(file_id, pos, data)
                req = link.try_send(msg, call) if inflight else link.send([msg], call)[0]
                if req is None:
                    break  # no credits free: first collect a reply of our own
                inflight.append((len(data), req))
                pos += len(data)
            n, req = inflight.popleft()
            count_write(link, link.wait(req, call), n)
    except BaseException:
        link.drain([req for _, req in inflight], call)
        raise


def discard_temp(
    link: SmbLink, call: Call, file_id: bytes, temp_spath: str, *, closed: bool
) -> bool:
    """Best effort: delete the upload temporary; False if it may still exist."""
    call = Call(call.timeout_s)  # also when the caller went away: this must still run
    if not link.alive:
        log.info("upload temporary %s left on the server: the connection is gone", temp_spath)
        return False
    try:
        if not closed:
            reqs = link.send(
                [
                    m.set_info_req(
                        file_id,
                        FileInformationClass.FILE_DISPOSITION_INFORMATION,
                        m.disposition_info(),
                    ),
                    m.close_req(file_id),
                ],
                call,
            )
            link.wait_all(reqs, call)
        else:
            ops.delete(link, call, temp_spath, is_dir=False)
    except Exception as exc:  # noqa: BLE001 - best effort; the original error matters
        log.info("could not delete upload temporary %s: %s", temp_spath, exc)
        return False
    return True

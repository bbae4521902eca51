"""The blocking SMB operations behind ``SmbUpstream``: one function per protocol method.

Owns the request sequences (which CREATE options, which compounds, how many requests in
flight) and nothing else: no trio, no error translation, no path validation — ``smb.py``
does those and calls these functions in worker threads. Every request goes through
``SmbLink.send``/``wait`` and so carries the call's deadline.

Round trips: ``stat``, ``mkdir``, ``delete``, ``rename``, ``set_mtime`` and a read of up to
1 MiB are one related compound each (CREATE + work + CLOSE), so no handle stays open between
calls and nothing can read a stale handle after another client replaced a file. Larger reads
and uploads pipeline 1 MiB requests, ``PIPELINE_DEPTH`` in flight.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Callable, Mapping, Sequence

from smbprotocol.connection import SMB2Echo
from smbprotocol.exceptions import SMBResponseException
from smbprotocol.file_info import FileInformationClass

from cscd.errors import CscdError, UpstreamError
from cscd.upstream import smb_wire as w
from cscd.upstream.smb_errors import STATUS_END_OF_FILE, STATUS_NO_EAS_ON_FILE, STATUS_NO_MORE_FILES, status_of
from cscd.upstream.smb_wire import Attrs, Call, DirEntry, SmbLink

log = logging.getLogger(__name__)

#: Requests of one transfer in flight at once (8 × 1 MiB = 128 credits).
PIPELINE_DEPTH = 8
R = w.RELATED_FILE_ID


def _raise_first(replies: list[object]) -> None:
    for r in replies:
        if isinstance(r, BaseException):
            raise r


def stat(link: SmbLink, call: Call, spath: str) -> tuple[Attrs, int]:
    """Attributes and file id of ``spath``: CREATE + QUERY_INFO(internal) + CLOSE."""
    reqs = link.send(
        [w.create_req(spath, access=w.FILE_READ_ATTRIBUTES), w.query_id_req(R), w.close_req(R)],
        call,
        related=True,
    )
    replies = link.wait_all(reqs, call)
    _raise_first(replies)
    _, attrs = w.parse_create(replies[0])
    return attrs, w.parse_file_id(replies[1])


def probe(link: SmbLink, call: Call, spath: str) -> None:
    """Open and close the target folder itself: one round trip, no data."""
    reqs = link.send(
        [
            w.create_req(spath, access=w.FILE_READ_ATTRIBUTES, options=w.FILE_DIRECTORY_FILE),
            w.close_req(R),
        ],
        call,
        related=True,
    )
    _raise_first(link.wait_all(reqs, call))


def space(link: SmbLink, call: Call, spath: str) -> tuple[int, int]:
    """The share's size and the space left to this user: CREATE + QUERY_INFO(fs) + CLOSE."""
    reqs = link.send(
        [
            w.create_req(spath, access=w.FILE_READ_ATTRIBUTES, options=w.FILE_DIRECTORY_FILE),
            w.fs_full_size_req(R),
            w.close_req(R),
        ],
        call,
        related=True,
    )
    replies = link.wait_all(reqs, call)
    _raise_first(replies)
    return w.parse_fs_full_size(replies[1])


def echo(link: SmbLink, call: Call) -> None:
    """SMB2 ECHO: proves the connection and the server's attention; opens nothing."""
    (req,) = link.send([SMB2Echo()], call)
    link.wait(req, call)


def list_dir(
    link: SmbLink, call: Call, spath: str, *, small: bool = True,
    page: Callable[[list[DirEntry]], None] | None = None,
) -> tuple[list[DirEntry], bool]:
    """Every entry of a folder (including ``.``/``..``); returns (entries, fitted).

    ``small``: first try the whole listing in one frame, CREATE + QUERY_DIRECTORY twice +
    CLOSE as a related compound. A folder whose entries fit one buffer ends with
    STATUS_NO_MORE_FILES in the second query (Samba runs the CLOSE after that warning), and
    then ``fitted`` is True. Otherwise, or without ``small``, the folder is read in batches
    until NO_MORE_FILES (``fitted`` says whether one batch held it all): 3 frames at least,
    which an idle client's slow revalidation cannot afford (issue 16) and a big folder needs.
    ``page``: each batch of that second way is handed to it as soon as it is parsed, not
    kept (the caller merges it while the server works on the next; returned entries are
    then only a one-frame listing's).
    """
    max_out = min(w.MAX_IO, int(link.conn.max_transact_size or 65536))  # type: ignore[union-attr]
    create = w.create_req(
        spath, access=w.FILE_LIST_DIRECTORY | w.FILE_READ_ATTRIBUTES, options=w.FILE_DIRECTORY_FILE
    )
    if small:
        reqs = link.send(
            [create, w.query_dir_req(R, restart=True, max_output=max_out),
             w.query_dir_req(R, restart=False, max_output=max_out), w.close_req(R)],
            call, related=True,
        )
        replies = link.wait_all(reqs, call)
        if isinstance(replies[0], BaseException):
            raise replies[0]
        first, second = replies[1], replies[2]
        if isinstance(first, BaseException) and status_of(first) == STATUS_NO_MORE_FILES:
            return [], True  # (no "." either: not a Samba answer, but a valid one)
        if isinstance(first, BaseException):
            raise first
        if isinstance(second, BaseException) and status_of(second) == STATUS_NO_MORE_FILES:
            return w.parse_dir(first), True
        if isinstance(second, BaseException):
            raise second
        # More than one buffer: read it again in batches (the handle is closed already).
        create = w.create_req(
            spath, access=w.FILE_LIST_DIRECTORY | w.FILE_READ_ATTRIBUTES,
            options=w.FILE_DIRECTORY_FILE,
        )
    reqs = link.send(
        [create, w.query_dir_req(R, restart=True, max_output=max_out)], call, related=True
    )
    replies = link.wait_all(reqs, call)
    if isinstance(replies[0], BaseException):
        raise replies[0]
    file_id, _ = w.parse_create(replies[0])
    entries: list[DirEntry] = []
    batches = 0
    try:
        reply = replies[1]
        while True:
            if isinstance(reply, BaseException):
                if status_of(reply) == STATUS_NO_MORE_FILES:
                    break
                raise reply
            batches += 1
            # Ask for the next batch before parsing this one: the server works on it meanwhile
            # (100,000 entries: 2.1 s before, parsing ~1 s of it).
            (req,) = link.send([w.query_dir_req(file_id, restart=False, max_output=max_out)], call)
            if page is None:
                entries.extend(w.parse_dir(reply))
            else:
                page(w.parse_dir(reply))
            try:
                reply = link.wait(req, call)
            except SMBResponseException as exc:
                reply = exc
    finally:
        _close_quietly(link, call, file_id)
    return entries, batches <= 1


def read(link: SmbLink, call: Call, spath: str, offset: int, length: int) -> bytes:
    """Up to ``length`` bytes at ``offset``; shorter only at end of file."""
    conn = link.conn
    assert conn is not None
    chunk = min(w.MAX_IO, int(conn.max_read_size))
    access = w.FILE_READ_DATA | w.FILE_READ_ATTRIBUTES
    create = w.create_req(spath, access=access, options=w.FILE_NON_DIRECTORY_FILE)
    first = min(length, chunk)
    if length <= chunk:
        msgs = (
            [create, w.read_req(R, offset, first), w.close_req(R)]
            if first
            else [create, w.close_req(R)]
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
        link.send([create, w.read_req(R, offset, first)], call, related=True), call
    )
    if isinstance(replies[0], BaseException):
        raise replies[0]
    file_id, attrs = w.parse_create(replies[0])
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
        _close_quietly(link, call, file_id)


def _read_reply(reply: object) -> memoryview | bytes:
    if isinstance(reply, BaseException):
        if status_of(reply) == STATUS_END_OF_FILE:
            return b""
        raise reply
    return w.parse_read(reply)


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
                msg = w.read_req(file_id, off, n)
                req = link.try_send(msg, call) if inflight else link.send([msg], call)[0]
                if req is None:
                    break  # no credits free: first collect a reply of our own
                todo.popleft()
                inflight.append((off, n, req))
            if not inflight:
                break
            off, n, req = inflight.popleft()
            try:
                data: memoryview | bytes = w.parse_read(link.wait(req, call))
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
_UPLOAD_ACCESS = w.FILE_WRITE_DATA | w.FILE_READ_ATTRIBUTES | w.FILE_WRITE_ATTRIBUTES | w.DELETE | w.SYNCHRONIZE


def upload(
    link: SmbLink,
    call: Call,
    *,
    temp_spath: str,
    target_spath: str,
    fd: int,
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
    chunk = min(w.MAX_IO, int(conn.max_write_size))
    create = w.create_req(
        temp_spath, access=_UPLOAD_ACCESS, disposition=w.FILE_CREATE, options=w.FILE_NON_DIRECTORY_FILE
    )
    first = _pread_exact(fd, min(size, chunk), 0)
    msgs = [create, w.write_req(R, 0, first)] if first else [create]
    try:
        replies = link.wait_all(link.send(msgs, call, related=True), call)
    except BaseException:
        leftovers.add(temp_spath)  # it may have been created; a later upload deletes it
        raise
    if isinstance(replies[0], BaseException):
        raise replies[0]
    file_id, _ = w.parse_create(replies[0])
    closed = renamed = False
    try:
        if first:
            if isinstance(replies[1], BaseException):
                raise replies[1]
            _count_write(link, replies[1], len(first))
        if size > len(first):
            _pipelined_write(link, call, fd, file_id, len(first), size, chunk)
        call.check()
        verify(link, call)
        call.check()
        reqs = link.send(
            [
                w.set_info_req(
                    file_id,
                    FileInformationClass.FILE_BASIC_INFORMATION,
                    w.basic_info(mtime_ns=mtime_ns),
                ),
                w.set_info_req(
                    file_id,
                    FileInformationClass.FILE_RENAME_INFORMATION,
                    w.rename_info(target_spath, replace=replace),
                ),
                w.query_id_req(file_id),
                w.close_req(file_id, postquery=True),
            ],
            call,
        )
        replies = link.wait_all(reqs, call)
        renamed = not isinstance(replies[1], BaseException)
        closed = not isinstance(replies[3], BaseException)
        _raise_first(replies)
        attrs = w.parse_close(replies[3])
        assert attrs is not None
        return attrs, w.parse_file_id(replies[2])
    except BaseException:
        # After a successful rename the handle is the target: never delete through it.
        if not renamed and not _discard_temp(link, call, file_id, temp_spath, closed=closed):
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
    fd: int,
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
    data = _pread_exact(fd, size, 0) if size else b""
    msgs = [w.create_req(temp_spath, access=_UPLOAD_ACCESS, disposition=w.FILE_CREATE,
                         options=w.FILE_NON_DIRECTORY_FILE)]
    if data:
        msgs.append(w.write_req(R, 0, data))
    msgs += [
        w.set_info_req(R, FileInformationClass.FILE_BASIC_INFORMATION, w.basic_info(mtime_ns=mtime_ns)),
        w.set_info_req(R, FileInformationClass.FILE_RENAME_INFORMATION, w.rename_info(target_spath, replace=False)),
        w.query_id_req(R),
        w.close_req(R, postquery=True),
    ]
    try:
        replies = link.wait_all(link.send(msgs, call, related=True), call)
    except BaseException:
        leftovers.add(temp_spath)  # created or not, renamed or not: a later upload looks
        raise
    create, *rest = replies
    if isinstance(create, BaseException):
        raise create
    file_id, _ = w.parse_create(create)
    query, close = rest[-2], rest[-1]
    rename = rest[-3]
    if data and not isinstance(rest[0], BaseException):
        _count_write(link, rest[0], len(data))
    if not any(isinstance(r, BaseException) for r in rest):
        attrs = w.parse_close(close)
        assert attrs is not None
        return attrs, w.parse_file_id(query)
    renamed = not isinstance(rename, BaseException)
    if not renamed and not _discard_temp(link, call, file_id, temp_spath,
                                         closed=not isinstance(close, BaseException)):
        leftovers.add(temp_spath)
    if renamed and isinstance(close, BaseException):
        _close_quietly(link, call, file_id)
    _raise_first(rest)
    raise AssertionError("unreachable")


def _pread_exact(fd: int, n: int, offset: int) -> bytes:
    """``n`` bytes of ``fd`` at ``offset``; the local file must not shrink during the upload.

    Local failures raise a plain ``CscdError`` (EIO): they are not the server's fault.
    """
    try:
        data = os.pread(fd, n, offset)
        while len(data) < n:
            more = os.pread(fd, n - len(data), offset + len(data))
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


def _count_write(link: SmbLink, reply: object, expected: int) -> None:
    count = w.parse_write(reply)
    link.stats.add(written=count)
    if count != expected:
        raise UpstreamError(f"the server accepted {count} of {expected} bytes of a write")


def _pipelined_write(
    link: SmbLink, call: Call, fd: int, file_id: bytes, start: int, end: int, chunk: int
) -> None:
    inflight: collections.deque[tuple[int, object]] = collections.deque()
    pos = start
    try:
        while pos < end or inflight:
            while pos < end and len(inflight) < PIPELINE_DEPTH:
                call.check()
                if link.rate_limit is not None:
                    link.rate_limit.take(min(chunk, end - pos), call.touch)
                data = _pread_exact(fd, min(chunk, end - pos), pos)
                msg = w.write_req(file_id, pos, data)
                req = link.try_send(msg, call) if inflight else link.send([msg], call)[0]
                if req is None:
                    break  # no credits free: first collect a reply of our own
                inflight.append((len(data), req))
                pos += len(data)
            n, req = inflight.popleft()
            _count_write(link, link.wait(req, call), n)
    except BaseException:
        link.drain([req for _, req in inflight], call)
        raise


def _discard_temp(
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
                    w.set_info_req(
                        file_id,
                        FileInformationClass.FILE_DISPOSITION_INFORMATION,
                        w.disposition_info(),
                    ),
                    w.close_req(file_id),
                ],
                call,
            )
            link.wait_all(reqs, call)
        else:
            delete(link, call, temp_spath, is_dir=False)
    except Exception as exc:  # noqa: BLE001 - best effort; the original error matters
        log.info("could not delete upload temporary %s: %s", temp_spath, exc)
        return False
    return True


def _close_quietly(link: SmbLink, call: Call, file_id: bytes) -> None:
    if not link.alive:
        return
    try:
        (req,) = link.send([w.close_req(file_id)], call)
        link.wait(req, call)
    except Exception as exc:  # noqa: BLE001 - the operation's own outcome matters, not this
        log.debug("close failed: %s", exc)


def mkdir(link: SmbLink, call: Call, spath: str) -> tuple[Attrs, int]:
    create = w.create_req(
        spath,
        access=w.FILE_READ_ATTRIBUTES,
        disposition=w.FILE_CREATE,
        options=w.FILE_DIRECTORY_FILE,
    )
    return _with_postquery(link, call, create, [])


def delete(link: SmbLink, call: Call, spath: str, *, is_dir: bool) -> None:
    options = w.FILE_DIRECTORY_FILE if is_dir else w.FILE_NON_DIRECTORY_FILE
    reqs = link.send(
        [
            w.create_req(spath, access=w.DELETE | w.FILE_READ_ATTRIBUTES, options=options),
            w.set_info_req(
                R, FileInformationClass.FILE_DISPOSITION_INFORMATION, w.disposition_info()
            ),
            w.close_req(R),
        ],
        call,
        related=True,
    )
    _raise_first(link.wait_all(reqs, call))


def rename(
    link: SmbLink, call: Call, old_spath: str, new_spath: str, *, replace: bool
) -> tuple[Attrs, int]:
    create = w.create_req(old_spath, access=w.DELETE | w.FILE_READ_ATTRIBUTES)
    info = w.set_info_req(
        R, FileInformationClass.FILE_RENAME_INFORMATION, w.rename_info(new_spath, replace=replace)
    )
    return _with_postquery(link, call, create, [info])


def set_mtime(link: SmbLink, call: Call, spath: str, mtime_ns: int) -> tuple[Attrs, int]:
    create = w.create_req(spath, access=w.FILE_WRITE_ATTRIBUTES | w.FILE_READ_ATTRIBUTES)
    info = w.set_info_req(
        R, FileInformationClass.FILE_BASIC_INFORMATION, w.basic_info(mtime_ns=mtime_ns)
    )
    return _with_postquery(link, call, create, [info])


def supports_eas(link: SmbLink, call: Call, spath: str) -> bool:
    """Whether the share stores EAs: the removal of an EA the folder ``spath`` does not have
    succeeds where it does and fails with STATUS_EAS_NOT_SUPPORTED where it does not (Samba
    sets no FILE_SUPPORTS_EXTENDED_ATTRIBUTES either way, and answers a read alike)."""
    reqs = link.send(
        [w.create_req(spath, access=w.FILE_WRITE_EA | w.FILE_READ_ATTRIBUTES, options=w.FILE_DIRECTORY_FILE),
         w.set_info_req(R, FileInformationClass.FILE_FULL_EA_INFORMATION, w.ea_info({b"cscd.probe": b""})),
         w.close_req(R)],
        call,
        related=True,
    )
    replies = link.wait_all(reqs, call)  # a broken link raises here; a refusal is an answer
    for reply in replies[:2]:
        if isinstance(reply, BaseException):
            log.debug("EAs on %r: %s", spath, reply)
            return False
    return True


def get_eas(link: SmbLink, call: Call, spath: str) -> list[tuple[bytes, bytes]]:
    """Every EA of ``spath``: CREATE + QUERY_INFO(FileFullEaInformation) + CLOSE."""
    reqs = link.send(
        [w.create_req(spath, access=w.FILE_READ_EA | w.FILE_READ_ATTRIBUTES), w.query_ea_req(R), w.close_req(R)],
        call,
        related=True,
    )
    replies = link.wait_all(reqs, call)
    if isinstance(replies[0], BaseException):
        raise replies[0]
    if isinstance(replies[1], BaseException):
        if status_of(replies[1]) == STATUS_NO_EAS_ON_FILE:
            return []
        raise replies[1]
    return w.parse_eas(replies[1])


def eas_of_many(link: SmbLink, call: Call, spaths: Sequence[str], batch: int = 32
                ) -> list[list[tuple[bytes, bytes]] | None]:
    """``get_eas`` of each path, ``batch`` compounds in flight at a time; None for a path
    that failed (gone meanwhile, no access): the next listing asks again."""
    out: list[list[tuple[bytes, bytes]] | None] = []
    for start in range(0, len(spaths), batch):
        sent = [
            link.send(
                [w.create_req(p, access=w.FILE_READ_EA | w.FILE_READ_ATTRIBUTES), w.query_ea_req(R),
                 w.close_req(R)],
                call,
                related=True,
            )
            for p in spaths[start : start + batch]
        ]
        for reqs in sent:
            replies = link.wait_all(reqs, call)
            if isinstance(replies[0], BaseException):
                out.append(None)
            elif isinstance(replies[1], BaseException):
                out.append([] if status_of(replies[1]) == STATUS_NO_EAS_ON_FILE else None)
            else:
                out.append(w.parse_eas(replies[1]))
    return out


def set_eas(link: SmbLink, call: Call, spath: str, eas: Mapping[bytes, bytes]) -> None:
    """Make ``eas`` the whole EA set of ``spath``: the ones it has and ``eas`` lacks are
    removed (an empty value), in one SET_INFO after reading the current set."""
    current = {name.lower(): name for name, _ in get_eas(link, call, spath)}
    wanted = {name.lower() for name in eas}
    change = dict(eas)
    for low, name in current.items():
        if low not in wanted:
            change[name] = b""
    if not change:
        return
    create = w.create_req(spath, access=w.FILE_WRITE_EA | w.FILE_READ_ATTRIBUTES)
    info = w.set_info_req(R, FileInformationClass.FILE_FULL_EA_INFORMATION, w.ea_info(change))
    replies = link.wait_all(link.send([create, info, w.close_req(R)], call, related=True), call)
    _raise_first(replies)


def _with_postquery(
    link: SmbLink, call: Call, create: object, middle: list[object]
) -> tuple[Attrs, int]:
    """CREATE + ``middle`` + QUERY_INFO(id) + CLOSE(postquery) as one compound."""
    msgs = [create, *middle, w.query_id_req(R), w.close_req(R, postquery=True)]
    replies = link.wait_all(link.send(msgs, call, related=True), call)
    _raise_first(replies)
    attrs = w.parse_close(replies[-1])
    if attrs is None:  # the server ignored the post-query flag
        _, attrs = w.parse_create(replies[0])
    return attrs, w.parse_file_id(replies[-2])

"""The blocking delta upload behind ``SmbUpstream.upload_delta``: server-side copies plus writes.

Owns the request sequence: open the base for reading and get its resume key
(FSCTL_SRV_REQUEST_RESUME_KEY), create (or reopen, to resume) the temporary, then one
pipeline of FSCTL_SRV_COPYCHUNK_WRITE requests for ranges the base has and 1 MiB WRITEs
for the rest, in file order, ``PIPELINE_DEPTH`` requests in flight; then the same checked
rename as a plain upload. Runs in a worker thread (``smb.py`` calls it through ``_run``);
no trio, no error translation here.

Resume: requests go out in file order and never span more than ``RESUME_WINDOW`` bytes
from the lowest one still unanswered, so every byte below (temporary's size −
``RESUME_WINDOW``) was acknowledged. A resumable upload interrupted by a lost link or a
cancellation leaves its temporary (named after the content by the caller), and the next
attempt redoes only the ranges from there on. Any other failure deletes the temporary.

A server that refuses copies (NOT_SUPPORTED, INVALID_DEVICE_REQUEST, NOT_IMPLEMENTED, or
INVALID_PARAMETER for limits lower than Samba's and Windows') gets the same ranges as
writes from the local file, which holds the whole new content; ``CopyState`` remembers it
for the life of the upstream.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from smbprotocol.exceptions import SMBResponseException
from smbprotocol.file_info import FileInformationClass

from cscd.errors import UpstreamError
from cscd.sealed_files import Source
from cscd.upstream import smb_fsctl as f
from cscd.upstream import smb_messages as m
from cscd.upstream.base import Extent
from cscd.upstream.smb_errors import Abandoned, WireTimeout, status_of
from cscd.upstream.smb_messages import Attrs
from cscd.upstream.smb_ops import close_quietly, raise_first
from cscd.upstream.smb_transfer import PIPELINE_DEPTH, count_write, discard_temp, pread_exact
from cscd.upstream.smb_wire import Call, SmbLink

log = logging.getLogger(__name__)

#: Largest span of the new file with requests in flight (the resume safety margin).
RESUME_WINDOW = 32 << 20
_REFUSED = {0xC00000BB, 0xC0000010, 0xC0000002, 0xC000000D}


@dataclass
class CopyState:
    """Whether this server still accepts server-side copies (cleared on the first refusal)."""

    enabled: bool = True


class CopyRefused(Exception):
    """A copy request was refused; continue with writes from ``offset`` on."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"server-side copy refused at offset {offset}")
        self.offset = offset


@dataclass(frozen=True, slots=True)
class _Op:
    """One request: a WRITE of ``[offset, offset + length)`` or a copy of ``copies``."""

    offset: int
    length: int
    copies: tuple[tuple[int, int, int], ...] | None = None  # (source, target, length)


def build_ops(extents: Sequence[Extent], start: int, *, copy: bool, io_size: int) -> list[_Op]:
    """The requests for everything of ``extents`` at or after ``start``, in file order."""
    ops: list[_Op] = []
    group: list[tuple[int, int, int]] = []

    def flush() -> None:
        if group:
            end = group[-1][1] + group[-1][2]
            ops.append(_Op(group[0][1], end - group[0][1], tuple(group)))
            group.clear()

    for e in extents:
        lo, hi = max(e.offset, start), e.offset + e.length
        if lo >= hi:
            continue
        if e.source is None or not copy:
            flush()
            ops.extend(_Op(o, min(io_size, hi - o)) for o in range(lo, hi, io_size))
            continue
        src = e.source + (lo - e.offset)
        for o in range(lo, hi, f.COPY_MAX_CHUNK_BYTES):
            n = min(f.COPY_MAX_CHUNK_BYTES, hi - o)
            total = sum(c[2] for c in group)
            if len(group) >= f.COPY_MAX_CHUNKS or total + n > f.COPY_MAX_REQUEST_BYTES:
                flush()
            group.append((src + (o - lo), o, n))
    flush()
    return ops


def _transfer(
    link: SmbLink, call: Call, fd: Source, file_id: bytes, key: bytes | None, ops: list[_Op]
) -> None:
    """Send ``ops`` pipelined, in order, within ``RESUME_WINDOW``; check every reply."""
    inflight: collections.deque[tuple[_Op, object]] = collections.deque()
    i = 0
    try:
        while i < len(ops) or inflight:
            while i < len(ops) and len(inflight) < PIPELINE_DEPTH:
                op = ops[i]
                if inflight and op.offset + op.length - inflight[0][0].offset > RESUME_WINDOW:
                    break
                call.check()
                if op.copies is None:
                    if link.rate_limit is not None:  # the cap, and making way for the mount
                        link.rate_limit.take(op.length, call.touch)
                    msg = m.write_req(file_id, op.offset, pread_exact(fd, op.length, op.offset))
                else:
                    assert key is not None
                    msg = f.copychunk_req(file_id, key, op.copies)
                req = link.try_send(msg, call) if inflight else link.send([msg], call)[0]
                if req is None:
                    break  # no credits free: first collect a reply of our own
                inflight.append((op, req))
                i += 1
            op, req = inflight.popleft()
            try:
                reply = link.wait(req, call)
            except SMBResponseException as exc:
                if op.copies is not None and status_of(exc) in _REFUSED:
                    raise CopyRefused(op.offset) from exc
                raise
            if op.copies is None:
                count_write(link, reply, op.length)
            else:
                total = f.parse_copychunk(reply)
                link.stats.add(copied=total)
                if total != op.length:
                    raise UpstreamError(f"the server copied {total} of {op.length} bytes")
    except BaseException:
        link.drain([r for _, r in inflight], call)
        raise


def upload_delta(
    link: SmbLink,
    call: Call,
    *,
    temp_spath: str,
    target_spath: str,
    fd: Source,
    size: int,
    mtime_ns: int,
    extents: Sequence[Extent],
    replace: bool,
    verify: Callable[[SmbLink, Call], None],
    leftovers: set[str],
    resume: bool,
    copy_state: CopyState,
) -> tuple[Attrs, int]:
    """Build ``temp_spath`` from ``extents``, set its time, ``verify()``, rename it over
    ``target_spath``; returns the new attributes and file id. See the module docstring."""
    conn = link.conn
    assert conn is not None
    io_size = min(m.MAX_IO, int(conn.max_write_size))
    copying = copy_state.enabled and any(e.source is not None for e in extents)
    src_fid: bytes | None = None
    key: bytes | None = None
    if copying:
        verify(link, call)  # nothing is copied from a base that is not the expected one
        src_fid, key = _open_source(link, call, target_spath)
        if key is None:
            copy_state.enabled = copying = False
    try:
        access = (
            m.FILE_WRITE_DATA
            | m.FILE_READ_ATTRIBUTES
            | m.FILE_WRITE_ATTRIBUTES
            | m.DELETE
            | m.SYNCHRONIZE
        )
        create = m.create_req(
            temp_spath,
            access=access,
            disposition=f.FILE_OPEN_IF if resume else m.FILE_CREATE,
            options=m.FILE_NON_DIRECTORY_FILE,
        )
        try:
            (reply,) = link.wait_all(link.send([create], call), call)
        except BaseException:
            if not resume:
                leftovers.add(temp_spath)  # it may have been created; a later upload deletes it
            raise
        raise_first([reply])
        temp_fid, temp_attrs = m.parse_create(reply)
        start = min(size, max(0, temp_attrs.size - RESUME_WINDOW)) if resume else 0
        if start:
            log.info("resuming the upload of %s at %d of %d bytes", target_spath, start, size)
        renamed = closed = False
        try:
            ops = build_ops(extents, start, copy=copying, io_size=io_size)
            while True:
                try:
                    _transfer(link, call, fd, temp_fid, key, ops)
                    break
                except CopyRefused as refused:
                    log.info("%s refuses server-side copies; sending the data instead", link.host)
                    copy_state.enabled = copying = False
                    ops = build_ops(extents, refused.offset, copy=False, io_size=io_size)
                except SMBResponseException:
                    if copying:
                        # A base changed under the copy (say, shorter now: INVALID_VIEW_SIZE)
                        # is a conflict, not a failure.
                        verify(link, call)
                    raise
            if src_fid is not None:
                close_quietly(link, call, src_fid)
                src_fid = None
            call.check()
            verify(link, call)
            call.check()
            replies = link.wait_all(
                link.send(
                    [
                        m.set_info_req(
                            temp_fid,
                            FileInformationClass.FILE_END_OF_FILE_INFORMATION,
                            f.eof_info(size),
                        ),
                        *m.rename_into_place_reqs(temp_fid, target_spath, mtime_ns=mtime_ns, replace=replace),
                    ],
                    call,
                ),
                call,
            )
            renamed = not isinstance(replies[2], BaseException)
            closed = not isinstance(replies[4], BaseException)
            raise_first(replies)
            attrs = m.parse_close(replies[4])
            assert attrs is not None
            return attrs, m.parse_file_id(replies[3])
        except BaseException as exc:
            if not renamed:
                _after_failure(link, call, exc, temp_fid, temp_spath, resume, closed, leftovers)
            raise
    finally:
        if src_fid is not None:
            close_quietly(link, Call(call.timeout_s), src_fid)


def _open_source(link: SmbLink, call: Call, spath: str) -> tuple[bytes | None, bytes | None]:
    """Open the base for reading and get its resume key; (None, None) if copies are refused."""
    create = m.create_req(
        spath, access=m.FILE_READ_DATA | m.FILE_READ_ATTRIBUTES, options=m.FILE_NON_DIRECTORY_FILE
    )
    replies = link.wait_all(
        link.send([create, f.resume_key_req(m.RELATED_FILE_ID)], call, related=True), call
    )
    raise_first(replies[:1])
    file_id, _ = m.parse_create(replies[0])
    if isinstance(replies[1], BaseException):
        if status_of(replies[1]) in _REFUSED:
            log.info("%s gives no resume key; sending the data instead", link.host)
            close_quietly(link, call, file_id)
            return None, None
        close_quietly(link, call, file_id)
        raise replies[1]
    return file_id, f.parse_resume_key(replies[1])


def _after_failure(
    link: SmbLink,
    call: Call,
    exc: BaseException,
    file_id: bytes,
    temp_spath: str,
    resume: bool,
    closed: bool,
    leftovers: set[str],
) -> None:
    """Keep a resumable temporary after a lost link or a cancellation; else delete it."""
    interrupted = isinstance(exc, (Abandoned, WireTimeout)) or not link.alive
    if resume and interrupted:
        if link.alive and not closed:
            close_quietly(link, Call(call.timeout_s), file_id)
        log.info("upload temporary %s kept for resuming", temp_spath)
        return
    if not discard_temp(link, call, file_id, temp_spath, closed=closed) and not resume:
        leftovers.add(temp_spath)

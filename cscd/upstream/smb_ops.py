"""The blocking SMB operations behind ``SmbUpstream``: one function per protocol method.

Owns the request sequences (which CREATE options, which compounds, how many requests in
flight) and nothing else: no trio, no error translation, no path validation — ``smb.py``
does those and calls these functions in worker threads. Every request goes through
``SmbLink.send``/``wait`` and so carries the call's deadline.

Round trips: ``stat``, ``mkdir``, ``delete``, ``rename`` and ``set_mtime`` are one related
compound each (CREATE + work + CLOSE), so no handle stays open between calls and nothing can
read a stale handle after another client replaced a file. Reads and uploads of content are
``smb_transfer``'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from smbprotocol.connection import SMB2Echo
from smbprotocol.exceptions import SMBResponseException
from smbprotocol.file_info import FileInformationClass

from cscd.upstream import smb_messages as m
from cscd.upstream.smb_errors import STATUS_NO_EAS_ON_FILE, STATUS_NO_MORE_FILES, status_of
from cscd.upstream.smb_messages import Attrs, DirEntry
from cscd.upstream.smb_wire import Call, SmbLink

log = logging.getLogger(__name__)

R = m.RELATED_FILE_ID


def raise_first(replies: list[object]) -> None:
    for r in replies:
        if isinstance(r, BaseException):
            raise r


def stat(link: SmbLink, call: Call, spath: str) -> tuple[Attrs, int]:
    """Attributes and file id of ``spath``: CREATE + QUERY_INFO(internal) + CLOSE."""
    reqs = link.send(
        [m.create_req(spath, access=m.FILE_READ_ATTRIBUTES), m.query_id_req(R), m.close_req(R)],
        call,
        related=True,
    )
    replies = link.wait_all(reqs, call)
    raise_first(replies)
    _, attrs = m.parse_create(replies[0])
    return attrs, m.parse_file_id(replies[1])


def probe(link: SmbLink, call: Call, spath: str) -> None:
    """Open and close the target folder itself: one round trip, no data."""
    reqs = link.send(
        [
            m.create_req(spath, access=m.FILE_READ_ATTRIBUTES, options=m.FILE_DIRECTORY_FILE),
            m.close_req(R),
        ],
        call,
        related=True,
    )
    raise_first(link.wait_all(reqs, call))


def space(link: SmbLink, call: Call, spath: str) -> tuple[int, int]:
    """The share's size and the space left to this user: CREATE + QUERY_INFO(fs) + CLOSE."""
    reqs = link.send(
        [
            m.create_req(spath, access=m.FILE_READ_ATTRIBUTES, options=m.FILE_DIRECTORY_FILE),
            m.fs_full_size_req(R),
            m.close_req(R),
        ],
        call,
        related=True,
    )
    replies = link.wait_all(reqs, call)
    raise_first(replies)
    return m.parse_fs_full_size(replies[1])


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
    max_out = min(m.MAX_IO, int(link.conn.max_transact_size or 65536))  # type: ignore[union-attr]
    create = m.create_req(
        spath, access=m.FILE_LIST_DIRECTORY | m.FILE_READ_ATTRIBUTES, options=m.FILE_DIRECTORY_FILE
    )
    if small:
        reqs = link.send(
            [create, m.query_dir_req(R, restart=True, max_output=max_out),
             m.query_dir_req(R, restart=False, max_output=max_out), m.close_req(R)],
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
            return m.parse_dir(first), True
        if isinstance(second, BaseException):
            raise second
        # More than one buffer: read it again in batches (the handle is closed already).
        create = m.create_req(
            spath, access=m.FILE_LIST_DIRECTORY | m.FILE_READ_ATTRIBUTES,
            options=m.FILE_DIRECTORY_FILE,
        )
    reqs = link.send(
        [create, m.query_dir_req(R, restart=True, max_output=max_out)], call, related=True
    )
    replies = link.wait_all(reqs, call)
    if isinstance(replies[0], BaseException):
        raise replies[0]
    file_id, _ = m.parse_create(replies[0])
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
            (req,) = link.send([m.query_dir_req(file_id, restart=False, max_output=max_out)], call)
            if page is None:
                entries.extend(m.parse_dir(reply))
            else:
                page(m.parse_dir(reply))
            try:
                reply = link.wait(req, call)
            except SMBResponseException as exc:
                reply = exc
    finally:
        close_quietly(link, call, file_id)
    return entries, batches <= 1


def close_quietly(link: SmbLink, call: Call, file_id: bytes) -> None:
    if not link.alive:
        return
    try:
        (req,) = link.send([m.close_req(file_id)], call)
        link.wait(req, call)
    except Exception as exc:  # noqa: BLE001 - the operation's own outcome matters, not this
        log.debug("close failed: %s", exc)


def mkdir(link: SmbLink, call: Call, spath: str) -> tuple[Attrs, int]:
    create = m.create_req(
        spath,
        access=m.FILE_READ_ATTRIBUTES,
        disposition=m.FILE_CREATE,
        options=m.FILE_DIRECTORY_FILE,
    )
    return _with_postquery(link, call, create, [])


def delete(link: SmbLink, call: Call, spath: str, *, is_dir: bool) -> None:
    options = m.FILE_DIRECTORY_FILE if is_dir else m.FILE_NON_DIRECTORY_FILE
    reqs = link.send(
        [
            m.create_req(spath, access=m.DELETE | m.FILE_READ_ATTRIBUTES, options=options),
            m.set_info_req(
                R, FileInformationClass.FILE_DISPOSITION_INFORMATION, m.disposition_info()
            ),
            m.close_req(R),
        ],
        call,
        related=True,
    )
    raise_first(link.wait_all(reqs, call))


def rename(
    link: SmbLink, call: Call, old_spath: str, new_spath: str, *, replace: bool
) -> tuple[Attrs, int]:
    create = m.create_req(old_spath, access=m.DELETE | m.FILE_READ_ATTRIBUTES)
    info = m.set_info_req(
        R, FileInformationClass.FILE_RENAME_INFORMATION, m.rename_info(new_spath, replace=replace)
    )
    return _with_postquery(link, call, create, [info])


def set_mtime(link: SmbLink, call: Call, spath: str, mtime_ns: int) -> tuple[Attrs, int]:
    create = m.create_req(spath, access=m.FILE_WRITE_ATTRIBUTES | m.FILE_READ_ATTRIBUTES)
    info = m.set_info_req(
        R, FileInformationClass.FILE_BASIC_INFORMATION, m.basic_info(mtime_ns=mtime_ns)
    )
    return _with_postquery(link, call, create, [info])


def supports_eas(link: SmbLink, call: Call, spath: str) -> bool:
    """Whether the share stores EAs: the removal of an EA the folder ``spath`` does not have
    succeeds where it does and fails with STATUS_EAS_NOT_SUPPORTED where it does not (Samba
    sets no FILE_SUPPORTS_EXTENDED_ATTRIBUTES either way, and answers a read alike)."""
    reqs = link.send(
        [m.create_req(spath, access=m.FILE_WRITE_EA | m.FILE_READ_ATTRIBUTES, options=m.FILE_DIRECTORY_FILE),
         m.set_info_req(R, FileInformationClass.FILE_FULL_EA_INFORMATION, m.ea_info({b"cscd.probe": b""})),
         m.close_req(R)],
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
        [m.create_req(spath, access=m.FILE_READ_EA | m.FILE_READ_ATTRIBUTES), m.query_ea_req(R), m.close_req(R)],
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
    return m.parse_eas(replies[1])


def eas_of_many(link: SmbLink, call: Call, spaths: Sequence[str], batch: int = 32
                ) -> list[list[tuple[bytes, bytes]] | None]:
    """``get_eas`` of each path, ``batch`` compounds in flight at a time; None for a path
    that failed (gone meanwhile, no access): the next listing asks again."""
    out: list[list[tuple[bytes, bytes]] | None] = []
    for start in range(0, len(spaths), batch):
        sent = [
            link.send(
                [m.create_req(p, access=m.FILE_READ_EA | m.FILE_READ_ATTRIBUTES), m.query_ea_req(R),
                 m.close_req(R)],
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
                out.append(m.parse_eas(replies[1]))
    return out


def set_eas(link: SmbLink, call: Call, spath: str, eas: Mapping[bytes, bytes], fresh: bool = False) -> None:
    """Make ``eas`` the whole EA set of ``spath``: the ones it has and ``eas`` lacks are
    removed (an empty value), in one SET_INFO after reading the current set — not read for a
    ``fresh`` file, which has none (one round trip instead of two, for each upload of a file
    whose mode is not the default)."""
    current = {} if fresh else {name.lower(): name for name, _ in get_eas(link, call, spath)}
    wanted = {name.lower() for name in eas}
    change = dict(eas)
    for low, name in current.items():
        if low not in wanted:
            change[name] = b""
    if not change:
        return
    create = m.create_req(spath, access=m.FILE_WRITE_EA | m.FILE_READ_ATTRIBUTES)
    info = m.set_info_req(R, FileInformationClass.FILE_FULL_EA_INFORMATION, m.ea_info(change))
    replies = link.wait_all(link.send([create, info, m.close_req(R)], call, related=True), call)
    raise_first(replies)


def _with_postquery(
    link: SmbLink, call: Call, create: object, middle: list[object]
) -> tuple[Attrs, int]:
    """CREATE + ``middle`` + QUERY_INFO(id) + CLOSE(postquery) as one compound."""
    msgs = [create, *middle, m.query_id_req(R), m.close_req(R, postquery=True)]
    replies = link.wait_all(link.send(msgs, call, related=True), call)
    raise_first(replies)
    attrs = m.parse_close(replies[-1])
    if attrs is None:  # the server ignored the post-query flag
        _, attrs = m.parse_create(replies[0])
    return attrs, m.parse_file_id(replies[-2])

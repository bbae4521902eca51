r"""The blocking SMB operations behind moving a folder target: rename, server-side copy, mkdir -p.

Owns the request sequences ``SmbUpstream.rename_target``, ``copy_to`` and ``make_target`` send:
a second tree connect on the same session (Samba and Windows copy between shares only within
one session: the resume key names an open of that session), the rename of the target folder
itself, and the copy of one file with FSCTL_SRV_COPYCHUNK_WRITE into a temporary that is then
renamed into place. Runs in worker threads only (``smb.py`` calls it through ``_run``); no trio,
no error translation, no path validation here.

A copy never sends file content through the client: a server that gives no resume key or
refuses the copy raises ``Unsupported`` (the caller keeps the folder where it was).
"""

from __future__ import annotations

import secrets
import threading
import time

from smbprotocol.file_info import FileInformationClass
from smbprotocol.tree import TreeConnect

from cscd.errors import Exists, Unsupported, UpstreamError
from cscd.names import UPLOAD_TEMP_PREFIX
from cscd.upstream import smb_fsctl as f
from cscd.upstream import smb_messages as m
from cscd.upstream import smb_ops as ops
from cscd.upstream.smb_delta import _open_source
from cscd.upstream.smb_errors import WireTimeout, status_of
from cscd.upstream.smb_messages import Attrs
from cscd.upstream.smb_wire import Call, SmbLink

_NOT_FOUND = (0xC0000034, 0xC000003A)
_COLLISION = 0xC0000035
#: Chunks per copy request: 16 × 1 MiB = Samba's and Windows' 16 MiB request limit.
_CHUNKS_PER_REQUEST = f.COPY_MAX_REQUEST_BYTES // f.COPY_MAX_CHUNK_BYTES


def connect_tree(link: SmbLink, call: Call, share_unc: str) -> TreeConnect:
    """Connect another share of the same server on ``link``'s session (deadline guarded:
    smbprotocol's tree connect has no timeout of its own)."""
    assert link.session is not None
    guard = threading.Timer(max(0.0, call.deadline - time.monotonic()), link.teardown)
    guard.daemon = True
    guard.start()
    try:
        tree = TreeConnect(link.session, share_unc)
        tree.connect()
    except BaseException:
        if not link.alive:
            raise WireTimeout(f"connecting {share_unc} took longer than {call.timeout_s:g} s") from None
        raise
    finally:
        guard.cancel()
    link.stats.add(requests=1)
    return tree


def make_dirs(link: SmbLink, call: Call, components: tuple[str, ...], tree: TreeConnect | None) -> None:
    """Create every missing folder of ``components`` (from the share root), like ``mkdir -p``."""
    for n in range(1, len(components) + 1):
        create = m.create_req("\\".join(components[:n]), access=m.FILE_READ_ATTRIBUTES,
                              disposition=f.FILE_OPEN_IF, options=m.FILE_DIRECTORY_FILE)
        replies = link.wait_all(link.send([create, m.close_req(ops.R)], call, related=True, tree=tree), call)
        ops.raise_first(replies)


def _is_empty_dir(link: SmbLink, call: Call, spath: str) -> bool | None:
    """True/False for an existing folder, None if ``spath`` does not exist."""
    try:
        entries, _ = ops.list_dir(link, call, spath)
    except Exception as exc:
        if status_of(exc) in _NOT_FOUND:
            return None
        raise
    return all(e.name in (".", "..") for e in entries)


def rename_folder(link: SmbLink, call: Call, old_spath: str, new_components: tuple[str, ...]) -> tuple[Attrs, int]:
    """Rename the folder ``old_spath`` to ``new_components`` in the same share.

    Missing parents are created; an existing empty folder at the new place is replaced (an
    admin may have created it), a non-empty one raises ``Exists`` and nothing changes.
    """
    new_spath = "\\".join(new_components)
    empty = _is_empty_dir(link, call, new_spath)
    if empty is False:
        raise Exists(f"{new_spath} already holds files")
    make_dirs(link, call, new_components[:-1], None)
    if empty:
        ops.delete(link, call, new_spath, is_dir=True)
    return ops.rename(link, call, old_spath, new_spath, replace=False)


def copy_file(link: SmbLink, call: Call, src_spath: str, tree: TreeConnect | None, dst_spath: str,
              size: int, mtime_ns: int) -> tuple[Attrs, int]:
    """Copy one file on the server to ``dst_spath`` in ``tree`` (None: the link's own share).

    Builds a temporary beside the destination with copy requests, sets its write time to
    ``mtime_ns``, checks that the server wrote ``size`` bytes, then renames it into place
    (``Exists`` if the name was taken meanwhile). Any failure deletes the temporary.
    """
    src_fid, key = _open_source(link, call, src_spath)
    if src_fid is None or key is None:
        raise Unsupported(f"{link.host} refuses server-side copies")
    parent = dst_spath.rsplit("\\", 1)[0] if "\\" in dst_spath else ""
    temp = UPLOAD_TEMP_PREFIX + secrets.token_hex(8)
    temp_spath = f"{parent}\\{temp}" if parent else temp
    try:
        access = m.FILE_WRITE_DATA | m.FILE_READ_ATTRIBUTES | m.FILE_WRITE_ATTRIBUTES | m.DELETE | m.SYNCHRONIZE
        (reply,) = link.wait_all(link.send([m.create_req(temp_spath, access=access, disposition=m.FILE_CREATE,
                                                         options=m.FILE_NON_DIRECTORY_FILE)], call, tree=tree), call)
        ops.raise_first([reply])
        temp_fid, _ = m.parse_create(reply)
        done = False
        try:
            written = 0
            chunks = [(o, o, min(f.COPY_MAX_CHUNK_BYTES, size - o)) for o in range(0, size, f.COPY_MAX_CHUNK_BYTES)]
            for i in range(0, len(chunks), _CHUNKS_PER_REQUEST):
                (r,) = link.wait_all(link.send([f.copychunk_req(temp_fid, key, chunks[i:i + _CHUNKS_PER_REQUEST])],
                                               call, tree=tree), call)
                if isinstance(r, BaseException):
                    raise Unsupported(f"{link.host} refused a server-side copy of {src_spath}: {r}") from r
                written += f.parse_copychunk(r)
            link.stats.add(copied=written)
            if written != size:
                raise UpstreamError(f"the server copied {written} of {size} bytes of {src_spath}")
            replies = link.wait_all(link.send([
                m.set_info_req(temp_fid, FileInformationClass.FILE_BASIC_INFORMATION, m.basic_info(mtime_ns=mtime_ns)),
                m.set_info_req(temp_fid, FileInformationClass.FILE_RENAME_INFORMATION,
                               m.rename_info(dst_spath, replace=False)),
                m.query_id_req(temp_fid),
                m.close_req(temp_fid, postquery=True),
            ], call, tree=tree), call)
            done = not isinstance(replies[1], BaseException)
            if status_of(replies[1]) == _COLLISION:
                raise Exists(f"{dst_spath} was created on the server during the move")
            ops.raise_first(replies)
            attrs = m.parse_close(replies[3])
            assert attrs is not None
            return attrs, m.parse_file_id(replies[2])
        except BaseException:
            if not done:
                _discard(link, call, temp_fid, tree)
            raise
    finally:
        ops.close_quietly(link, call, src_fid)


def _discard(link: SmbLink, call: Call, file_id: bytes, tree: TreeConnect | None) -> None:
    """Best effort: delete the temporary of a failed copy (a later listing finds leftovers)."""
    if not link.alive:
        return
    try:
        link.wait_all(link.send([
            m.set_info_req(file_id, FileInformationClass.FILE_DISPOSITION_INFORMATION, m.disposition_info()),
            m.close_req(file_id),
        ], Call(call.timeout_s), tree=tree), Call(call.timeout_s))
    except Exception:  # noqa: BLE001, S110 - the copy's own error is what matters
        pass

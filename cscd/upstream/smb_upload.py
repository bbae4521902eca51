r"""Conditional uploads over SMB: a temporary beside the target, a check, a rename.

Owns the steps an upload takes in its worker thread that are not requests of their own
(``smb_transfer.upload`` and ``smb_delta.upload_delta`` send the bytes): the temporary's name
(fresh, or derived from a resume token so an interrupted transfer finds it again), the check
right before the rename that the target is still the version the change is based on
(``Conflict`` otherwise), and deleting upload temporaries that earlier failed uploads or
other clients left (``leftovers``, found by listings). The connection and its deadlines
are ``SmbUpstream``'s. The check and the rename are two round trips: another client writing
in between (~1 ms) is not detected.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable

from cscd.names import UPLOAD_TEMP_PREFIX
from cscd.types import RemoteEntry
from cscd.upstream import smb_ops as ops
from cscd.upstream import smb_transfer as transfer
from cscd.upstream.base import Conflict
from cscd.upstream.smb_errors import STATUS_OBJECT_NAME_COLLISION, status_of
from cscd.upstream.smb_messages import Attrs
from cscd.upstream.smb_wire import Call, SmbLink

log = logging.getLogger(__name__)

_NOT_FOUND_STATUSES = (0xC0000034, 0xC000003A)

#: what fills the temporary: ``smb_transfer.upload`` or a ``smb_delta.upload_delta`` partial
Send = Callable[..., tuple[Attrs, int]]


def entry_of(name: bytes, attrs: Attrs, file_id: int) -> RemoteEntry:
    """A server file as the rest of cscd sees it, from a CREATE or CLOSE reply."""
    return RemoteEntry(name, attrs.is_dir, attrs.size, attrs.mtime_ns, attrs.ctime_ns, file_id)


def temp_spath(spath: str, resume_token: str | None) -> str:
    """A fresh upload temporary beside ``spath``, or the one named by ``resume_token``."""
    parent = spath.rsplit("\\", 1)[0] if "\\" in spath else ""
    if resume_token is None:
        temp = UPLOAD_TEMP_PREFIX + secrets.token_hex(8)
    else:
        digest = hashlib.blake2b(resume_token.encode(), digest_size=8).hexdigest()
        temp = f"{UPLOAD_TEMP_PREFIX}r{digest}"
    return f"{parent}\\{temp}" if parent else temp


def verifier(spath: str, where: str, name: bytes, expected: RemoteEntry | None,
             replace: bool) -> Callable[[SmbLink, Call], None]:
    """The check that runs right before a rename: is the target still ``expected``?"""

    def verify(link: SmbLink, call: Call) -> None:
        try:
            attrs, fid = ops.stat(link, call, spath)
            current: RemoteEntry | None = entry_of(name, attrs, fid)
        except Exception as exc:  # noqa: BLE001 - only "missing" is an answer here
            if status_of(exc) not in _NOT_FOUND_STATUSES:
                raise
            current = None
        if expected is not None:
            if not expected.same_version(current):
                state = "was deleted" if current is None else "changed"
                raise Conflict(
                    f"{where} {state} on the server since the version this change is based on"
                )
        elif not replace and current is not None:
            raise Conflict(f"{where} was created on the server in the meantime")

    return verify


def delete_leftovers(link: SmbLink, call: Call, leftovers: set[str]) -> None:
    """Delete upload temporaries of earlier failed uploads (runs in the worker thread)."""
    while leftovers:
        temp = leftovers.pop()
        try:
            ops.delete(link, call, temp, is_dir=False)
            log.info("deleted upload temporary %s left by an earlier upload", temp)
        except Exception as exc:  # noqa: BLE001 - best effort
            if status_of(exc) is None:
                leftovers.add(temp)
                raise
            log.debug("upload temporary %s: %s", temp, exc)


def conditional_upload(link: SmbLink, call: Call, *, spath: str, where: str, temp: str, fd: int, size: int,
                       mtime_ns: int, expected: RemoteEntry | None, replace: bool, send: Send,
                       verify: Callable[[SmbLink, Call], None], leftovers: set[str]) -> tuple[Attrs, int]:
    """One upload in its worker thread: leftovers first, then the temporary filled, checked
    and renamed over ``spath``; a new small file with nothing to compare with or replace
    takes one round trip (``transfer.upload_new_small``)."""
    delete_leftovers(link, call, leftovers)
    one_trip = send is transfer.upload and expected is None and not replace and size <= transfer.SMALL_UPLOAD_BYTES
    try:
        if one_trip:
            return transfer.upload_new_small(link, call, temp_spath=temp, target_spath=spath, fd=fd,
                                        size=size, mtime_ns=mtime_ns, leftovers=leftovers)
        return send(link, call, temp_spath=temp, target_spath=spath, fd=fd, size=size,
                    mtime_ns=mtime_ns, replace=replace or expected is not None, verify=verify,
                    leftovers=leftovers)
    except Exception as exc:
        if status_of(exc) == STATUS_OBJECT_NAME_COLLISION:
            raise Conflict(f"{where} was created on the server in the meantime") from exc
        raise

"""Translation of smbprotocol failures into ``cscd.errors``, with messages people can act on.

Owns the NTSTATUS → error table and nothing else: no network, no state. Messages name the
server target and the path, never the password (smbprotocol's exceptions never carry it, and
nothing here formats credentials).
"""

from __future__ import annotations

import socket

from smbprotocol.exceptions import (
    SMBAuthenticationError,
    SMBConnectionClosed,
    SMBException,
    SMBResponseException,
)

from cscd.errors import (
    AccessDenied,
    BadName,
    CscdError,
    Exists,
    IsDir,
    NotDir,
    NotEmpty,
    NotFound,
    ServerFull,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

# NTSTATUS values ([MS-ERREF] 2.3.1), spelled out so that a missing name in an smbprotocol
# release cannot break the import.
STATUS_END_OF_FILE = 0xC0000011
STATUS_NO_MORE_FILES = 0x80000006
STATUS_NO_EAS_ON_FILE = 0xC0000052
STATUS_OBJECT_NAME_NOT_FOUND = 0xC0000034
STATUS_OBJECT_PATH_NOT_FOUND = 0xC000003A
STATUS_NO_SUCH_FILE = 0xC000000F
STATUS_NOT_FOUND = 0xC0000225
STATUS_DELETE_PENDING = 0xC0000056
STATUS_FILE_DELETED = 0xC0000123
STATUS_OBJECT_NAME_COLLISION = 0xC0000035
STATUS_ACCESS_DENIED = 0xC0000022
STATUS_CANNOT_DELETE = 0xC0000121
STATUS_PRIVILEGE_NOT_HELD = 0xC0000061
STATUS_DIRECTORY_NOT_EMPTY = 0xC0000101
STATUS_NOT_A_DIRECTORY = 0xC0000103
STATUS_FILE_IS_A_DIRECTORY = 0xC00000BA
STATUS_OBJECT_NAME_INVALID = 0xC0000033
STATUS_OBJECT_PATH_SYNTAX_BAD = 0xC000003B
STATUS_OBJECT_PATH_INVALID = 0xC0000039
STATUS_NAME_TOO_LONG = 0xC0000106
STATUS_SHARING_VIOLATION = 0xC0000043
STATUS_LOGON_FAILURE = 0xC000006D
STATUS_WRONG_PASSWORD = 0xC000006A
STATUS_PASSWORD_EXPIRED = 0xC0000071
STATUS_ACCOUNT_DISABLED = 0xC0000072
STATUS_ACCOUNT_RESTRICTION = 0xC000006E
STATUS_ACCOUNT_LOCKED_OUT = 0xC0000234
STATUS_BAD_NETWORK_NAME = 0xC00000CC
STATUS_NETWORK_NAME_DELETED = 0xC00000C9
STATUS_USER_SESSION_DELETED = 0xC0000203
STATUS_NETWORK_SESSION_EXPIRED = 0xC000035C
STATUS_DISK_FULL = 0xC000007F
STATUS_INSUFF_SERVER_RESOURCES = 0xC0000205
STATUS_QUOTA_EXCEEDED = 0xC0000044

_NOT_FOUND = {
    STATUS_OBJECT_NAME_NOT_FOUND,
    STATUS_OBJECT_PATH_NOT_FOUND,
    STATUS_NO_SUCH_FILE,
    STATUS_NOT_FOUND,
    STATUS_DELETE_PENDING,
    STATUS_FILE_DELETED,
}
_DENIED = {STATUS_ACCESS_DENIED, STATUS_CANNOT_DELETE, STATUS_PRIVILEGE_NOT_HELD}
_BAD_LOGON = {
    STATUS_LOGON_FAILURE,
    STATUS_WRONG_PASSWORD,
    STATUS_PASSWORD_EXPIRED,
    STATUS_ACCOUNT_DISABLED,
    STATUS_ACCOUNT_RESTRICTION,
    STATUS_ACCOUNT_LOCKED_OUT,
}
#: Statuses that mean the session or tree is gone: the link must be rebuilt.
LINK_LOST = {
    STATUS_NETWORK_NAME_DELETED,
    STATUS_USER_SESSION_DELETED,
    STATUS_NETWORK_SESSION_EXPIRED,
}


class WireTimeout(Exception):
    """Raised inside a worker thread when a request missed its deadline (internal)."""


class Abandoned(Exception):
    """Raised inside a worker thread whose caller was cancelled (internal; nobody sees it)."""


def status_of(exc: BaseException) -> int | None:
    """The NTSTATUS of a server reply error, else None."""
    if isinstance(exc, SMBResponseException):
        return int(exc.status)
    return None


def translate(exc: BaseException, *, server: str, where: str) -> CscdError:
    """Map an exception raised while talking to ``server`` about ``where`` to a ``CscdError``.

    ``server`` is ``host:port`` (or the UNC target); ``where`` the UNC path of the object.
    Already-translated ``CscdError`` instances pass through unchanged.
    """
    if isinstance(exc, CscdError):
        return exc
    if isinstance(exc, WireTimeout):
        return UpstreamTimeout(f"{server} did not answer in time ({exc}) while working on {where}")
    if isinstance(exc, SMBResponseException):
        return _from_status(int(exc.status), server=server, where=where)
    if isinstance(exc, SMBAuthenticationError):
        return AccessDenied(f"{server} refused the user name or password: {exc}")
    if isinstance(exc, SMBConnectionClosed):
        return UpstreamUnavailable(
            f"the connection to {server} was closed while working on {where}"
        )
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return UpstreamTimeout(f"{server} did not answer in time while working on {where}")
    if isinstance(exc, (OSError, EOFError)):
        return UpstreamUnavailable(f"cannot reach {server}: {exc}")
    if isinstance(exc, ValueError) and str(exc).startswith("Failed to connect"):
        # smbprotocol's Tcp.connect wraps the socket error in a ValueError.
        return UpstreamUnavailable(f"cannot reach {server}: {exc.__cause__ or exc}")
    if isinstance(exc, SMBException):
        text = str(exc)
        if "timeout" in text.lower():
            return UpstreamTimeout(f"{server} did not answer in time while working on {where}")
        if "socket was closed" in text or "closed" in text.lower():
            return UpstreamUnavailable(
                f"the connection to {server} was lost while working on {where}"
            )
        return UpstreamError(f"{server}: {text} (while working on {where})")
    return UpstreamError(
        f"{server}: unexpected {type(exc).__name__}: {exc} (while working on {where})"
    )


def _from_status(status: int, *, server: str, where: str) -> CscdError:
    if status in _NOT_FOUND:
        return NotFound(f"{where} does not exist on the server")
    if status == STATUS_OBJECT_NAME_COLLISION:
        return Exists(f"{where} already exists on the server")
    if status in _BAD_LOGON:
        return AccessDenied(f"{server} refused the user name or password (status 0x{status:08x})")
    if status in _DENIED:
        return AccessDenied(f"the server denied access to {where}")
    if status == STATUS_DIRECTORY_NOT_EMPTY:
        return NotEmpty(f"{where} is a folder that is not empty")
    if status == STATUS_NOT_A_DIRECTORY:
        return NotDir(f"{where} (or a folder in its path) is not a folder")
    if status == STATUS_FILE_IS_A_DIRECTORY:
        return IsDir(f"{where} is a folder, not a file")
    if status in (
        STATUS_OBJECT_NAME_INVALID,
        STATUS_OBJECT_PATH_SYNTAX_BAD,
        STATUS_OBJECT_PATH_INVALID,
    ):
        return BadName(f"the server cannot store the name {where}")
    if status == STATUS_NAME_TOO_LONG:
        return BadName(f"the name {where} is too long for the server")
    if status == STATUS_BAD_NETWORK_NAME:
        return NotFound(f"{server} has no share for {where}")
    if status == STATUS_NETWORK_SESSION_EXPIRED:
        # The ticket (or the server's session lifetime) ran out, as after 10 h on AD: the
        # next connect logs on again with whatever the credential cache holds now.
        return UpstreamUnavailable(f"the session with {server} expired with its ticket; logging on again")
    if status in LINK_LOST:
        return UpstreamUnavailable(
            f"the session with {server} ended (status 0x{status:08x}); reconnecting"
        )
    if status == STATUS_SHARING_VIOLATION:
        return UpstreamError(f"{where} is in use by another program on the server; try again later")
    if status in (STATUS_DISK_FULL, STATUS_INSUFF_SERVER_RESOURCES):
        return ServerFull(f"the server has no room left for {where} (status 0x{status:08x})")
    if status == STATUS_QUOTA_EXCEEDED:
        return ServerFull(f"the quota on the server is used up; {where} does not fit")
    return UpstreamError(f"the server answered status 0x{status:08x} for {where}")


def breaks_link(err: CscdError) -> bool:
    """True if after ``err`` the connection must not be used again."""
    return isinstance(err, (UpstreamUnavailable, UpstreamTimeout))

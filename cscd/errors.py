"""Typed exceptions of cscd: each carries the errno the FUSE layer answers with.

Leaf module: imports nothing from cscd. Lower layers raise these; ``fs.py`` turns them into
``FUSEError`` in one place. Messages are written for the person who reads them.
"""

from __future__ import annotations

import errno


class CscdError(Exception):
    """Base of every cscd error; ``errno`` is what a syscall on the mount returns."""

    errno: int = errno.EIO


class NotFound(CscdError):
    errno = errno.ENOENT


class CacheLost(CscdError):
    """The cache itself failed (its index unreadable, its disk gone): the daemon stops."""

    errno = errno.EIO


class SourceChanged(CscdError):
    """A file changed while sync was taking the copy it uploads; it is looked at again."""

    errno = errno.EAGAIN


class Exists(CscdError):
    errno = errno.EEXIST


class NotEmpty(CscdError):
    errno = errno.ENOTEMPTY


class IsDir(CscdError):
    errno = errno.EISDIR


class NotDir(CscdError):
    errno = errno.ENOTDIR


class BadName(CscdError):
    """A name the server cannot store (reserved characters, trailing dot, not UTF-8)."""

    errno = errno.EINVAL


class NameTooLong(BadName):
    errno = errno.ENAMETOOLONG


class NotAvailableOffline(CscdError):
    """Data is not cached and the folder's mode forbids fetching it."""

    errno = errno.EHOSTDOWN


class UpstreamUnavailable(CscdError):
    """The server cannot be reached (connection refused, reset, closed)."""

    errno = errno.EHOSTDOWN


class TicketMissing(UpstreamUnavailable):
    """No usable Kerberos ticket (none in the cache, expired, or refused by the server): a
    person has to run ``kinit`` or unlock the session. To sync it is like an unreachable
    server — changes wait, cached files stay served — not a refusal of one file."""


class UpstreamTimeout(CscdError):
    """A call to the server started but missed its deadline."""

    errno = errno.ETIMEDOUT


class AccessDenied(CscdError):
    errno = errno.EACCES


class ServerFull(CscdError):
    """The server is out of space, or the user's quota there is used up."""

    errno = errno.ENOSPC


class ReadOnly(CscdError):
    errno = errno.EROFS


class CacheFull(CscdError):
    errno = errno.ENOSPC


class TooLarge(CscdError):
    errno = errno.EFBIG


class Unsupported(CscdError):
    errno = errno.EINVAL


class CorruptContent(CscdError):
    errno = errno.EIO


class UpstreamError(CscdError):
    """The server answered with an error we have no better class for."""

    errno = errno.EIO


class ConfigError(CscdError):
    """A user-facing configuration problem: one line naming file, line and key."""

    exit_code = 2

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code

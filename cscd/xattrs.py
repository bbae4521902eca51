"""The mode and ``user.*`` extended attributes as SMB extended attributes (EAs), so both roam.

Leaf module. The on-server form is the one ``mount.cifs -o user_xattr`` reads and writes: the
Linux attribute ``user.NAME`` is the EA ``NAME`` (FILE_FULL_EA_INFORMATION). The mode has no
such standard form, so it is the EA ``cscd.mode`` holding the permission bits in octal ASCII
(``0755``): a program that knows EAs sees it (``user.cscd.mode`` through ``mount.cifs``), and a
share on Windows or on any Samba with ``ea support`` stores it. The SMB3.1.1 POSIX extensions
would carry the mode natively, but smbprotocol has no POSIX create context and a Windows
server none at all; an EA works on both. A mode equal to the default of its kind (0644, 0755)
is not stored: most files then carry no EA and cost nothing to list.

The ``user.cscd.`` names belong to cscd: they are never stored as a user's attribute, and
``set`` refuses them. ``security.*``, ``trusted.*`` and ``system.*`` cannot be represented on
the server and are refused with ENOTSUP.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping

from cscd.errors import CscdError

DEFAULT_FILE_MODE = 0o644
DEFAULT_DIR_MODE = 0o755
MODE_EA = b"cscd.mode"
USER = b"user."
RESERVED = b"user.cscd."
#: an EA name is at most 255 bytes and its value at most 65535 ([MS-FSCC] 2.4.15)
MAX_NAME = 255
MAX_VALUE = 65535
#: the whole set of one file, as sent in one SET_INFO
MAX_SET = 65535

#: the sorted (EA name, value) pairs of one file, as a listing carries them
ServerEas = tuple[tuple[bytes, bytes], ...]


class XattrUnsupported(CscdError):
    """A namespace the server cannot store (``security.``, ``trusted.``, ``system.``)."""

    errno = errno.ENOTSUP


class XattrReserved(CscdError):
    """A ``user.cscd.`` name: cscd's own, not a user's to set."""

    errno = errno.EPERM


class XattrTooBig(CscdError):
    errno = errno.E2BIG


def default_mode(is_dir: bool) -> int:
    return DEFAULT_DIR_MODE if is_dir else DEFAULT_FILE_MODE


def check_settable(name: bytes, value: bytes, others: Mapping[bytes, bytes]) -> None:
    """Raise unless ``name`` may be set to ``value`` beside the file's ``others``."""
    if not name.startswith(USER):
        raise XattrUnsupported(f"{name.decode(errors='replace')}: only user.* attributes can be stored "
                               "on the server (as SMB extended attributes)")
    if name.startswith(RESERVED):
        raise XattrReserved(f"{name.decode(errors='replace')}: user.cscd.* names are cscd's own")
    if len(name) - len(USER) > MAX_NAME or len(name) == len(USER):
        raise XattrTooBig(f"an attribute name is 1 to {MAX_NAME} bytes after 'user.'")
    if len(value) > MAX_VALUE:
        raise XattrTooBig(f"an attribute value is at most {MAX_VALUE} bytes, not {len(value)}")
    total = sum(_entry_size(n, v) for n, v in others.items() if n != name) + _entry_size(name, value)
    if total > MAX_SET:
        raise XattrTooBig(f"a file's attributes take at most {MAX_SET} bytes on the server, these {total}")


def _entry_size(name: bytes, value: bytes) -> int:
    return (8 + len(name) - len(USER) + 1 + len(value) + 3) & ~3


def to_server(mode: int, is_dir: bool, xattrs: Mapping[bytes, bytes]) -> dict[bytes, bytes]:
    """The EAs a file with ``mode`` and user attributes ``xattrs`` carries on the server."""
    eas = {name[len(USER):]: value for name, value in xattrs.items()}
    mode &= 0o7777
    if mode != default_mode(is_dir):
        eas[MODE_EA] = b"%04o" % mode
    return eas


def from_server(eas: ServerEas, is_dir: bool) -> tuple[int, dict[bytes, bytes]]:
    """(mode, user attributes) of a file whose server EAs are ``eas``.

    An EA name is case-insensitive on Windows, which upper-cases it; ``cscd.mode`` is
    recognized in any case. A mode EA that is not octal is ignored (the default applies).
    """
    mode = default_mode(is_dir)
    xattrs: dict[bytes, bytes] = {}
    for name, value in eas:
        if name.lower() == MODE_EA:
            try:
                mode = int(value.strip(b"\0 ") or b"x", 8) & 0o7777
            except ValueError:
                pass
            continue
        if name.lower().startswith(b"cscd."):
            continue
        xattrs[USER + name] = value
    return mode, xattrs


def canonical(eas: Mapping[bytes, bytes]) -> ServerEas:
    return tuple(sorted(eas.items()))

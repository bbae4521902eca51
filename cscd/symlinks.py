"""Symbolic links as Minshall-French symlinks: the on-server form ``mount.cifs -o mfsymlinks``
and macOS write, so a link cscd makes reads as a link through them and the other way round.

Leaf module. A link is a regular file of exactly ``SIZE`` (1067) bytes: ``XSym\\n``, the
target's length as four decimal digits, ``\\n``, the MD5 of the target in 32 lower-case hex
digits, ``\\n``, the target, ``\\n``, then spaces up to 1067 bytes. A file is a link only if
all of that holds (length, header, digits, MD5); anything else is a regular file that happens
to be 1067 bytes long. cscd never follows a link itself: the kernel resolves it through
``readlink``.
"""

from __future__ import annotations

import hashlib

from cscd.errors import NameTooLong

SIZE = 1067
_MAGIC = b"XSym\n"
_HEADER = len(_MAGIC) + 5 + 33  # magic, "NNNN\n", 32 hex digits + "\n"
#: the longest target that fits (the rest of the 1067 bytes after the header and its "\n")
MAX_TARGET = SIZE - _HEADER - 1


def encode(target: bytes) -> bytes:
    """The 1067-byte server file for a link to ``target``; ``NameTooLong`` if it cannot fit."""
    if not target or len(target) > MAX_TARGET:
        raise NameTooLong(f"a symbolic link's target must be 1 to {MAX_TARGET} bytes long "
                          f"(the Minshall-French form the server stores), not {len(target)}")
    body = b"%s%04d\n%s\n%s\n" % (_MAGIC, len(target), hashlib.md5(target).hexdigest().encode(), target)  # noqa: S324 - the format's checksum
    return body + b" " * (SIZE - len(body))


def decode(data: bytes) -> bytes | None:
    """The target if ``data`` is a Minshall-French link, else None."""
    if len(data) != SIZE or not data.startswith(_MAGIC):
        return None
    digits = data[len(_MAGIC):len(_MAGIC) + 4]
    if not digits.isdigit() or data[len(_MAGIC) + 4:len(_MAGIC) + 5] != b"\n":
        return None
    length = int(digits)
    digest = data[len(_MAGIC) + 5:len(_MAGIC) + 37]
    target = data[_HEADER:_HEADER + length]
    if not 0 < length <= MAX_TARGET or data[len(_MAGIC) + 37:_HEADER] != b"\n" \
            or data[_HEADER + length:_HEADER + length + 1] != b"\n":
        return None
    if hashlib.md5(target).hexdigest().encode() != digest.lower():  # noqa: S324 - the format's checksum
        return None
    return target

"""Which names a Windows/SMB server can store; shared by ``fs`` (refuse early) and ``upstream``.

Leaf module. A POSIX name is bytes; SMB names are UTF-16 strings with reserved characters.
We refuse at create/rename time, so the user sees EINVAL at once instead of a file that never
reaches the server.
"""

from __future__ import annotations

import re

from cscd.errors import BadName, NameTooLong

RESERVED_CHARS = frozenset('\\:*?"<>|')
RESERVED_DEVICE_NAMES = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"COM{i}" for i in range(1, 10)] + [f"LPT{i}" for i in range(1, 10)]
)
_RESERVED_RE = re.compile(r'[\\:*?"<>|\x00-\x1f]')  # RESERVED_CHARS and controls
MAX_NAME_BYTES = 255

#: Prefix of the temporary names cscd uses on the server while uploading; hidden from listings.
UPLOAD_TEMP_PREFIX = ".cscd-upload-"


def check_name(name: bytes) -> str:
    """Return ``name`` decoded for the server, or raise ``BadName``/``NameTooLong``.

    Refuses what POSIX or SMB cannot hold: empty, ``.``/``..``, ``/`` or NUL, over 255 bytes,
    not UTF-8, SMB-reserved characters, control characters, a trailing dot or space, and
    DOS device names. The server cscd talks to decides in the end; this mirrors Windows rules.
    """
    if len(name) > MAX_NAME_BYTES:
        raise NameTooLong(f"name is {len(name)} bytes long; at most {MAX_NAME_BYTES} are allowed")
    if name in (b"", b".", b".."):
        raise BadName(f"{name!r} is not a usable file name")
    if b"/" in name or b"\0" in name:
        raise BadName(f"{name!r} contains '/' or NUL")
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        raise BadName(f"{name!r} is not valid UTF-8; the server stores names as Unicode") from None
    if _RESERVED_RE.search(text):  # the set below only for the message: listings check every name
        bad = sorted({c for c in text if c in RESERVED_CHARS or ord(c) < 32})
        raise BadName(f"{text!r} contains characters the server cannot store: {''.join(bad)!r}")
    if text.endswith((".", " ")):
        raise BadName(f"{text!r} ends with a dot or a space, which the server cannot store")
    if text.split(".", 1)[0].upper() in RESERVED_DEVICE_NAMES:
        raise BadName(f"{text!r} is a reserved device name on the server")
    return text


def is_internal_name(name: str) -> bool:
    """True for names cscd itself creates on the server (upload temporaries)."""
    return name.startswith(UPLOAD_TEMP_PREFIX)

r"""File names: which a Linux program may use here, and how they are stored on an SMB server.

Leaf module. A POSIX name is bytes; SMB names are UTF-16 strings in which ``\ : * ? " < > |``
and a trailing dot or space cannot appear. Those are stored mapped, reversibly, into the
Services-for-Mac private-use range (U+F020-U+F029), the mapping ``mount.cifs -o mapposix``,
Samba's ``vfs_catia`` and ``vfs_fruit`` (``fruit:encoding = private``) and macOS use, so a
tree cscd writes reads the same through them and the other way round (``server_name`` /
``local_name``; the mount shows the original names). Still refused at create/rename time
(EINVAL, with the reason): ``/`` and NUL, control characters, names over 255 bytes, non-UTF-8
names, ``.``/``..`` and DOS device names (``CON``, ``NUL``, ``COM1`` …: Windows clients could
not open them even mapped, and Samba refuses some, so a clear error now beats a file that
fails elsewhere). A literal U+F020-U+F029 in a Linux name reads back as the character it
stands for (the same ambiguity the other clients accept).

``check_strict`` keeps the unmapped rules for names an admin writes as server names (UNC
paths in policies, ``redirections.xml`` paths); ``check_server_name`` refuses a host name that
is neither a DNS name nor an IP literal (in policies and in DFS referrals alike).
"""

from __future__ import annotations

import ipaddress
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


#: character → the private-use character it is stored as on the server (SFM / mapposix)
TO_SERVER = {'"': "\uf020", "*": "\uf021", ":": "\uf022", "<": "\uf023", ">": "\uf024",
             "?": "\uf025", "\\": "\uf026", "|": "\uf027"}
TRAILING_TO_SERVER = {" ": "\uf028", ".": "\uf029"}
FROM_SERVER = {v: k for k, v in {**TO_SERVER, **TRAILING_TO_SERVER}.items()}
_TO_SERVER_TABLE = str.maketrans(TO_SERVER)
_FROM_SERVER_TABLE = str.maketrans(FROM_SERVER)
_CONTROL_RE = re.compile(r"[\x00-\x1f]")
_NEEDS_MAPPING_RE = re.compile(r'[\\:*?"<>|]|[ .]$')


def check_name(name: bytes) -> str:
    """Return ``name`` decoded, or raise ``BadName``/``NameTooLong`` (see the module docstring
    for what is refused; the SMB-reserved characters are not: ``server_name`` maps them)."""
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
    if _CONTROL_RE.search(text):
        raise BadName(f"{text!r} contains control characters, which the server cannot store")
    if text.rstrip(" .").split(".", 1)[0].upper() in RESERVED_DEVICE_NAMES:
        raise BadName(f"{text!r} is a reserved device name on the server (Windows cannot open it)")
    return text


def server_name(name: bytes) -> str:
    """The server form of a local name: checked, then mapped (``\\ : * ? " < > |`` anywhere,
    a trailing space or dot) into U+F020-U+F029."""
    text = check_name(name)
    if _NEEDS_MAPPING_RE.search(text) is None:
        return text
    text = text.translate(_TO_SERVER_TABLE)
    stem = text.rstrip(" .")
    return stem + "".join(TRAILING_TO_SERVER[c] for c in text[len(stem):])


def local_name(text: str) -> bytes:
    """The local form of a server name (the reverse of ``server_name``), as UTF-8 bytes."""
    if text.isascii():  # the mapped characters are not: most names skip the translation
        return text.encode("ascii")
    return text.translate(_FROM_SERVER_TABLE).encode("utf-8", "surrogatepass")


def check_strict(name: bytes) -> str:
    """The unmapped rules, for names an admin writes in their server form: as ``check_name``,
    and no SMB-reserved character, no trailing dot or space."""
    text = check_name(name)
    if _RESERVED_RE.search(text):
        bad = sorted({c for c in text if c in RESERVED_CHARS})
        raise BadName(f"{text!r} contains characters the server cannot store: {''.join(bad)!r}")
    if text.endswith((".", " ")):
        raise BadName(f"{text!r} ends with a dot or a space, which the server cannot store")
    return text


def is_internal_name(name: str) -> bool:
    """True for names cscd itself creates on the server (upload temporaries)."""
    return name.startswith(UPLOAD_TEMP_PREFIX)


_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def check_server_name(server: str) -> str:
    """Return ``server`` if it is a plausible host name or IP address, else raise BadName."""
    if not server:
        raise BadName("the server name is empty")
    try:
        return str(ipaddress.ip_address(server.strip("[]")))
    except ValueError:
        pass
    if len(server) > 253:
        raise BadName(f"server name {server[:40]!r}… is longer than 253 characters")
    labels = server.rstrip(".").split(".")
    if not all(_HOST_LABEL.match(label) for label in labels):
        raise BadName(f"{server!r} is not a valid host name (letters, digits, '-' and '.' only)")
    return server


def join_path(parent: bytes, name: bytes) -> bytes:
    """A path below a folder target, ``/``-separated as the upstreams take it (``b""`` is the
    target itself)."""
    return parent + b"/" + name if parent else name

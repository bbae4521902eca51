"""The kernel's file encryption (fscrypt, v2 policies) as cscd uses it: four ioctls.

Owns the structures of ``linux/fscrypt.h`` that cscd needs and nothing else: which key a
directory is encrypted with (``policy_key``), putting an empty directory under a key
(``set_policy``), giving the file system a key (``add_key``) and taking it back
(``remove_key``), and whether the key is there (``key_present``). Contents are AES-256-XTS,
names AES-256-CTS, as ``fscrypt`` and Android use them; the kernel does the work (with the
CPU's AES instructions), so a read or a write costs what it costs on a plain file plus the
cipher.

Why the kernel and not a library: every byte cscd serves from its cache goes through
``pread``/``pwrite`` on the content files and through LMDB's own file I/O; with fscrypt the
bytes on the disk are encrypted below both, and no code path of cscd can forget to.

Blocking syscalls on local files; ``FscryptError`` carries what the kernel said (``errno``).
Linux ≥ 5.4; ext4 with the ``encrypt`` feature (``tune2fs -O encrypt``), f2fs, ubifs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from pathlib import Path

KEY_BYTES = 64
IDENTIFIER_BYTES = 16
_POLICY_V2 = 2
_MODE_AES_256_XTS = 1
_MODE_AES_256_CTS = 4
_FLAGS_PAD_32 = 0x03
_KEY_SPEC_IDENTIFIER = 2
_STATUS_PRESENT = 2


def _iowr(nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (ord("f") << 8) | nr


def _ior(nr: int, size: int) -> int:
    return (2 << 30) | (size << 16) | (ord("f") << 8) | nr


_SET_POLICY = _ior(19, 12)  # FS_IOC_SET_ENCRYPTION_POLICY (sized for v1; takes v2 too)
_GET_POLICY_EX = _iowr(22, 9)  # FS_IOC_GET_ENCRYPTION_POLICY_EX
_ADD_KEY = _iowr(23, 80)  # FS_IOC_ADD_ENCRYPTION_KEY
_REMOVE_KEY = _iowr(24, 64)  # FS_IOC_REMOVE_ENCRYPTION_KEY
_KEY_STATUS = _iowr(26, 128)  # FS_IOC_GET_ENCRYPTION_KEY_STATUS

_POLICY_V2_FMT = "=BBBB4x16s"  # 24 bytes
_KEY_SPEC_FMT = "=II32s"  # 40 bytes


class FscryptError(OSError):
    """What the kernel refused, with a sentence; ``errno`` as it said it."""


def _ioctl(path: Path, request: int, arg: bytearray, what: str, *, absent: int = 0) -> bytearray | None:
    """The ioctl on a directory; None where the kernel answers ``absent`` (an errno)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, request, arg, True)
    except OSError as exc:
        if absent and exc.errno == absent:
            return None
        raise FscryptError(exc.errno, f"{what} on {path}: {_explain(exc.errno)}") from None
    finally:
        os.close(fd)
    return arg


def _explain(code: int | None) -> str:
    if code in (errno.EOPNOTSUPP, errno.ENOTTY):
        return ("the file system does not support encryption (ext4 needs the encrypt feature: "
                "tune2fs -O encrypt DEVICE; tmpfs, xfs and btrfs have none)")
    if code == errno.ENOTEMPTY:
        return "the directory is not empty"
    if code == errno.ENOKEY:
        return "its key is not loaded"
    if code == errno.EEXIST:
        return "it is already encrypted with another key"
    if code == errno.EACCES:
        return "permission denied"
    return os.strerror(code or 0)


def contents_cipher_driver(proc_crypto: Path = Path("/proc/crypto")) -> str:
    """The kernel's implementation of ``xts(aes)`` that fscrypt will use (the one of highest
    priority), e.g. ``xts-aes-vaes-avx2``; "" if the kernel lists none yet (it loads one at
    first use)."""
    best, best_priority, entry = "", -1, {}
    try:
        text = proc_crypto.read_text()
    except OSError:
        return ""
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if entry.get("name") == "xts(aes)" and int(entry.get("priority", "0")) > best_priority:
                best, best_priority = entry.get("driver", ""), int(entry.get("priority", "0"))
            entry = {}
            continue
        key, _, value = line.partition(":")
        entry[key.strip()] = value.strip()
    return best


def is_generic_driver(driver: str) -> bool:
    """True for the kernel's portable C AES (no AES-NI / ARMv8 crypto extensions): several
    times slower than the disk; the machine's kernel lacks (or has not loaded) its AES module."""
    return "aes-generic" in driver or "aes-fixed-time" in driver


def policy_key(directory: Path) -> bytes | None:
    """The identifier of the key ``directory`` is encrypted with; None if it is not encrypted.
    Raises ``FscryptError`` where the file system has no encryption at all."""
    arg = bytearray(struct.pack("=Q", 24) + bytes(24))
    if _ioctl(directory, _GET_POLICY_EX, arg, "reading the encryption policy", absent=errno.ENODATA) is None:
        return None
    version, _contents, _names, _flags, identifier = struct.unpack_from(_POLICY_V2_FMT, arg, 8)
    if version != _POLICY_V2:
        raise FscryptError(errno.EINVAL, f"{directory} is encrypted with a v{version} policy, not one of cscd's")
    return identifier


def set_policy(directory: Path, identifier: bytes) -> None:
    """Encrypt everything made in the empty ``directory`` from now on with the key ``identifier``."""
    arg = bytearray(struct.pack(_POLICY_V2_FMT, _POLICY_V2, _MODE_AES_256_XTS, _MODE_AES_256_CTS,
                                _FLAGS_PAD_32, identifier))
    _ioctl(directory, _SET_POLICY, arg, "setting the encryption policy")


def _key_spec(identifier: bytes = b"") -> bytes:
    return struct.pack(_KEY_SPEC_FMT, _KEY_SPEC_IDENTIFIER, 0, identifier.ljust(32, b"\0"))


def add_key(on: Path, raw: bytes) -> bytes:
    """Give the file system of ``on`` the key ``raw`` (``KEY_BYTES``); returns its identifier
    (the kernel derives it from the key, so the same key always has the same identifier)."""
    if len(raw) != KEY_BYTES:
        raise ValueError(f"an fscrypt key has {KEY_BYTES} bytes, not {len(raw)}")
    arg = bytearray(_key_spec() + struct.pack("=II32x", KEY_BYTES, 0) + raw)
    _ioctl(on, _ADD_KEY, arg, "adding the cache's key")
    _type, _reserved, spec = struct.unpack_from(_KEY_SPEC_FMT, arg, 0)
    return spec[:IDENTIFIER_BYTES]


def key_present(on: Path, identifier: bytes) -> bool:
    arg = bytearray(_key_spec(identifier) + bytes(128 - 40))
    _ioctl(on, _KEY_STATUS, arg, "asking for the key's status")
    (status,) = struct.unpack_from("=I", arg, 64)
    return status == _STATUS_PRESENT


def remove_key(on: Path, identifier: bytes) -> bool:
    """Take this user's claim to the key back: once no file is open, the encrypted files are
    unreadable (and their names garbled) until ``add_key``. False if the kernel had no such
    key from this user."""
    arg = bytearray(_key_spec(identifier) + bytes(64 - 40))
    return _ioctl(on, _REMOVE_KEY, arg, "removing the cache's key", absent=errno.ENOKEY) is not None

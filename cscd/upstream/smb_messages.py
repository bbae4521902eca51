"""The raw SMB2 messages cscd sends and the replies it parses, as plain functions.

Owns building requests (CREATE, READ, WRITE, CLOSE, QUERY_INFO, SET_INFO, QUERY_DIRECTORY)
and reading replies with ``struct``: smbprotocol's ``Open`` helpers wait without a timeout
and round times to microseconds, so requests are built as structures to be sent by
``smb_wire.SmbLink`` and replies are parsed here. Also the access masks and flags of
[MS-SMB2] 2.2.13 and FILETIME conversions. Pure: no sockets, no threads, no trio.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

from smbprotocol.file_info import FileInformationClass, InfoType
from smbprotocol.open import (
    SMB2CloseRequest,
    SMB2CreateRequest,
    SMB2QueryDirectoryRequest,
    SMB2QueryInfoRequest,
    SMB2ReadRequest,
    SMB2SetInfoRequest,
    SMB2WriteRequest,
)

#: FileId for "the file the previous CREATE in this related compound opened".
RELATED_FILE_ID = b"\xff" * 16
#: Largest single READ/WRITE payload: 16 credits; a fresh connection has only 64 (FACTS.md).
MAX_IO = 1 << 20

_FILETIME_EPOCH = 116_444_736_000_000_000  # 1601-01-01 → 1970-01-01 in 100 ns units

# Access masks and flags ([MS-SMB2] 2.2.13); the names say what each call needs.
FILE_READ_DATA = 0x1
FILE_LIST_DIRECTORY = 0x1
FILE_WRITE_DATA = 0x2
FILE_READ_EA = 0x8
FILE_WRITE_EA = 0x10
FILE_READ_ATTRIBUTES = 0x80
FILE_WRITE_ATTRIBUTES = 0x100
DELETE = 0x10000
SYNCHRONIZE = 0x100000
SHARE_ALL = 0x7  # read | write | delete: never lock other clients out
FILE_OPEN = 1
FILE_CREATE = 2
FILE_DIRECTORY_FILE = 0x1
FILE_NON_DIRECTORY_FILE = 0x40
FILE_ATTRIBUTE_DIRECTORY = 0x10
SMB2_RESTART_SCANS = 0x1
CLOSE_POSTQUERY = 0x1
FILE_SUPPORTS_EXTENDED_ATTRIBUTES = 0x00800000
IMPERSONATION = 2


def filetime_to_ns(ft: int) -> int:
    """FILETIME (100 ns since 1601) → integer ns since the Unix epoch (0 stays 0)."""
    return (ft - _FILETIME_EPOCH) * 100 if ft else 0


def ns_to_filetime(ns: int) -> int:
    """Integer ns since the Unix epoch → FILETIME, truncated to 100 ns."""
    return ns // 100 + _FILETIME_EPOCH


@dataclass(frozen=True, slots=True)
class Attrs:
    """What a CREATE or CLOSE(postquery) reply says about a file."""

    is_dir: bool
    size: int
    mtime_ns: int
    ctime_ns: int


def create_req(
    name: str,
    *,
    access: int,
    disposition: int = FILE_OPEN,
    options: int = 0,
    attributes: int = 0,
) -> SMB2CreateRequest:
    msg = SMB2CreateRequest()
    msg["impersonation_level"] = IMPERSONATION
    msg["desired_access"] = access
    msg["file_attributes"] = attributes
    msg["share_access"] = SHARE_ALL
    msg["create_disposition"] = disposition
    msg["create_options"] = options
    msg["buffer_path"] = name.encode("utf-16-le") if name else b"\x00\x00"
    return msg


def read_req(file_id: bytes, offset: int, length: int) -> SMB2ReadRequest:
    msg = SMB2ReadRequest()
    msg["padding"] = 0x50
    msg["length"] = length
    msg["offset"] = offset
    msg["file_id"] = file_id
    return msg


def write_req(file_id: bytes, offset: int, data: bytes) -> SMB2WriteRequest:
    msg = SMB2WriteRequest()
    msg["length"] = len(data)
    msg["offset"] = offset
    msg["file_id"] = file_id
    msg["buffer"] = data
    return msg


def close_req(file_id: bytes, *, postquery: bool = False) -> SMB2CloseRequest:
    msg = SMB2CloseRequest()
    msg["file_id"] = file_id
    if postquery:
        msg["flags"] = CLOSE_POSTQUERY
    return msg


def query_id_req(file_id: bytes) -> SMB2QueryInfoRequest:
    """QUERY_INFO FileInternalInformation: the server's 64-bit file id."""
    msg = SMB2QueryInfoRequest()
    msg["info_type"] = InfoType.SMB2_0_INFO_FILE
    msg["file_info_class"] = FileInformationClass.FILE_INTERNAL_INFORMATION
    msg["output_buffer_length"] = 8
    msg["file_id"] = file_id
    return msg


def query_ea_req(file_id: bytes, max_output: int = 65536) -> SMB2QueryInfoRequest:
    """QUERY_INFO FileFullEaInformation: every EA of the file ([MS-FSCC] 2.4.15)."""
    msg = SMB2QueryInfoRequest()
    msg["info_type"] = InfoType.SMB2_0_INFO_FILE
    msg["file_info_class"] = FileInformationClass.FILE_FULL_EA_INFORMATION
    msg["output_buffer_length"] = max_output
    msg["file_id"] = file_id
    return msg


def fs_full_size_req(file_id: bytes) -> SMB2QueryInfoRequest:
    """QUERY_INFO FileFsFullSizeInformation ([MS-FSCC] 2.5.4): the share's size and the
    space left to this user (quotas included, as Explorer shows it)."""
    msg = SMB2QueryInfoRequest()
    msg["info_type"] = InfoType.SMB2_0_INFO_FILESYSTEM
    msg["file_info_class"] = 7  # FileFsFullSizeInformation
    msg["output_buffer_length"] = 32
    msg["file_id"] = file_id
    return msg


def parse_fs_full_size(header: object) -> tuple[int, int]:
    """(total bytes, bytes available to the caller)."""
    total, caller, _actual, sectors, sector_bytes = struct.unpack_from("<QQQII", _out_buffer(header), 0)
    unit = sectors * sector_bytes
    return total * unit, caller * unit


def ea_info(eas: Mapping[bytes, bytes]) -> bytes:
    """A FileFullEaInformation list; an empty value removes that EA."""
    items = sorted(eas.items())
    out = []
    for i, (name, value) in enumerate(items):
        entry = struct.pack("<BBH", 0, len(name), len(value)) + name + b"\0" + value
        if i + 1 < len(items):
            entry += b"\0" * (-(len(entry) + 4) % 4)
            out.append(struct.pack("<I", len(entry) + 4) + entry)
        else:
            out.append(struct.pack("<I", 0) + entry)
    return b"".join(out)


def parse_eas(header: object) -> list[tuple[bytes, bytes]]:
    """(name, value) pairs of a FileFullEaInformation QUERY_INFO reply."""
    buf = _out_buffer(header)
    out = []
    pos = 0
    while pos + 8 <= len(buf):
        next_off, _flags, name_len, value_len = struct.unpack_from("<IBBH", buf, pos)
        name = bytes(buf[pos + 8 : pos + 8 + name_len])
        value = bytes(buf[pos + 9 + name_len : pos + 9 + name_len + value_len])
        out.append((name, value))
        if not next_off:
            break
        pos += next_off
    return out


def set_info_req(file_id: bytes, info_class: int, buffer: bytes) -> SMB2SetInfoRequest:
    msg = SMB2SetInfoRequest()
    msg["info_type"] = InfoType.SMB2_0_INFO_FILE
    msg["file_info_class"] = info_class
    msg["file_id"] = file_id
    msg["buffer"] = buffer
    return msg


def basic_info(*, mtime_ns: int) -> bytes:
    """FileBasicInformation that changes only the last-write time (0 = leave unchanged)."""
    return struct.pack("<qqqqII", 0, 0, ns_to_filetime(mtime_ns), 0, 0, 0)


def rename_info(new_name: str, *, replace: bool) -> bytes:
    """FileRenameInformation for SMB2: the new name is the full path from the share root."""
    name = new_name.encode("utf-16-le")
    return struct.pack("<B7xQI", 1 if replace else 0, 0, len(name)) + name


def disposition_info() -> bytes:
    return b"\x01"


def query_dir_req(file_id: bytes, *, restart: bool, max_output: int) -> SMB2QueryDirectoryRequest:
    msg = SMB2QueryDirectoryRequest()
    msg["file_information_class"] = FileInformationClass.FILE_ID_FULL_DIRECTORY_INFORMATION
    msg["flags"] = SMB2_RESTART_SCANS if restart else 0
    msg["file_index"] = 0
    msg["file_id"] = file_id
    msg["output_buffer_length"] = max_output
    msg["buffer"] = "*".encode("utf-16-le")
    return msg


# -- reply parsers ----------------------------------------------------------------------------


def body(header: object) -> bytes:
    return header["data"].get_value()  # type: ignore[index,no-any-return]


def parse_create(header: object) -> tuple[bytes, Attrs]:
    """(file id, attributes) from a CREATE reply."""
    b = body(header)
    _ctime, _atime, mtime, change, _alloc, eof, attrs = struct.unpack_from("<QQQQqqI", b, 8)
    file_id = b[64:80]
    is_dir = bool(attrs & FILE_ATTRIBUTE_DIRECTORY)
    return file_id, Attrs(
        is_dir, 0 if is_dir else eof, filetime_to_ns(mtime), filetime_to_ns(change)
    )


def parse_close(header: object) -> Attrs | None:
    """Attributes from a CLOSE reply sent with the post-query flag (None if not filled in)."""
    b = body(header)
    flags = struct.unpack_from("<H", b, 2)[0]
    if not flags & CLOSE_POSTQUERY:
        return None
    _ctime, _atime, mtime, change, _alloc, eof, attrs = struct.unpack_from("<QQQQqqI", b, 8)
    is_dir = bool(attrs & FILE_ATTRIBUTE_DIRECTORY)
    return Attrs(is_dir, 0 if is_dir else eof, filetime_to_ns(mtime), filetime_to_ns(change))


def _out_buffer(header: object) -> bytes:
    b = body(header)
    offset, length = struct.unpack_from("<HI", b, 2)
    start = offset - 64  # offsets count from the start of the SMB2 header
    return b[start : start + length]


def parse_file_id(header: object) -> int:
    """The 64-bit id from a FileInternalInformation QUERY_INFO reply."""
    return int(struct.unpack_from("<Q", _out_buffer(header), 0)[0])


def parse_read(header: object) -> memoryview:
    """The data of a READ reply, as a view (no copy of up to 1 MiB)."""
    b = body(header)
    offset = b[2]
    length = struct.unpack_from("<I", b, 4)[0]
    start = offset - 64
    return memoryview(b)[start : start + length]


def parse_write(header: object) -> int:
    return int(struct.unpack_from("<I", body(header), 4)[0])


@dataclass(frozen=True, slots=True)
class DirEntry:
    name: str
    is_dir: bool
    size: int
    mtime_ns: int
    ctime_ns: int
    file_id: int
    ea_size: int = 0


def parse_dir(header: object) -> list[DirEntry]:
    """Entries of a FileIdFullDirectoryInformation QUERY_DIRECTORY reply ([MS-FSCC] 2.4.18)."""
    buf = _out_buffer(header)
    out = []
    pos = 0
    while pos < len(buf):
        (next_off, _idx, _ct, _at, mtime, change, eof, _alloc, attrs, name_len, ea_size, _res, fid) = (
            struct.unpack_from("<IIQQQQqqIIIIQ", buf, pos)
        )
        name = buf[pos + 80 : pos + 80 + name_len].decode("utf-16-le", "surrogatepass")
        is_dir = bool(attrs & FILE_ATTRIBUTE_DIRECTORY)
        out.append(
            DirEntry(
                name,
                is_dir,
                0 if is_dir else eof,
                filetime_to_ns(mtime),
                filetime_to_ns(change),
                fid,
                ea_size,
            )
        )
        if not next_off:
            break
        pos += next_off
    return out


def rename_into_place_reqs(file_id: bytes, target_spath: str, *, mtime_ns: int, replace: bool) -> list[object]:
    """The last requests of an upload into a temporary, as one compound: its write time set,
    renamed over the target, its file id asked for, closed (with its final attributes)."""
    return [
        set_info_req(file_id, FileInformationClass.FILE_BASIC_INFORMATION, basic_info(mtime_ns=mtime_ns)),
        set_info_req(file_id, FileInformationClass.FILE_RENAME_INFORMATION, rename_info(target_spath, replace=replace)),
        query_id_req(file_id),
        close_req(file_id, postquery=True),
    ]

"""SMB2 messages for server-side copy and change notification: builders and reply parsers.

Owns the byte layouts of FSCTL_SRV_REQUEST_RESUME_KEY, FSCTL_SRV_COPYCHUNK_WRITE
([MS-SMB2] 2.2.31.1, 2.2.32.1, 2.2.32.3) and CHANGE_NOTIFY with FILE_NOTIFY_INFORMATION
([MS-SMB2] 2.2.35/2.2.36, [MS-FSCC] 2.7.1), next to ``smb_wire``'s builders for the
everyday messages. No network, no threads, no state: pure functions over bytes.

Samba's (and Windows') copy limits: at most 256 chunks per request, 1 MiB per chunk and
16 MiB per request (a request over them fails with STATUS_INVALID_PARAMETER, FACTS.md).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from smbprotocol.change_notify import SMB2ChangeNotifyRequest
from smbprotocol.ioctl import SMB2IOCTLRequest

from cscd.upstream.smb_messages import body

FSCTL_SRV_REQUEST_RESUME_KEY = 0x00140078
FSCTL_SRV_COPYCHUNK_WRITE = 0x001480F2
FSCTL_DFS_GET_REFERRALS = 0x00060194
#: the file id of an IOCTL that names no open file ([MS-SMB2] 2.2.31)
NO_FILE_ID = b"\xff" * 16
SMB2_0_IOCTL_IS_FSCTL = 0x1

COPY_MAX_CHUNKS = 256
COPY_MAX_CHUNK_BYTES = 1 << 20
COPY_MAX_REQUEST_BYTES = 16 << 20

SMB2_WATCH_TREE = 0x1
#: File and directory names, sizes, write times and attributes: what a rescan would notice.
NOTIFY_FILTER = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x40
#: One credit's worth; Samba answers NOTIFY_ENUM_DIR when the queued changes overflow it.
NOTIFY_BUFFER = 64 << 10

FILE_END_OF_FILE_INFORMATION = 20
FILE_OPEN_IF = 3

_CHUNK = struct.Struct("<QQII")
_COPY_HEADER = struct.Struct("<24sII")


def ioctl_req(
    file_id: bytes, ctl_code: int, data: bytes = b"", *, max_output: int
) -> SMB2IOCTLRequest:
    msg = SMB2IOCTLRequest()
    msg["ctl_code"] = ctl_code
    msg["file_id"] = file_id
    msg["max_input_response"] = 0
    msg["max_output_response"] = max_output
    msg["flags"] = SMB2_0_IOCTL_IS_FSCTL
    msg["buffer"] = data
    return msg


def referral_req(path: str) -> SMB2IOCTLRequest:
    r"""Ask for the DFS referral of ``path`` (``\\server\share\...`` with one leading
    backslash, [MS-DFSC] 2.2.2); sent on the ``IPC$`` share."""
    from smbprotocol.dfs import DFSReferralRequest

    request = DFSReferralRequest()
    request["max_referral_level"] = 4
    request["request_file_name"] = path
    return ioctl_req(NO_FILE_ID, FSCTL_DFS_GET_REFERRALS, request.pack(), max_output=56 * 1024)


def resume_key_req(file_id: bytes) -> SMB2IOCTLRequest:
    """Ask for the key that names an open source file in copy requests."""
    return ioctl_req(file_id, FSCTL_SRV_REQUEST_RESUME_KEY, max_output=32)


def copychunk_req(
    target_file_id: bytes, resume_key: bytes, chunks: Sequence[tuple[int, int, int]]
) -> SMB2IOCTLRequest:
    """Copy ``(source offset, target offset, length)`` chunks from the resume key's file."""
    if not 0 < len(chunks) <= COPY_MAX_CHUNKS:
        raise ValueError(f"a copy request holds 1 to {COPY_MAX_CHUNKS} chunks")
    parts = [_COPY_HEADER.pack(resume_key, len(chunks), 0)]
    parts += [_CHUNK.pack(src, dst, n, 0) for src, dst, n in chunks]
    return ioctl_req(target_file_id, FSCTL_SRV_COPYCHUNK_WRITE, b"".join(parts), max_output=12)


def ioctl_output(header: object) -> bytes:
    """The output buffer of an IOCTL reply ([MS-SMB2] 2.2.32)."""
    b = body(header)
    offset, count = struct.unpack_from("<II", b, 32)
    start = offset - 64  # offsets count from the start of the SMB2 header
    return bytes(b[start : start + count])


def parse_resume_key(header: object) -> bytes:
    out = ioctl_output(header)
    if len(out) < 24:
        raise ValueError("the server sent a resume key of less than 24 bytes")
    return out[:24]


def parse_copychunk(header: object) -> int:
    """TotalBytesWritten of a SRV_COPYCHUNK_RESPONSE."""
    out = ioctl_output(header)
    _chunks, _chunk_bytes, total = struct.unpack_from("<III", out, 0)
    return int(total)


def notify_req(file_id: bytes, *, tree: bool) -> SMB2ChangeNotifyRequest:
    msg = SMB2ChangeNotifyRequest()
    msg["flags"] = SMB2_WATCH_TREE if tree else 0
    msg["output_buffer_length"] = NOTIFY_BUFFER
    msg["file_id"] = file_id
    msg["completion_filter"] = NOTIFY_FILTER
    return msg


def parse_notify(header: object) -> list[tuple[int, str]]:
    """``(action, name)`` pairs of a CHANGE_NOTIFY reply; ``[]`` for an empty buffer.

    Names are relative to the watched directory, with backslashes.
    """
    b = body(header)
    offset, length = struct.unpack_from("<HI", b, 2)
    if not length:
        return []
    start = offset - 64
    buf = memoryview(b)[start : start + length]
    out = []
    pos = 0
    while pos + 12 <= len(buf):
        next_off, action, name_len = struct.unpack_from("<III", buf, pos)
        name = bytes(buf[pos + 12 : pos + 12 + name_len]).decode("utf-16-le", "surrogatepass")
        out.append((int(action), name))
        if not next_off:
            break
        pos += next_off
    return out


def eof_info(size: int) -> bytes:
    """FileEndOfFileInformation."""
    return struct.pack("<q", size)

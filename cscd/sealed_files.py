"""Sealed content files: the on-disk format of a file that cscd encrypted, and its reads and writes.

A leaf, so that what reads a sealed file outside the cache can: the upload and hashing worker
processes read the snapshots of large files in a sealed cache through ``SealedReader``, with
the content key alone (not the cache's key, which also opens the index). ``cscd.cache.sealing``
owns the rest (the cache's key, its index entries, why and when the cache is sealed).

A content file is sealed in blocks, so that a read or write of a few bytes in a large file
costs one block, not the file:

- a 32-byte header: ``MAGIC``, a random 16-byte file id and the 8-byte id of the key that
  seals its blocks (0: the content key itself; another id: a key of the file's own folder,
  which a wipe destroys, ``cscd.cache.sealing``). The header is written with the first byte
  of content; a file of 0 bytes on the disk is an empty file;
- then block *i* of ``BLOCK`` plaintext bytes in slot *i* of ``SLOT`` bytes: a random 12-byte
  nonce, the ciphertext and the 16-byte GCM tag. Only the last block is shorter. The file id
  and *i* are the authenticated data, so a block cannot be moved to another place or file;
- a slot whose nonce is all zeros is a hole (``ftruncate`` made it, or a placeholder's
  unfetched part) and reads as zeros, as a hole in a plain file does.

The physical size says the logical one (``logical_size``), so a sealed file needs no other
record. ``copy_file_range`` of a sealed file is a sealed file with the same id and key: the
snapshot of a large file that an upload reads is such a copy, on the disk and sealed.

Blocking local I/O on file descriptors; callers use it where they used ``os.pread`` and
``os.pwrite``, on the same threads. Reads and writes of one file are not atomic against each
other across threads (a read may see a block half written and fail its tag): the cache reads
and writes a live file only on the trio thread.
"""

from __future__ import annotations

import functools
import os
import struct
import threading
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cscd.errors import CorruptContent

MAGIC = b"cscdSL01"
HEADER = 32
BLOCK = 64 << 10
NONCE = 12
TAG = 16
OVERHEAD = NONCE + TAG
SLOT = BLOCK + OVERHEAD
ZERO_NONCE = bytes(NONCE)
_BLOCK_AAD = struct.Struct(">16sQ")
_KEY_ID = struct.Struct(">Q")
#: a read that ends within this many bytes of the file's start learns the file's size from
#: what comes back rather than from an fstat (``SealedContent.pread``)
UNSIZED_READ_BYTES = 4 * BLOCK
#: headers of files read before, kept per object (``SealedContent._known``): at most this many
HEADERS_KEPT = 4096
#: bytes of the key of content files (AES-256)
CONTENT_KEY_BYTES = 32


class SealedKey(NamedTuple):
    """A key of content files and the id its files' headers name it by: what travels to a
    worker process that reads a sealed snapshot."""

    key_id: int
    key: bytes


def logical_size(physical: int) -> int:
    """Plaintext bytes of a sealed file ``physical`` bytes long."""
    if physical <= HEADER:
        return 0
    full, rest = divmod(physical - HEADER, SLOT)
    return full * BLOCK + max(rest - OVERHEAD, 0)


def physical_size(logical: int) -> int:
    """Bytes on the disk of a sealed file of ``logical`` plaintext bytes (with its header)."""
    full, rest = divmod(logical, BLOCK)
    return HEADER + full * SLOT + (rest + OVERHEAD if rest else 0)


def _slot_offset(index: int) -> int:
    return HEADER + index * SLOT


class _File(NamedTuple):
    """What a sealed file's header says: its id (in every block's authenticated data) and
    the cipher of the key it names."""

    file_id: bytes
    cipher: AESGCM


class SealedContent:
    """Sealed reads and writes of content files under one content key (id 0), and the keys
    of other ids that a subclass adds (``keys``, ``new_file_key``)."""

    def __init__(self, content_key: bytes, key_id: int = 0) -> None:
        if len(content_key) != CONTENT_KEY_BYTES:
            raise ValueError(f"a content key has {CONTENT_KEY_BYTES} bytes, not {len(content_key)}")
        self.content_key = bytes(content_key)
        #: key id → key and its cipher; a file's header names its key
        self.keys: dict[int, SealedKey] = {key_id: SealedKey(key_id, self.content_key)}
        self._ciphers: dict[int, AESGCM] = {key_id: AESGCM(content_key)}
        self._local = threading.local()
        #: (st_dev, st_ino) → the header of a file read before (``_read_known``)
        self._known: dict[tuple[int, int], _File] = {}

    def add_key(self, key: SealedKey) -> None:
        self.keys[key.key_id] = key
        self._ciphers[key.key_id] = AESGCM(key.key)

    def drop_key(self, key_id: int) -> None:
        self.keys.pop(key_id, None)
        self._ciphers.pop(key_id, None)
        self._known.clear()  # kept headers hold their key's cipher: none may outlive the key

    def new_file_key(self, owner: int | None) -> int:
        """The id of the key a new file is sealed with; ``owner`` says whose it is (in the
        cache: a node id of its folder)."""
        return 0

    def key_of(self, fd: int) -> SealedKey:
        """The key that opens the sealed file ``fd`` (its snapshot's, for a worker)."""
        key_id = key_id_in(os.pread(fd, HEADER, 0))
        self._cipher(key_id)  # a key this cache no longer holds: said here, not in the worker
        return self.keys[key_id]

    def size(self, fd: int) -> int:
        return logical_size(os.fstat(fd).st_size)

    def _file(self, fd: int, *, make: bool, owner: int | None = None) -> _File | None:
        """The file's header; a file without one (nothing written yet) gets one (the key of
        ``owner``'s new files) if ``make``, else None (all of it reads as zeros)."""
        found = self._file_in(os.pread(fd, HEADER, 0))
        if found is not None or not make:
            return found
        file_id, key_id = self._file_id(), self.new_file_key(owner)
        _write_all(fd, header_bytes(file_id, key_id), 0)
        return _File(file_id, self._cipher(key_id))

    def _file_in(self, head: bytes | memoryview) -> _File | None:
        """The file a header describes; None for none yet (zeros or nothing)."""
        if len(head) == HEADER and head[:8] == MAGIC:
            return _File(bytes(head[8:24]), self._cipher(_KEY_ID.unpack_from(head, 24)[0]))
        if bytes(head).strip(b"\0"):
            raise CorruptContent("a content file of the cache is not sealed with cscd's format")
        return None

    def _cipher(self, key_id: int) -> AESGCM:
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise CorruptContent(f"a content file of the cache is sealed with a key the cache no longer holds "
                                 f"(key {key_id:016x}: its folder was wiped)")
        return cipher

    @staticmethod
    def _open_block(file: _File, index: int, slot: bytes | memoryview) -> bytes:
        if len(slot) <= OVERHEAD:
            return b""
        if slot[:NONCE] == ZERO_NONCE:
            return bytes(len(slot) - OVERHEAD)
        try:
            return file.cipher.decrypt(bytes(slot[:NONCE]), slot[NONCE:], _BLOCK_AAD.pack(file.file_id, index))
        except InvalidTag:
            raise CorruptContent(f"block {index} of a cached file does not open with the cache's key "
                                 "(changed on the disk)") from None

    def _seal_block(self, file: _File, index: int, plain: bytes | memoryview) -> bytes:
        out = bytearray(len(plain) + OVERHEAD)
        self._seal_block_into(file, index, plain, memoryview(out))
        return bytes(out)

    def _seal_block_into(self, file: _File, index: int, plain: bytes | memoryview, slot: memoryview) -> None:
        """Seal ``plain`` into ``slot`` (``len(plain) + OVERHEAD`` bytes): no copy of the block
        but the cipher's own, which matters at 1 GB/s of writes."""
        nonce = self._nonce()
        slot[:NONCE] = nonce
        file.cipher.encrypt_into(nonce, plain, _BLOCK_AAD.pack(file.file_id, index), slot[NONCE:])

    def _file_id(self) -> bytes:
        """A new file's random id, from the nonces' pool (a ``getrandom`` per file cost as
        much as sealing its block): two draws, never used as nonces."""
        return (self._nonce() + self._nonce())[:16]

    def _nonce(self) -> bytes:
        """A random nonce (never all zeros: that marks a hole), from a pool the kernel fills
        341 at a time: one ``getrandom`` per block released the GIL twice per block, and
        another thread could take it for its whole switch interval."""
        local = self._local
        pool, at = getattr(local, "nonces", b""), getattr(local, "at", 0)
        while True:
            if at + NONCE > len(pool):
                pool, at = os.urandom(NONCE * 341), 0
                local.nonces = pool
            nonce = pool[at:at + NONCE]
            at += NONCE
            if nonce != ZERO_NONCE:
                local.at = at
                return nonce

    def _read_blocks(self, fd: int, file: _File | None, first: int, last: int, size: int) -> list[bytes]:
        """Plaintext of blocks ``first..last`` (inclusive) of a file of ``size`` bytes."""
        lo = _slot_offset(first)
        hi = min(_slot_offset(last + 1), physical_size(size))
        raw = _read_all(fd, hi - lo, lo) if file is not None else b""
        return self._open_slots(file, memoryview(raw), first, last, size)

    def _open_slots(self, file: _File | None, view: memoryview, first: int, last: int, size: int) -> list[bytes]:
        out = []
        for i in range(first, last + 1):
            want = min(BLOCK, size - i * BLOCK)
            slot = view[(i - first) * SLOT:(i - first) * SLOT + want + OVERHEAD]
            plain = self._open_block(file, i, slot) if file is not None and len(slot) else b""
            out.append(plain.ljust(want, b"\0") if len(plain) < want else plain)
        return out

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        """Like ``os.pread``: up to ``length`` bytes at ``offset``, fewer at the end."""
        data = self.read_reply(fd, length, offset)
        return data if type(data) is bytes else bytes(data)

    def read_reply(self, fd: int, length: int, offset: int) -> bytes | bytearray:
        """``pread`` for a caller that hands the bytes on at once (a FUSE read's reply, which
        takes any buffer): a read past the first blocks comes back as the ``bytearray`` its
        blocks were opened into, without the copy into ``bytes`` (9 µs of a 128 KiB read's
        48 µs, measured in-process on tmpfs)."""
        if length <= 0:
            return b""
        if offset < BLOCK and offset + length <= UNSIZED_READ_BYTES:
            # Every small file's case: the header and the blocks in one read, and no fstat. A
            # read that comes back short says where the file ends; a full one, that its blocks
            # up to there are whole (only a file's last block is short).
            last = (offset + length - 1) // BLOCK
            want = _slot_offset(last + 1)
            raw = memoryview(_read_all(fd, want, 0))
            size = logical_size(len(raw)) if len(raw) < want else (last + 1) * BLOCK
            end = min(offset + length, size)
            if offset >= end:
                return b""
            blocks = self._open_slots(self._file_in(raw[:HEADER]), raw[HEADER:], 0, (end - 1) // BLOCK, size)
            data = blocks[0] if len(blocks) == 1 else b"".join(blocks)
            return data[offset:end]
        st = os.fstat(fd)
        size = logical_size(st.st_size)
        end = min(offset + length, size)
        if offset >= end:
            return b""
        return self._read_known(fd, (st.st_dev, st.st_ino), offset, end, size)

    def _read_known(self, fd: int, inode: tuple[int, int], offset: int, end: int, size: int) -> bytearray:
        """``[offset, end)`` of a file past its first blocks, with its header as read before.

        Why not read the header again: a sequential reader of a large file (a FUSE read of
        128 KiB, over and over) then read 32 bytes at offset 0 before each of its reads: a
        system call more per read. A header kept from before that no longer fits (a new file
        under a reused inode number, one cut to nothing and written again) fails its blocks'
        tags, and is read again once."""
        file = self._known.get(inode)
        if file is not None:
            try:
                return self._read_range(fd, file, offset, end, size)
            except CorruptContent:
                self._known.pop(inode, None)  # another thread may have dropped it too
        file = self._file(fd, make=False)
        if file is not None:
            if len(self._known) >= HEADERS_KEPT:
                self._known.clear()
            self._known[inode] = file
        return self._read_range(fd, file, offset, end, size)

    def _read_range(self, fd: int, file: _File | None, offset: int, end: int, size: int) -> bytearray:
        """Plaintext of ``[offset, end)`` (within ``size``): whole blocks are opened straight
        into the result, without a copy per block and a join."""
        first, last = offset // BLOCK, (end - 1) // BLOCK
        out = bytearray(end - offset)  # a hole, or a file without a header, reads as zeros
        if file is None:
            return out
        lo = _slot_offset(first)
        raw = memoryview(_read_all(fd, min(_slot_offset(last + 1), physical_size(size)) - lo, lo))
        view = memoryview(out)
        for i in range(first, last + 1):
            start = i * BLOCK
            length = min(BLOCK, size - start)
            pos = (i - first) * SLOT
            slot = raw[pos:pos + length + OVERHEAD]
            if len(slot) <= OVERHEAD or slot[:NONCE] == ZERO_NONCE:
                continue  # beyond what the disk holds, or a hole: zeros
            a, b = max(offset, start), min(end, start + length)
            if a == start and b == start + length and len(slot) == length + OVERHEAD:
                try:
                    file.cipher.decrypt_into(bytes(slot[:NONCE]), slot[NONCE:], _BLOCK_AAD.pack(file.file_id, i),
                                             view[a - offset:b - offset])
                except InvalidTag:
                    raise CorruptContent(f"block {i} of a cached file does not open with the cache's key "
                                         "(changed on the disk)") from None
            else:
                piece = self._open_block(file, i, slot)[a - start:b - start]  # short if the disk holds less
                view[a - offset:a - offset + len(piece)] = piece
        return out

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int, owner: int | None = None) -> int:
        """Like ``os.pwrite``: all of ``data`` at ``offset``; a gap before it reads as zeros.
        ``owner``: whose file it is, for the key of a new one (``new_file_key``)."""
        n = len(data)
        if not n:
            return 0
        physical = os.fstat(fd).st_size
        if physical == 0 and offset == 0 and n <= BLOCK:
            return self._write_new_small(fd, data, owner)
        size = logical_size(physical)
        if offset > size:
            self.truncate(fd, offset, owner)
            size, physical = offset, -1
        header = b""
        if physical == 0:  # a new file: its header goes with its first block
            file_id, key_id = self._file_id(), self.new_file_key(owner)
            header = header_bytes(file_id, key_id)
            file = _File(file_id, self._cipher(key_id))
        else:
            file = self._file(fd, make=True, owner=owner)
        end = offset + n
        new_size = max(size, end)
        first, last = offset // BLOCK, (end - 1) // BLOCK
        # Only the first and the last block can hold bytes this write keeps.
        old: dict[int, bytes] = {}
        for i in {first, last}:
            start = i * BLOCK
            covered = offset <= start and end >= min(start + BLOCK, new_size)
            if not covered and start < size:
                old[i] = self._read_blocks(fd, file, i, i, size)[0]
        # Every block the write touches is sealed again whole, at its new length: a block that
        # ended the file and grows moves its tag to the new end of its slot. All of them, and a
        # new file's header, go into one buffer and one write.
        lengths = [min(BLOCK, new_size - i * BLOCK) for i in range(first, last + 1)]
        slots = self._scratch(len(header) + sum(lengths) + OVERHEAD * len(lengths))
        slots[:len(header)] = header
        pos = len(header)
        view = memoryview(data)
        for i, length in zip(range(first, last + 1), lengths, strict=True):
            start = i * BLOCK
            lo, hi = max(offset, start), min(end, start + length)
            if lo == start and hi == start + length:
                plain = view[lo - offset:hi - offset]
            else:
                block = bytearray(old.get(i, b"").ljust(length, b"\0")[:length])
                block[lo - start:hi - start] = view[lo - offset:hi - offset]
                plain = block
            self._seal_block_into(file, i, plain, slots[pos:pos + length + OVERHEAD])
            pos += length + OVERHEAD
        _write_all(fd, slots, 0 if header else _slot_offset(first))
        return n

    def _write_new_small(self, fd: int, data: bytes | memoryview, owner: int | None) -> int:
        """A new file of one block, written whole (most files a user saves): its header and
        its block in one buffer, without the general case's bookkeeping."""
        file_id, key_id = self._file_id(), self.new_file_key(owner)
        nonce = self._nonce()
        sealed = self._cipher(key_id).encrypt(nonce, data, _BLOCK_AAD.pack(file_id, 0))
        _write_all(fd, b"".join((header_bytes(file_id, key_id), nonce, sealed)), 0)
        return len(data)

    def _scratch(self, size: int) -> memoryview:
        """``size`` bytes of this thread's buffer for sealed blocks: a fresh megabyte-sized
        ``bytearray`` per write cost more (its pages zeroed and faulted in) than sealing it."""
        buf = getattr(self._local, "buf", None)
        if buf is None or len(buf) < size:
            buf = self._local.buf = bytearray(max(size, 1 << 20))
        return memoryview(buf)[:size]

    def truncate(self, fd: int, size: int, owner: int | None = None) -> None:
        """Like ``os.ftruncate``: cut, or extend with zeros (holes where the file had none).

        The block that is cut into, or that ended the file and grows, is sealed again at its
        new length before the file's length changes: a crash in between leaves a longer file
        whose blocks all open (growing) or that one block unreadable (cutting)."""
        old = self.size(fd)
        if size == old:
            return
        file = self._file(fd, make=size > 0, owner=owner)
        if file is None:
            os.ftruncate(fd, 0)
            return
        index = min(size, old) // BLOCK
        keep = min(size, old) - index * BLOCK
        new_length = min(BLOCK, size - index * BLOCK)
        if keep and new_length != min(BLOCK, old - index * BLOCK):
            slot = _read_all(fd, min(BLOCK, old - index * BLOCK) + OVERHEAD, _slot_offset(index))
            if slot[:NONCE] != ZERO_NONCE:  # holes stay holes
                plain = self._open_block(file, index, slot)[:keep].ljust(new_length, b"\0")
                _write_all(fd, self._seal_block(file, index, plain), _slot_offset(index))
        os.ftruncate(fd, physical_size(size))



def key_id_in(head: bytes) -> int:
    """The key id a sealed file's first bytes name (0 for a file with no header yet)."""
    return _KEY_ID.unpack_from(head, 24)[0] if len(head) == HEADER and head[:8] == MAGIC else 0


def key_id_of_path(path: str) -> int:
    """``key_id_in`` of the sealed file at ``path`` (``FileNotFoundError`` if there is none)."""
    with open(path, "rb") as file:
        return key_id_in(file.read(HEADER))


def header_bytes(file_id: bytes, key_id: int = 0) -> bytes:
    return MAGIC + file_id + _KEY_ID.pack(key_id)


def _read_all(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) == length or not data:
        return data
    parts = [data]
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


@functools.lru_cache(maxsize=16)
def content_for(content_key: SealedKey) -> SealedContent:
    """The ``SealedContent`` of a key, made once per process (a worker reads many snapshots)."""
    return SealedContent(content_key.key, content_key.key_id)


class SealedReader:
    """A sealed file opened for its plain bytes: what an upload or the chunker reads of a
    sealed cache's snapshot. ``fd`` is the sealed file; ``content_key`` (the key its header
    names) travels to the worker process that opens the same file (``/proc/<pid>/fd/<fd>``)."""

    __slots__ = ("content_key", "fd", "_content")

    def __init__(self, fd: int, content_key: SealedKey) -> None:
        self.fd = fd
        self.content_key = content_key
        self._content = content_for(content_key)

    def pread(self, length: int, offset: int) -> bytes:
        return self._content.pread(self.fd, length, offset)

    def size(self) -> int:
        return self._content.size(self.fd)


#: what an upload reads: a plain file's descriptor, or a sealed file with its key
Source = int | SealedReader


def read_source(source: Source, length: int, offset: int) -> bytes:
    """``os.pread`` of a plain descriptor or the plain bytes of a sealed one."""
    if isinstance(source, int):
        return os.pread(source, length, offset)
    return source.pread(length, offset)

"""The cache encrypted by cscd itself: AES-GCM content files and sealed index names and values.

fscrypt (``cscd.cache.fscrypt``) is the first choice: the kernel encrypts below every read and
write. It needs a file system with encryption turned on, which Debian's default ext4, btrfs,
xfs and tmpfs are not, and it is only as fast as the kernel's AES (a kernel without AES-NI
drivers runs it at an eighth of a plain cache's speed). ``Sealer`` is the other way: cscd
encrypts with OpenSSL's AES-GCM and AES-SIV (``cryptography``), which use the CPU's AES
instructions whatever the kernel has.

Content files are sealed in 64 KiB AES-GCM blocks (``cscd.sealed_files``: the format, and the
reads and writes, which worker processes use too); ``Sealer`` adds the index.

Names in the index are keys of LMDB tables, looked up by equality: they are sealed with AES-SIV,
which is deterministic (the same name under the same directory is the same bytes) and still
authenticated; the directory's id is its associated data, so equal names in two directories
do not look alike. Values are sealed with AES-GCM and a random nonce.

Each redirected folder's content files are sealed with a key of its own, random, kept in
``<cache>/keys/<id>`` sealed with the cache's key (``FolderKeys``); a file's header names its
key. A selective wipe destroys the folder's key (its file overwritten and deleted): the
content is then unreadable wherever its blocks went, on a flash disk that remapped them or in
a snapshot of the file system (crypto-erase), and the files are deleted without being
overwritten. Files sealed before folder keys existed, or in place from a plain cache, name
the content key (id 0); a wipe overwrites those.

What this does not hide: sizes of files (to a block), the shape of the tree (ids and how
many entries), and when things changed. A block's nonce is random (96 bits): NIST's bound for
random nonces under one key is 2^32 encryptions, here 2^32 block writes (256 TiB written
into one cache) before the key should change.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cscd.durable import fsync_dir
from cscd.errors import CorruptContent
from cscd.sealed_files import (  # noqa: F401 - the format's names, for the cache's callers
    BLOCK,
    HEADER,
    MAGIC,
    NONCE,
    OVERHEAD,
    SLOT,
    SealedContent,
    SealedKey,
    key_id_of_path,
    logical_size,
    physical_size,
)

log = logging.getLogger(__name__)

#: the key ``Sealer`` is made from: what ``cscd.policy.cache_key`` keeps
KEY_BYTES = 64
#: index values kept opened (``Sealer.open_value``), and names kept sealed, at most
OPENED_KEPT = 8192
#: a folder key's file: its id is in the name and in the authenticated data
_FOLDER_KEY_AAD = b"cscd folder key "
_KEY_ID = struct.Struct(">Q")


class Sealer(SealedContent):
    """The cache's keys: sealed reads and writes of content files (``SealedContent``) and
    sealed index entries."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a cache key has {KEY_BYTES} bytes, not {len(key)}")
        content, names, values = (
            HKDF(algorithm=hashes.SHA256(), length=n, salt=None, info=info).derive(key)
            for n, info in ((32, b"cscd content"), (64, b"cscd names"), (32, b"cscd values")))
        super().__init__(content)
        self._names = AESSIV(names)
        self._values = AESGCM(values)
        #: sealed value → its plaintext: a node record is read many times per request and
        #: rewritten (with a new nonce) when it changes, so the sealed bytes are their own key
        self._opened: dict[bytes, bytes] = {}
        #: (directory, name) → sealed name: deterministic, and looked up on every request
        self._sealed_names: dict[tuple[bytes, bytes], bytes] = {}
        #: folder name → id of the key its new files get (``keys``); loaded by ``use_folder_keys``
        self._folder_keys: dict[bytes, int] = {}
        #: key id → its folder, for every folder key on the disk (a folder has more than one
        #: if two were made at once: a wipe destroys them all)
        self._key_folders: dict[int, bytes] = {}
        self._making = threading.Lock()
        self._keys_dir: Path | None = None
        #: node id → the name of the folder it is in (None: none known); the cache sets it
        self.folder_of: Callable[[int], bytes | None] | None = None

    # ------------------------------------------------------------------ folder keys

    def use_folder_keys(self, keys_dir: Path, *, owner: bool = True) -> None:
        """Seal each folder's new files with a key of its own, kept in ``keys_dir``; load the
        keys there. A key file that does not open is left alone and its folder's files do not
        open either (``CorruptContent`` names the key). ``owner=False``: only read (a check
        of a cache a daemon may be using): change nothing in ``keys_dir``."""
        if self._keys_dir == keys_dir:
            return
        self._keys_dir = keys_dir
        if owner:
            keys_dir.mkdir(mode=0o700, exist_ok=True)
        for entry in os.scandir(keys_dir):
            if entry.name.endswith(".new"):
                if owner:
                    os.unlink(entry.path)  # a key made when the daemon was killed: never used
                continue
            try:
                key_id = int(entry.name, 16)
                sealed = Path(entry.path).read_bytes()
                plain = self._values.decrypt(sealed[:NONCE], sealed[NONCE:], _FOLDER_KEY_AAD + _KEY_ID.pack(key_id))
            except (ValueError, InvalidTag, OSError) as exc:
                log.warning("%s: not a folder key that opens with the cache's key (%s); files sealed with "
                            "it cannot be read", entry.path, type(exc).__name__)
                continue
            self.add_key(SealedKey(key_id, plain[:32]))
            self._folder_keys[plain[32:]] = key_id
            self._key_folders[key_id] = plain[32:]

    def new_file_key(self, owner: int | None) -> int:
        if owner is None or self.folder_of is None or self._keys_dir is None:
            return 0
        folder = self.folder_of(owner)
        if folder is None:
            return 0
        key_id = self._folder_keys.get(folder)
        if key_id is not None:
            return key_id
        with self._making:  # the trio thread and a sync thread may both write a folder's first file
            key_id = self._folder_keys.get(folder)
            return key_id if key_id is not None else self._make_folder_key(folder)

    def _make_folder_key(self, folder: bytes) -> int:
        """A new random key for ``folder``'s files, on the disk (synced) before any file uses it."""
        assert self._keys_dir is not None
        key_id = int.from_bytes(os.urandom(8), "big") or 1
        key = os.urandom(32)
        nonce = os.urandom(NONCE)
        sealed = nonce + self._values.encrypt(nonce, key + folder, _FOLDER_KEY_AAD + _KEY_ID.pack(key_id))
        path = self._keys_dir / f"{key_id:016x}"
        tmp = path.with_name(path.name + ".new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, sealed)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        fsync_dir(self._keys_dir)
        self.add_key(SealedKey(key_id, key))
        self._key_folders[key_id] = folder
        self._folder_keys[folder] = key_id
        return key_id

    def is_erasable(self, key_id: int) -> bool:
        """Whether files naming ``key_id`` go with their folder's key (``erase_folder_keys``)."""
        return key_id in self._key_folders

    def erase_folder_keys(self, folder: bytes) -> int:
        """Destroy ``folder``'s keys: each one's file overwritten with zeros, synced, deleted.
        Files sealed with them never open again. Returns how many keys went."""
        with self._making:
            self._folder_keys.pop(folder, None)
            gone = [key_id for key_id, owner in self._key_folders.items() if owner == folder]
            for key_id in gone:
                del self._key_folders[key_id]
                self.drop_key(key_id)
        if self._keys_dir is None:
            return 0
        for key_id in gone:
            path = self._keys_dir / f"{key_id:016x}"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                os.pwrite(fd, bytes(os.fstat(fd).st_size), 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.unlink(path)
        if gone:
            fsync_dir(self._keys_dir)
        return len(gone)

    # ------------------------------------------------------------------ index entries

    def seal_name(self, context: bytes, name: bytes) -> bytes:
        """``name`` sealed deterministically; ``context`` (the directory's key prefix) binds it."""
        sealed = self._sealed_names.get((context, name))
        if sealed is None:
            sealed = self._names.encrypt(name, [context])
            if len(self._sealed_names) >= OPENED_KEPT:
                self._sealed_names.clear()
            self._sealed_names[(context, name)] = sealed
        return sealed

    def open_name(self, context: bytes, sealed: bytes) -> bytes:
        try:
            return self._names.decrypt(sealed, [context])
        except InvalidTag:
            raise CorruptContent("a name in the cache's index does not open with the cache's key") from None

    def seal_value(self, value: bytes) -> bytes:
        nonce = self._nonce()
        sealed = nonce + self._values.encrypt(nonce, value, None)
        self._keep_opened(sealed, bytes(value))  # a record written is read back at once, mostly
        return sealed

    def _keep_opened(self, sealed: bytes, plain: bytes) -> None:
        if len(self._opened) >= OPENED_KEPT:
            self._opened.clear()
        self._opened[sealed] = plain

    def open_value(self, sealed: bytes) -> bytes:
        plain = self._opened.get(sealed)
        if plain is not None:
            return plain
        try:
            plain = self._values.decrypt(sealed[:NONCE], sealed[NONCE:], None)
        except InvalidTag:
            raise CorruptContent("an entry of the cache's index does not open with the cache's key") from None
        self._keep_opened(sealed, plain)
        return plain

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

What this does not hide: sizes of files (to a block), the shape of the tree (ids and how
many entries), and when things changed. A block's nonce is random (96 bits): NIST's bound for
random nonces under one key is 2^32 encryptions, here 2^32 block writes (256 TiB written
into one cache) before the key should change.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cscd.errors import CorruptContent
from cscd.sealed_files import (  # noqa: F401 - the format's names, for the cache's callers
    BLOCK,
    HEADER,
    MAGIC,
    NONCE,
    OVERHEAD,
    SLOT,
    SealedContent,
    logical_size,
    physical_size,
)

#: the key ``Sealer`` is made from: what ``cscd.policy.cache_key`` keeps
KEY_BYTES = 64
#: index values kept opened (``Sealer.open_value``), and names kept sealed, at most
OPENED_KEPT = 8192


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

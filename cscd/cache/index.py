"""The LMDB index: the environment, its named databases and their layout (the schema doc).

Owns opening, creating and versioning the index. No network, no content bytes here.

Transactions: one writer at a time, and the write transaction belongs to the thread that
opened it, so **never await inside a write transaction**; functions that need one take
``txn`` first and are synchronous. One write transaction per logical change: a node, its
directory entries and its dirty mark change together or not at all.

Durability: the environment is opened with ``sync=False``; a commit reaches the OS at once
and the disk on ``Index.sync()``, which the cache calls on every ``fsync`` of the mount and
on a one-second timer. After a power cut LMDB is still consistent (it never overwrites live
pages), at worst missing the last second of metadata changes not covered by an ``fsync`` —
what a local filesystem promises, at ~15 µs per change instead of ~0.4 ms.

Named databases (all integers big-endian, so byte order is numeric order):

``meta``
    ``b"schema"`` → ASCII schema version; ``b"next_id"`` → u64, the next node id to give out.
    Version 1 had no ``listed`` and ``tombstones`` (and may lack ``pins`` entries): opening it
    rebuilds those three from the node flags in one walk and writes version 2 (``_migrate``).
``nodes``
    id u64 → packed ``Node`` (``cscd.cache.nodes``): parent, kind, flags, mode, size, times,
    local version, the *base* (what client and server last agreed on: base parent, base name,
    server FileId, size, write time) and the local name.
``children``
    parent u64 + name bytes → child id u64. The local namespace: ``lookup`` is one get.
``dirents``
    parent u64 + child id u64 → name. ``readdir`` walks it in id order; the offset handed to
    the kernel is the last child id, so a listing resumes correctly even if entries were added
    or removed between calls (ids are never reused).
``bases``
    base parent u64 + base name → id. The *remote* namespace as last agreed; a remote listing
    is matched against it, so a local rename not yet on the server is not mistaken for a new
    remote file.
``dirty``
    id u64 → u32 reason bits (``DirtyReason``): what sync must look at.
``ranges``
    id u64 → packed (start u64, end u64) pairs of content present in the store, only for
    partly hydrated files. A file with the ``HYDRATED`` flag has all of its content.
``chunks``
    id u64 → the chunk map of the node's *base* content (``cscd.cache.chunks``): a header
    (base FileId u64, base size u64, base write time i64 ns, chunk count u32) naming the
    server version the map describes, then per chunk offset u64, length u32 and the
    16-byte XXH3-128 digest, in file order, covering ``[0, size)``. A map whose header is
    not the node's current base is stale and never used (so a server-side change or a
    lost upload can never make the delta planner copy the wrong bytes); it is replaced by
    the next upload or full download. Only files; absent when unknown.

``lru``
    id u64 → u64 ns of the last open. Eviction takes the oldest clean, unpinned, closed files.
``pins``
    id u64 → b"" for every node with the ``PINNED`` flag, so finding what pins cover never
    walks the whole index.
``listed``
    id u64 → the 16-byte XXH3-128 digest of the server listing last merged into that directory
    (``cscd.cache.syncside``), or b"" when unknown or when an agreed name under it changed or
    a local name left it since (``nodes.set_base``, ``clear_base`` and ``unlink`` clear it;
    the merge writes it last); one entry for every live directory with the ``LISTED`` flag
    but the root.
    What a full rescan re-lists, without walking every node (``nodes.put`` keeps it in step
    with the flags), and what lets a rescan that finds the same listing skip the merge, also
    after a restart.
``tombstones``
    id u64 → b"" for every node with the ``TOMBSTONE`` flag, so the start-up sweep of finished
    deletes reads only them (``nodes.put`` adds, ``nodes.delete_record`` removes).
``unrecorded``
    parent id u64 + name (as ``bases``) → up to ``unrecorded.KEPT`` notes of node id u64, is a
    directory u8, size u64, write time i64 ns, file id u64, newest first: uploads and renames
    to that server name that were started and not yet recorded (``cscd.cache.unrecorded``;
    recording the result removes the node's note). After a crash or a lost answer, a server
    file there that is such a version is our own, not a second writer's (``cscd.reconcile.Ours``).
    (Schema 2 caches written before it may hold an unused ``sending`` table; nothing reads it.)
``newer``
    id u64 → server FileId u64, size u64, write time i64 ns, change time i64 ns, state u8: a
    newer server version of a complete cached copy, to be fetched whole and swapped in
    (``cscd.cache.newer``; state 1 while the swap is under way). Absent for most nodes.
``xattrs``
    id u64 → the node's ``user.*`` attributes, repeated (name length u16, value length u32,
    name, value), sorted by name (``cscd.cache.attrs``); only for nodes with the ``XATTRS``
    flag. The mode is in the node record; both roam as SMB EAs (``cscd.xattrs``).
``conflicts``
    id u64 of a conflict copy → JSON ``{"original": name, "parent": id, "at": ns, "host": name}``,
    what ``cscd conflicts`` lists until the user resolves it.

A sealed index (``Index(path, sealer)``: the cache encrypted by cscd, ``cscd.cache.sealing``)
keeps the same tables with every name and every value that says something of the files sealed:
the names in the keys of ``children``, ``bases`` and ``unrecorded`` (``Index.child_key``,
deterministic, so lookups stay one get), and the values of ``nodes``, ``dirents``, ``chunks``,
``listed``, ``xattrs`` and ``conflicts`` (``Index.seal``/``unseal``). Ids, dirty bits, range
maps, LRU times and ``newer``'s server versions stay as they are; ``meta`` holds ``b"sealed"``,
a sealed check value that says which key opens the index. A name's order in ``bases`` is then
the order of its sealed bytes, which nothing relies on but a walk's resumption
(``nodes.iter_base_children``).

Invariants: every live node but the root has exactly one ``children`` and one ``dirents``
entry (hard links are not supported); a live node is in ``bases`` iff it has a base; ids are
never reused (a tombstone waiting for its server delete may have lost its ``bases``
entry to the node renamed over it); the root is id 1 and each top-level directory is a redirected folder.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path

import lmdb

from cscd.cache.sealing import Sealer
from cscd.cache.store import scrub_file
from cscd.errors import ConfigError, CorruptContent
from cscd.types import ROOT_ID

log = logging.getLogger(__name__)

SCHEMA_VERSION = b"2"
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
MAP_SIZE_BYTES = 64 << 30
#: For ``_migrate`` only, which must not import ``nodes`` (it imports this module): the kind
#: byte and flag word right after a packed node's u64 parent, and the flag bits it reads.
_KIND_FLAGS = struct.Struct(">BI")
_LISTED, _TOMBSTONE, _PINNED = 2, 4, 8  # nodes.Flag; tests/test_cache_index.py checks


def u64(n: int) -> bytes:
    return _U64.pack(n)


def from_u64(b: bytes) -> int:
    return _U64.unpack(b)[0]


def u32(n: int) -> bytes:
    return _U32.pack(n)


def from_u32(b: bytes) -> int:
    return _U32.unpack(b)[0]


def _as_is(value: bytes) -> bytes:
    return value


#: what ``meta``'s ``b"sealed"`` holds, sealed: the key that opens it is the index's
_SEALED_CHECK = b"cscd sealed index"


def dirent_key(parent: int, child: int) -> bytes:
    return _U64.pack(parent) + _U64.pack(child)


#: In the index directory: a wipe removed rows whose old pages may still hold names; the next
#: open rewrites the file compacted and overwrites the old one (``compact_after_wipe``).
COMPACT_MARKER = "compact-after-wipe"


def compact_after_wipe(path: Path) -> bool:
    """If a wipe asked for it: copy the index compacted (``mdb_env_copy2`` with
    ``MDB_CP_COMPACT``: live pages only), overwrite the old file's blocks with zeros and put
    the copy in its place. Before the daemon opens it; a crash in between leaves either file
    whole (the rename is the switch). Returns True if it ran."""
    marker = path / COMPACT_MARKER
    if not marker.exists():
        return False
    fresh = path / "compacted"
    fresh.mkdir(exist_ok=True, mode=0o700)
    (fresh / "data.mdb").unlink(missing_ok=True)
    env = lmdb.open(str(path), max_dbs=24, readonly=True, lock=False)
    try:
        env.copy(str(fresh), compact=True)
    finally:
        env.close()
    old = path / "data.mdb.wiped"
    os.rename(path / "data.mdb", old)
    os.rename(fresh / "data.mdb", path / "data.mdb")
    scrub_file(old)
    fresh.rmdir()
    marker.unlink()
    return True


class Index:
    """The opened LMDB environment and its named databases."""

    def __init__(self, path: Path, sealer: Sealer | None = None) -> None:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self.sealer = sealer
        #: a value as it is stored, and back (the identity where the index is not sealed)
        self.seal = _as_is if sealer is None else sealer.seal_value
        self.unseal = _as_is if sealer is None else sealer.open_value
        try:
            if compact_after_wipe(path):
                log.info("the cache index was rewritten without what a wipe removed")
        except (OSError, lmdb.Error) as exc:
            log.warning("the cache index could not be compacted after a wipe (%s); names of the wiped "
                        "folder may stay in its free space until LMDB reuses it", exc)
        try:
            self.env = lmdb.open(
                str(path),
                map_size=MAP_SIZE_BYTES,
                max_dbs=24,
                sync=False,
                metasync=False,
                readahead=False,
                lock=True,
            )
        except lmdb.Error as exc:
            raise ConfigError(f"{path}: cannot open the cache index: {exc}") from None
        self.meta = self.env.open_db(b"meta")
        self.nodes = self.env.open_db(b"nodes")
        self.children = self.env.open_db(b"children")
        self.dirents = self.env.open_db(b"dirents")
        self.bases = self.env.open_db(b"bases")
        self.dirty = self.env.open_db(b"dirty")
        self.ranges = self.env.open_db(b"ranges")
        self.chunks = self.env.open_db(b"chunks")
        self.lru = self.env.open_db(b"lru")
        self.conflicts = self.env.open_db(b"conflicts")
        self.pins = self.env.open_db(b"pins")
        self.listed = self.env.open_db(b"listed")
        self.tombstones = self.env.open_db(b"tombstones")
        self.unrecorded = self.env.open_db(b"unrecorded")
        self.newer = self.env.open_db(b"newer")
        self.xattrs = self.env.open_db(b"xattrs")
        with self.env.begin(write=True) as txn:
            version = txn.get(b"schema", db=self.meta)
            if version is None:
                txn.put(b"schema", SCHEMA_VERSION, db=self.meta)
                txn.put(b"next_id", u64(2), db=self.meta)
            elif version == b"1":
                self._migrate(txn)
                txn.put(b"schema", SCHEMA_VERSION, db=self.meta)
            elif version != SCHEMA_VERSION:
                raise ConfigError(
                    f"{path}: cache index has schema {version.decode(errors='replace')}, "
                    f"this cscd needs {SCHEMA_VERSION.decode()}; move the cache directory away"
                )
            self._check_sealing(txn, fresh=version is None)
        for p in path.iterdir():
            os.chmod(p, 0o600)

    def _check_sealing(self, txn: lmdb.Transaction, *, fresh: bool) -> None:
        """A sealed index opens only with its key, and a plain one only without a key."""
        check = txn.get(b"sealed", db=self.meta)
        if self.sealer is None:
            if check is not None:
                self.env.close()
                raise ConfigError(f"{self.path}: the cache index is sealed and no key was given to open it")
            return
        if check is None:
            if not fresh:
                self.env.close()
                raise ConfigError(f"{self.path}: the cache index is not sealed (seal it first: "
                                  "cscd.cache.sealed_cache)")
            txn.put(b"sealed", self.sealer.seal_value(_SEALED_CHECK), db=self.meta)
            return
        try:
            ok = self.sealer.open_value(bytes(check)) == _SEALED_CHECK
        except CorruptContent:
            ok = False
        if not ok:
            self.env.close()
            raise ConfigError(f"{self.path}: the cache index is sealed with another key than the one "
                              "device.cache_key gives; was the key replaced? Restore it, or remove the "
                              "cache (changes not yet uploaded are lost)", exit_code=4)

    def child_key(self, parent: int, name: bytes) -> bytes:
        """The key of ``name`` under ``parent`` in ``children``, ``bases`` and ``unrecorded``."""
        prefix = _U64.pack(parent)
        return prefix + (name if self.sealer is None else self.sealer.seal_name(prefix, name))

    def name_of(self, key: bytes) -> bytes:
        """The name in a ``child_key``."""
        key = bytes(key)
        return key[8:] if self.sealer is None else self.sealer.open_name(key[:8], key[8:])

    def _migrate(self, txn: lmdb.Transaction) -> None:
        """Schema 1 → 2: fill ``listed``, ``tombstones`` and ``pins`` from the node flags.

        One walk over every node, once per cache (about 1 s per million nodes); the only place
        besides ``cscd.cache.check`` that reads the whole ``nodes`` table.
        """
        n = 0
        for key, data in txn.cursor(db=self.nodes):
            is_dir, flags = _KIND_FLAGS.unpack_from(data, 8)
            if flags & _TOMBSTONE:
                txn.put(key, b"", db=self.tombstones)
            elif is_dir and flags & _LISTED and from_u64(key) != ROOT_ID:
                txn.put(key, b"", db=self.listed)
            if flags & _PINNED:
                txn.put(key, b"", db=self.pins)
            n += 1
        log.info("cache index upgraded to schema %s (%d nodes)", SCHEMA_VERSION.decode(), n)

    def allocate_id(self, txn: lmdb.Transaction, count: int = 1) -> int:
        """Hand out ``count`` fresh node ids inside the caller's write transaction; returns
        the first (the others follow it)."""
        n = from_u64(txn.get(b"next_id", db=self.meta))
        txn.put(b"next_id", u64(n + count), db=self.meta)
        return n

    def sync(self) -> None:
        """Force committed transactions to disk (blocking, ~1-2 ms)."""
        self.env.sync(True)

    def close(self) -> None:
        self.env.sync(True)
        self.env.close()

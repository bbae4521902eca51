"""A cache sealed by cscd (``cscd.cache.sealing``): its marker, and a plain cache sealed in place.

Owns the step between "the policy wants the cache encrypted and the file system cannot do it
(no fscrypt)" and a cache whose ``index/`` and ``content/`` hold no name and no byte of a file
in the clear:

- ``<cache>/sealed`` marks a sealed cache. It holds a value sealed with the cache's key, so a
  wrong key is told at start, before anything is read with it;
- a plain cache is sealed by copies: the index table by table into ``index.sealing`` (names
  in keys and values sealed, ``Index``'s layout), every content file into ``content.sealing``
  (holes stay holes). Then the marker is written, the copies swapped in, and the plain files
  overwritten with zeros before they are deleted (``scrub_file``), so freed blocks keep none of it.
  A crash before the marker leaves the plain cache as it was (the copies are made again at
  the next start); one after it finishes the swap at the next start.

Blocking file work: call it from a thread, before the cache is opened.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
from pathlib import Path

import lmdb

from cscd.cache.index import Index, from_u64
from cscd.cache.sealing import Sealer
from cscd.cache.store import copy_data, scrub_tree
from cscd.durable import fsync_dir
from cscd.errors import ConfigError, CorruptContent

log = logging.getLogger(__name__)

MARKER = "sealed"
_CHECK = b"cscd sealed cache"
_NEW, _OLD = ".sealing", ".plain"
_PARTS = ("index", "content")
#: tables whose keys are (parent id, name), and tables whose values are sealed (``Index``)
_NAME_KEYS = (b"children", b"bases", b"unrecorded")
_SEALED_VALUES = (b"nodes", b"dirents", b"chunks", b"xattrs", b"conflicts", b"listed")
_COPY_STEP = 20_000


def is_sealed(cache_dir: Path) -> bool:
    return (cache_dir / MARKER).exists()


def open_sealed(cache_dir: Path, key: bytes) -> Sealer:
    """The sealer of a sealed cache, after its marker opened with ``key``; finishes a swap a
    crash cut. ``ConfigError`` if the key is not the cache's."""
    sealer = Sealer(key)
    try:
        ok = sealer.open_value((cache_dir / MARKER).read_bytes()) == _CHECK
    except CorruptContent:
        ok = False
    if not ok:
        raise ConfigError(f"the cache at {cache_dir} is sealed with another key than the one device.cache_key "
                          "gives; was the key replaced? Restore it, or remove the cache (changes not yet "
                          "uploaded are lost)", exit_code=4)
    for part in _PARTS:
        _finish_swap(cache_dir / part)
    return sealer


def seal(cache_dir: Path, key: bytes) -> Sealer:
    """Seal the (plain, possibly empty) cache at ``cache_dir`` with ``key``; returns its sealer."""
    sealer = Sealer(key)
    for part in _PARTS:
        new = (cache_dir / part).with_name(part + _NEW)
        if new.exists():
            shutil.rmtree(new)  # an unfinished copy of an earlier start
    index, content = cache_dir / "index", cache_dir / "content"
    if (index / "data.mdb").exists():
        log.info("sealing the cache's index (a copy; the plain file is overwritten after)")
        Index(index).close()  # brings an old schema up to date first
        _seal_index(index, index.with_name("index" + _NEW), sealer)
    if content.is_dir() and any(content.rglob("*")):
        log.info("sealing the cache's content (a copy; the plain files are overwritten after)")
        _seal_tree(content, content.with_name("content" + _NEW), sealer)
    marker = cache_dir / MARKER
    tmp = marker.with_name(MARKER + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, sealer.seal_value(_CHECK))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, marker)
    fsync_dir(cache_dir)
    for part in _PARTS:
        _finish_swap(cache_dir / part)
    return sealer


def _finish_swap(directory: Path) -> None:
    new, old = directory.with_name(directory.name + _NEW), directory.with_name(directory.name + _OLD)
    if new.exists():
        if directory.exists():
            if old.exists():
                scrub_tree(old)
            directory.rename(old)
        new.rename(directory)
    if old.exists():
        scrub_tree(old)


def _seal_index(src_path: Path, dst_path: Path, sealer: Sealer) -> None:
    dst_path.mkdir(mode=0o700)
    dst = Index(dst_path, sealer)
    src = lmdb.open(str(src_path), max_dbs=24, readonly=True, lock=False)
    try:
        with src.begin() as txn:
            names = [bytes(k) for k in txn.cursor().iternext(values=False)]
        for name in names:
            if name == b"sending":
                continue  # unused since schema 2 (``index.py``)
            sdb = src.open_db(name, create=False)
            ddb = dst.env.open_db(name)
            with src.begin() as stxn:
                rows = stxn.cursor(db=sdb).iternext()
                while True:
                    step = [(bytes(k), bytes(v)) for k, v in itertools.islice(rows, _COPY_STEP)]
                    if not step:
                        break
                    with dst.env.begin(write=True) as dtxn:
                        for k, v in step:
                            if name in _NAME_KEYS:
                                k = dst.child_key(from_u64(k[:8]), k[8:])
                            if name in _SEALED_VALUES and v:
                                v = sealer.seal_value(v)
                            if name != b"meta" or k != b"sealed":
                                dtxn.put(k, v, db=ddb)
        dst.close()
    finally:
        src.close()


def seal_file(src: int, dst: int, sealer: Sealer) -> None:
    """The plain file ``src`` sealed into the empty ``dst``; its holes stay holes."""
    sealer.truncate(dst, os.fstat(src).st_size)  # holes first: blocks written later fill them
    copy_data(src, lambda data, offset: sealer.pwrite(dst, data, offset))
    os.fsync(dst)


def _seal_tree(src: Path, dst: Path, sealer: Sealer) -> None:
    dst.mkdir(mode=0o700)
    for entry in os.scandir(src):
        target = dst / entry.name
        if entry.is_dir(follow_symlinks=False):
            _seal_tree(Path(entry.path), target, sealer)
        elif entry.is_file(follow_symlinks=False):
            fin = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                fout = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    seal_file(fin, fout, sealer)
                finally:
                    os.close(fout)
            finally:
                os.close(fin)
    fsync_dir(dst)


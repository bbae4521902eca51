"""The cache at rest: encrypted with the kernel's fscrypt when the device policy asks for it.

Owns the decision and the steps between "the policy says ``device.encrypt_cache``" and a cache
whose index (names, sizes, server paths: LMDB's file) and content (every cached byte) are
unreadable on the disk without the key:

- the two directories that hold them, ``index/`` and ``content/``, each get a v2 fscrypt
  policy with the key the caller brings (``cscd.policy.cache_key``); an empty one at once, one
  that holds an older plain cache by a copy into an encrypted twin, a swap, and then the plain
  files overwritten with zeros before they are deleted (so the freed blocks do not keep them);
- at stop, ``lock()`` takes the key back from the kernel: after the last close, the files
  read as ENOKEY and their names are garbled until the next start brings the key again;
- where the file system cannot encrypt (no fscrypt: Debian's default ext4, btrfs, xfs, tmpfs)
  or the kernel does not take the key, cscd seals the cache itself (``SEALED``:
  ``cscd.cache.sealed_cache``, AES-GCM and AES-SIV with the same key); a sealed cache stays
  sealed, also on a file system that could encrypt later;
- with no key at all, the answer is ``ONLINE_ONLY`` with the reason: the daemon then caches
  no folder (Work Folders' "the device does not comply": served from the server only) and
  says so in its status and an event.

A cache that is encrypted but whose key cannot be had now is not "online only": its files are
there and must not be touched, so ``protect`` raises ``CacheLocked`` (the daemon stops with
that sentence). Blocking file work: call it from a thread. Not done: the rest of the cache
directory (the policy copy, the control socket, ``working-offline.json``) stays plain; it
names no file.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cscd.cache import fscrypt, sealed_cache
from cscd.cache.sealing import Sealer
from cscd.cache.store import copy_data, scrub_tree
from cscd.errors import ConfigError

log = logging.getLogger(__name__)

#: what the cache keeps that must not be readable from the disk
PROTECTED = ("index", "content")
PLAIN, ENCRYPTED, SEALED, ONLINE_ONLY = "plain", "encrypted", "sealed", "online only"
#: names of a migration's two sides, beside the directory (a crash leaves them for next time)
_NEW, _OLD = ".encrypting", ".plain"


class CacheLocked(ConfigError):
    """The cache is encrypted and its key cannot be had: nothing is served, nothing touched."""


@dataclass
class CacheProtection:
    """How the cache is kept at rest, for the status and the daemon's stop."""

    state: str = PLAIN
    reason: str = ""
    root: Path | None = None
    identifier: bytes | None = None
    #: the kernel's AES-XTS implementation at start (``/proc/crypto``)
    driver: str = ""
    #: the cache's sealer where cscd encrypts it itself (``SEALED``)
    sealer: Sealer | None = None

    @property
    def online_only(self) -> bool:
        return self.state == ONLINE_ONLY

    def as_dict(self) -> dict[str, str]:
        how = (f"fscrypt v2, AES-256-XTS contents, AES-256-CTS names; kernel cipher {self.driver or '?'}"
               if self.state == ENCRYPTED else
               "sealed by cscd: AES-256-GCM content in 64 KiB blocks under a key per folder (a wipe "
               "destroys the folder's key), AES-SIV names, AES-256-GCM index values"
               if self.state == SEALED else "")
        return {"state": self.state, "reason": self.reason, "how": how}

    def lock(self) -> None:
        """Take the key back from the kernel (at stop): the cache is unreadable until next start.
        A sealed cache's key was only ever in this process."""
        self.sealer = None
        if self.root is None or self.identifier is None:
            return
        try:
            fscrypt.remove_key(self.root, self.identifier)
        except OSError as exc:
            log.warning("the cache's key could not be taken back from the kernel: %s", exc)


#: ``device.encrypt_with``: how a cache not yet encrypted is encrypted
AUTO, FSCRYPT, CSCD = "auto", "fscrypt", "cscd"


def protect(cache_dir: Path, key: bytes | None, key_problem: str = "", *, way: str = AUTO) -> CacheProtection:
    """Encrypt the cache at ``cache_dir`` with ``key`` (None: none could be had, ``key_problem``
    says why). Returns how it is kept; raises ``CacheLocked`` for an encrypted cache without
    its key, ``ConfigError`` for one encrypted with another key.

    A cache already encrypted stays as it is. Otherwise ``way`` chooses: ``fscrypt`` only
    (online only where it cannot be had), ``cscd`` (sealed), or ``auto``: fscrypt where the file
    system encrypts and the kernel's AES is not its portable code, sealed elsewhere."""
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if sealed_cache.is_sealed(cache_dir):
        if key is None:
            raise CacheLocked(f"the cache at {cache_dir} is sealed and its key cannot be had: {key_problem}",
                              exit_code=4)
        return _sealed(cache_dir, sealed_cache.open_sealed(cache_dir, key))
    try:
        existing = {name: _policy_of(cache_dir / name) for name in PROTECTED}
        fscrypt.policy_key(cache_dir)  # does this file system encrypt at all?
        no_fscrypt = ""
    except fscrypt.FscryptError as exc:
        existing, no_fscrypt = {}, f"the cache's file system cannot encrypt ({exc.strerror})"
    encrypted = any(existing.values())
    if key is None:
        if encrypted:
            raise CacheLocked(f"the cache at {cache_dir} is encrypted and its key cannot be had: "
                              f"{key_problem}", exit_code=4)
        return CacheProtection(ONLINE_ONLY, key_problem)
    if not encrypted and way != FSCRYPT:
        driver = fscrypt.contents_cipher_driver()
        if way == CSCD or no_fscrypt or fscrypt.is_generic_driver(driver):
            log.info("the cache is sealed by cscd: %s", "device.encrypt_with says so" if way == CSCD else no_fscrypt
                     or f"the kernel's AES is its portable code ({driver}), several times slower than OpenSSL's")
            return _seal(cache_dir, key)
    if no_fscrypt:
        return CacheProtection(ONLINE_ONLY, f"{no_fscrypt} and device.encrypt_with is {FSCRYPT}")
    try:
        identifier = fscrypt.add_key(cache_dir, key)
    except OSError as exc:
        problem = f"the kernel did not take the cache's key ({exc.strerror or exc})"
        if encrypted:
            raise CacheLocked(f"the cache at {cache_dir} is encrypted and {problem}", exit_code=4) from None
        if way == FSCRYPT:
            return CacheProtection(ONLINE_ONLY, problem)
        log.info("%s: cscd seals the cache itself", problem)
        return _seal(cache_dir, key)
    for name in PROTECTED:
        directory = cache_dir / name
        have = existing[name]
        if have == identifier:
            continue
        if have is not None:
            raise ConfigError(f"{directory} is encrypted with another key ({have.hex()}) than the one "
                              f"device.cache_key gives ({identifier.hex()}); was the key replaced? "
                              "Restore it, or remove the cache (changes not yet uploaded are lost)")
        try:
            _encrypt_dir(directory, identifier)
        except OSError as exc:
            # The plain cache is as it was (the copy went to a twin, removed at the next try).
            shutil.rmtree(directory.with_name(directory.name + _NEW), ignore_errors=True)
            raise ConfigError(f"the cache's {name} could not be encrypted in place ({exc.strerror or exc}); "
                              "it is unchanged and used by nothing until this is fixed (encrypting copies "
                              "it once: the cache's disk needs as much free space as it holds)",
                              exit_code=4) from None
    driver = fscrypt.contents_cipher_driver()
    log.info("the cache at %s is encrypted (fscrypt, key %s, kernel cipher %s)", cache_dir, identifier.hex(),
             driver or "not loaded yet")
    if fscrypt.is_generic_driver(driver):
        log.warning("the kernel encrypts the cache with its portable AES code (%s), not the CPU's AES "
                    "instructions: cached reads and writes are several times slower; load the CPU's "
                    "AES module (aesni_intel on x86) or use a kernel that has it", driver)
    return CacheProtection(ENCRYPTED, "", cache_dir, identifier, driver)


def _seal(cache_dir: Path, key: bytes) -> CacheProtection:
    try:
        sealer = sealed_cache.seal(cache_dir, key)
    except OSError as exc:
        raise ConfigError(f"the cache at {cache_dir} could not be sealed in place ({exc.strerror or exc}); it is "
                          "unchanged and used by nothing until this is fixed (sealing copies it once: the "
                          "cache's disk needs as much free space as it holds)", exit_code=4) from None
    return _sealed(cache_dir, sealer)


def _sealed(cache_dir: Path, sealer: Sealer) -> CacheProtection:
    log.info("the cache at %s is sealed by cscd (AES-GCM, the CPU's AES instructions through OpenSSL)", cache_dir)
    return CacheProtection(SEALED, "", cache_dir, sealer=sealer)


def is_encrypted(cache_dir: Path) -> bool:
    """True if the cache is under an fscrypt key or sealed (whatever the policy says now)."""
    if sealed_cache.is_sealed(cache_dir):
        return True
    try:
        return _policy_of(cache_dir / PROTECTED[0]) is not None
    except fscrypt.FscryptError:
        return False


def _policy_of(directory: Path) -> bytes | None:
    return fscrypt.policy_key(directory) if directory.is_dir() else None


def _encrypt_dir(directory: Path, identifier: bytes) -> None:
    new, old = directory.with_name(directory.name + _NEW), directory.with_name(directory.name + _OLD)
    if old.exists() and not directory.exists():
        old.rename(directory)  # a crash between the two renames: start the copy again
    if new.exists():
        shutil.rmtree(new)  # an unfinished copy (encrypted, incomplete)
    if not directory.exists() or not any(directory.iterdir()):
        directory.mkdir(exist_ok=True, mode=0o700)
        fscrypt.set_policy(directory, identifier)
    else:
        log.info("encrypting the cache's %s (a copy; the plain files are overwritten after)", directory.name)
        new.mkdir(mode=0o700)
        fscrypt.set_policy(new, identifier)
        _copy_tree(directory, new)
        directory.rename(old)
        new.rename(directory)
    if old.exists():
        scrub_tree(old)


def _copy_tree(src: Path, dst: Path) -> None:
    for entry in os.scandir(src):
        target = dst / entry.name
        if entry.is_dir(follow_symlinks=False):
            target.mkdir(mode=0o700)
            _copy_tree(Path(entry.path), target)
        elif entry.is_file(follow_symlinks=False):
            _copy_sparse(Path(entry.path), target)


def _copy_sparse(src: Path, dst: Path) -> None:
    fin = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            size = copy_data(fin, lambda data, offset: os.pwrite(fout, data, offset))
            os.ftruncate(fout, size)
            os.fsync(fout)
        finally:
            os.close(fout)
    finally:
        os.close(fin)

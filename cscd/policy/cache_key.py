"""Where the cache's encryption key comes from (``device.cache_key``), unlocked with the session.

Two sources, as the policy chooses:

- ``secret-service``: the desktop's keyring (GNOME Keyring, KWallet, KeePassXC) holds 64 random
  bytes in an item labelled "cscd cache key" with the attributes ``application
  cscd-cache-key`` and ``cache PATH``; cscd makes it at the first start with the policy on.
  The keyring unlocks with the user's logon, so the cache does too. A locked keyring is an
  answer of its own (``KeyUnavailable``): cscd never prompts.
- ``systemd:NAME``: the credential systemd hands the unit in ``$CREDENTIALS_DIRECTORY/NAME``
  (``LoadCredentialEncrypted=``: sealed to this machine's TPM or host key by ``systemd-creds``);
  64 bytes the admin made, never written by cscd.

The key is never logged, printed or written anywhere by cscd; ``KeyUnavailable`` messages say
what to do. Blocking (a file read or a few D-Bus round trips).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from cscd.policy.model import SECRET_SERVICE_KEY

log = logging.getLogger(__name__)

KEY_BYTES = 64
#: how often a keyring that is not ready is asked again (``cache_key``'s wait)
POLL_S = 0.5
#: what the keyring item carries (not ``application cscd``: that is the password's item)
ITEM_APPLICATION = "cscd-cache-key"
ITEM_LABEL = "cscd cache key"
MAKE_SYSTEMD_KEY = ("head -c 64 /dev/urandom | systemd-creds encrypt --name={name} - "
                    "/etc/credstore.encrypted/{name}")


class KeyUnavailable(Exception):
    """No key can be had now: the sentence says why and what to do. ``transient``: the
    keyring may answer in a moment (locked, or not on the session bus yet), as it does while
    a logon is still unlocking it."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def cache_key(source: str, cache_dir: Path, *, wait_s: float = 0.0,
              on_wait: Callable[[], object] | None = None) -> bytes:
    """The 64-byte key for the cache at ``cache_dir`` from ``source`` (``device.cache_key``);
    made and stored in the keyring if ``secret-service`` has none yet.

    A keyring that is locked, or not on the session bus yet, is asked again for ``wait_s``
    (``timings.keyring_wait_s``; ``on_wait`` is called once, when the wait begins): at logon
    the user's service may start before PAM has unlocked the keyring, and giving up at once
    would leave the cache shut (online only) for the whole session."""
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            return _cache_key(source, cache_dir)
        except KeyUnavailable as exc:
            if not exc.transient or time.monotonic() >= deadline:
                raise
            if not said:
                log.info("waiting up to %.0f s for the keyring (%s)", wait_s, exc)
                if on_wait is not None:
                    on_wait()
                said = True
            time.sleep(POLL_S)


def _cache_key(source: str, cache_dir: Path) -> bytes:
    if source == SECRET_SERVICE_KEY:
        return _from_secret_service(cache_dir)
    if source.startswith("systemd:"):
        return _from_systemd(source.removeprefix("systemd:"))
    raise KeyUnavailable(f"device.cache_key: {source!r} is not a key source")


def _from_systemd(name: str) -> bytes:
    directory = os.environ.get("CREDENTIALS_DIRECTORY", "")
    make = MAKE_SYSTEMD_KEY.format(name=name)
    if not directory:
        raise KeyUnavailable(f"device.cache_key: systemd:{name}: systemd passed no credentials "
                             f"($CREDENTIALS_DIRECTORY is not set): make the key with '{make}' and add "
                             f"LoadCredentialEncrypted={name} to cscd.service")
    path = Path(directory) / name
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise KeyUnavailable(f"device.cache_key: systemd:{name}: {path} cannot be read "
                             f"({exc.strerror}); make the key with '{make}'") from None
    if len(raw) != KEY_BYTES:
        raise KeyUnavailable(f"device.cache_key: systemd:{name}: the credential holds {len(raw)} bytes, "
                             f"not {KEY_BYTES}; make the key with '{make}'")
    return raw


def _from_secret_service(cache_dir: Path) -> bytes:
    import secretstorage
    from secretstorage.exceptions import SecretServiceNotAvailableException, SecretStorageException

    where = f"device.cache_key: {SECRET_SERVICE_KEY}"
    try:
        conn = secretstorage.dbus_init()
    except (SecretServiceNotAvailableException, OSError, ValueError) as exc:
        raise KeyUnavailable(f"{where}: no session bus to ask ({exc}); run cscd in the desktop "
                             "session, or use a systemd credential (systemd:NAME)") from None
    attributes = {"application": ITEM_APPLICATION, "cache": str(cache_dir)}
    try:
        try:
            items = list(secretstorage.search_items(conn, attributes))
            if items:
                item = items[0]
                if item.is_locked():
                    raise KeyUnavailable(f"{where}: the keyring holding the cache's key is locked: "
                                         "unlock the session (or log in again)", transient=True)
                raw = item.get_secret()
                if len(raw) != KEY_BYTES:
                    raise KeyUnavailable(f"{where}: the keyring's cache key has {len(raw)} bytes, not "
                                         f"{KEY_BYTES}: it was changed by something else than cscd")
                return bytes(raw)
            collection = secretstorage.get_default_collection(conn)
            if collection.is_locked():
                raise KeyUnavailable(f"{where}: the keyring is locked, so no key can be stored for the "
                                     "cache: unlock the session (or log in again)", transient=True)
            raw = os.urandom(KEY_BYTES)
            collection.create_item(ITEM_LABEL, attributes, raw, content_type="application/octet-stream")
            return raw
        except SecretStorageException as exc:
            raise KeyUnavailable(f"{where}: no Secret Service answers on the session bus "
                                 f"({type(exc).__name__}); start the keyring, or use a systemd "
                                 "credential (systemd:NAME)", transient=True) from None
    finally:
        conn.close()

"""Where an NTLM password comes from: a mount.cifs-style credentials file (``username=``,
``password=``, ``domain=``), or the desktop's Secret Service (GNOME Keyring, KWallet,
KeePassXC) over the session bus.

The file must be private (no group or other permission bits): a readable password file is
refused with a message that says how to fix it. The Secret Service item is the one
``secret-tool store --label=cscd application cscd user NAME [domain DOMAIN]`` makes; a locked
keyring is an error that says to unlock the session (the daemon never prompts). The password
is never logged or printed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cscd.errors import ConfigError
from cscd.types import Credentials

#: ``credentials: secret-service``: the password is in the Secret Service
SECRET_SERVICE = "secret-service"
#: the attributes a cscd item carries (``secret-tool``'s ``application cscd``)
SECRET_ATTRIBUTES = {"application": "cscd"}


def load_password(source: Path | str) -> Credentials:
    """The credentials from ``source``: a file, or ``SECRET_SERVICE``. Blocking (a file read or
    one D-Bus round trip); raises ConfigError saying what to do."""
    if source == SECRET_SERVICE:
        return load_from_secret_service()
    return load_credentials(Path(source))


def load_from_secret_service() -> Credentials:
    """The cscd item of the Secret Service on the session bus (``$DBUS_SESSION_BUS_ADDRESS``)."""
    import secretstorage
    from secretstorage.exceptions import SecretServiceNotAvailableException, SecretStorageException

    how = ("store one with: secret-tool store --label=cscd application cscd user NAME "
           "[domain DOMAIN]")
    try:
        conn = secretstorage.dbus_init()
    except (SecretServiceNotAvailableException, OSError, ValueError) as exc:
        raise ConfigError(f"credentials: {SECRET_SERVICE}: no session bus to ask ({exc}); run cscd in "
                          "the desktop session, or name a credentials file") from None
    try:
        try:
            items = list(secretstorage.search_items(conn, SECRET_ATTRIBUTES))
        except SecretStorageException as exc:
            raise ConfigError(f"credentials: {SECRET_SERVICE}: no Secret Service answers on the session "
                              f"bus ({exc}); start the keyring, or name a credentials file") from None
        if not items:
            raise ConfigError(f"credentials: {SECRET_SERVICE}: no cscd password is stored; {how}")
        item = items[0]
        if item.is_locked():
            raise ConfigError(f"credentials: {SECRET_SERVICE}: the keyring holding cscd's password is "
                              "locked: unlock the session (or log in again)")
        attributes = item.get_attributes()
        user = attributes.get("user", "")
        if not user:
            raise ConfigError(f"credentials: {SECRET_SERVICE}: the cscd item names no user; {how}")
        try:
            password = item.get_secret().decode("utf-8")
        except SecretStorageException as exc:
            raise ConfigError(f"credentials: {SECRET_SERVICE}: the password cannot be read ({type(exc).__name__}): "
                              "unlock the session") from None
        domain = attributes.get("domain", "")
        if "\\" in user and not domain:
            domain, user = user.split("\\", 1)
        return Credentials(user, password, domain)
    finally:
        conn.close()


def load_credentials(path: Path) -> Credentials:
    """Parse ``path``; raise ConfigError naming the file (and line) for any problem."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: credentials file not found") from None
    except PermissionError:
        raise ConfigError(f"{path}: credentials file cannot be read (permission denied)") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path}: credentials must be a regular file")
    if st.st_mode & 0o077:
        raise ConfigError(
            f"{path}: credentials file is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run: chmod 600 {path}"
        )
    values: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read credentials: {exc}") from None
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip().lower()
        if not sep or key not in ("username", "user", "password", "pass", "domain", "workgroup"):
            raise ConfigError(f"{path}:{lineno}: expected username=, password= or domain=, got {key!r}")
        values[{"user": "username", "pass": "password", "workgroup": "domain"}.get(key, key)] = value.strip()
    if not values.get("username"):
        raise ConfigError(f"{path}: no username= line")
    if "password" not in values:
        raise ConfigError(f"{path}: no password= line")
    user = values["username"]
    domain = values.get("domain", "")
    if "\\" in user and not domain:
        domain, user = user.split("\\", 1)
    return Credentials(user, values["password"], domain)

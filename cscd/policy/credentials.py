"""Reading a mount.cifs-style credentials file (``username=``, ``password=``, ``domain=``).

The file must be private (no group or other permission bits): a readable password file is
refused with a message that says how to fix it. The password is never logged or printed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cscd.errors import ConfigError
from cscd.types import Credentials


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

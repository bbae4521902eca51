"""Names of conflict copies: ``name (conflict HOST YYYY-MM-DD HHMMSS).ext``. Pure."""

from __future__ import annotations

import socket
import time


def conflict_name(name: bytes, *, host: str | None = None, when: float | None = None) -> bytes:
    """The name under which the local version of a conflicting file is kept."""
    host = (host or socket.gethostname().split(".")[0]).replace("/", "_")
    stamp = time.strftime("%Y-%m-%d %H%M%S", time.localtime(when))
    stem, dot, ext = name.rpartition(b".")
    if not dot or not stem:
        stem, ext = name, b""
    tag = f" (conflict {host} {stamp})".encode()
    return stem + tag + (b"." + ext if ext else b"")

r"""Parsing ``\\server\share\path`` targets, refusing hostile or unusable names.

Leaf-like, pure. A server name must be a DNS name or an IP literal; share and path
components must be names the server can store (``cscd.names.check_strict``).
"""

from __future__ import annotations

from cscd.errors import BadName
from cscd.names import check_server_name, check_strict
from cscd.types import UncTarget

__all__ = ["check_server_name", "parse_unc"]

def parse_unc(text: str) -> UncTarget:
    r"""``\\server\share\a\b`` (or ``//server/share/a/b``) → ``UncTarget``; BadName otherwise."""
    if not isinstance(text, str):
        raise BadName("a UNC path must be a string like \\\\server\\share\\folder")
    t = text.replace("/", "\\")
    if not t.startswith("\\\\"):
        raise BadName(f"{text!r} is not a UNC path (expected \\\\server\\share\\folder)")
    parts = [p for p in t[2:].split("\\")]
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise BadName(f"{text!r} names no share (expected \\\\server\\share\\folder)")
    server = check_server_name(parts[0])
    if any(p == "" for p in parts[1:-1]):
        raise BadName(f"{text!r} has an empty path component")
    rest = [p for p in parts[1:] if p != ""]
    for p in rest:
        check_strict(p.encode("utf-8"))
    return UncTarget(server, rest[0], tuple(rest[1:]))

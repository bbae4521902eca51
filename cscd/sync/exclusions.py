"""Which file names are kept out of sync (policy ``offline_files.exclude_patterns``).

Owns the matching rule, pure and small: a pattern is a shell-style glob (``*``, ``?``,
``[...]``) matched against one file *name* (never a path), case-insensitively as Windows and
Samba compare names. Only files are excluded; a directory is always synced, whatever its
name (the defaults — ``*.tmp``, ``~$*``, ``.~lock.*#`` — name editors' temporary and lock
files, and excluding a directory would strand everything below it).

What "excluded" means is decided by the callers, the way OneDrive and Work Folders treat
such files (Windows Offline Files instead refuses to cache them at all): ``sync/source.py``
hides server entries with such names, and ``sync/push.py`` never uploads a local file with
such a name — it lives only in this machine's cache — and deletes a synced file on the server
once it is renamed to such a name (it left the synced view). No I/O here.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

from cscd.types import RemoteEntry


class ExclusionMatcher:
    """``is_excluded(name, is_dir)`` for a fixed list of patterns (compiled once)."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.patterns = tuple(patterns)
        joined = "|".join(f"(?:{fnmatch.translate(p.casefold())})" for p in self.patterns)
        self._re = re.compile(joined, re.DOTALL) if joined else None

    def is_excluded(self, name: bytes, is_dir: bool = False) -> bool:
        """True if a file called ``name`` stays out of sync (directories never do)."""
        if is_dir or self._re is None:
            return False
        return self._re.match(name.decode("utf-8", "surrogateescape").casefold()) is not None

    def __bool__(self) -> bool:
        return self._re is not None

    def __repr__(self) -> str:
        return f"ExclusionMatcher({list(self.patterns)!r})"


def visible(entries: list[RemoteEntry], matcher: ExclusionMatcher) -> list[RemoteEntry]:
    """``entries`` without the names the exclusion patterns keep out of sync."""
    if not matcher:
        return entries
    return [e for e in entries if not matcher.is_excluded(e.name, e.is_dir)]

"""Which paths of a home directory belong to the roaming profile, and in which direction.

Owns the selection rules: the include list (folders and files below home, plus top-level
dotfiles), the exclusion patterns, the absolute paths that never roam (mount point, cache,
redirected folders, the profile's own state file), the FSLogix ``redirections.xml`` rules and
names the server cannot store. Pure: no I/O, no logging; ``tree.py`` walks, this decides.

Paths are ``bytes`` relative to the home directory (and equally to the server's profile
folder), ``/``-separated, as everywhere below ``cscd.upstream``.

FSLogix ``Copy`` values map to directions: 0 never moves, 1 is pulled at logon only, 2 is
pushed at logoff only, 3 moves both ways. An ``Include`` below an excluded folder roams
normally, so a walk still descends into such a folder (``should_descend``).
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from cscd.errors import BadName
from cscd.names import UPLOAD_TEMP_PREFIX, check_name
from cscd.policy.fslogix import Exclusion
from cscd.profile.settings import ProfileSettings

#: Prefix of the temporaries a download writes next to its target; never roams.
LOCAL_TEMP_PREFIX = b".cscd-profile-"


class Direction(enum.Enum):
    PULL = "pull"  # server → home, at logon
    PUSH = "push"  # home → server, at logoff and in background uploads


BOTH = frozenset({Direction.PULL, Direction.PUSH})
NEITHER: frozenset[Direction] = frozenset()


@dataclass(frozen=True, slots=True)
class Pattern:
    """One exclusion pattern (see ``settings.DEFAULT_EXCLUDE_PATTERNS`` for the syntax)."""

    text: str

    def matches(self, path: str, is_dir: bool) -> bool:
        pattern = self.text
        if pattern.endswith("/"):
            if not is_dir:
                return False
            pattern = pattern.rstrip("/")
        if "/" in pattern:
            return fnmatchcase(path, pattern.lstrip("/"))
        return fnmatchcase(path.rsplit("/", 1)[-1], pattern)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Where a path may move, and why it may not (None when it moves both ways)."""

    directions: frozenset[Direction]
    reason: str | None = None
    #: True when only a ``redirections.xml`` Exclude decided (an Include may lie below)
    is_fslogix: bool = False

    @property
    def never_moves(self) -> bool:
        return not self.directions


class ProfileScope:
    """The roaming profile's selection for one home directory and one ``ProfileSettings``."""

    def __init__(self, home: Path, settings: ProfileSettings) -> None:
        self.home = Path(home)
        self.settings = settings
        self.roots: tuple[bytes, ...] = tuple(
            b"/".join(c for c in os.fsencode(r).split(b"/") if c) for r in settings.include)
        self._patterns = tuple(Pattern(p) for p in settings.exclude_patterns)
        prefixes = []
        for p in (*settings.exclude_paths, settings.state_file(self.home)):
            rel = _relative_to(Path(p), self.home)
            if rel is not None:
                prefixes.append(rel)
        self._excluded_prefixes = tuple(prefixes)
        self._exclusions = settings.exclusions
        self._included_below = frozenset(
            tuple(part.casefold() for part in inc.parts[:depth])
            for inc in settings.exclusions.inclusions for depth in range(1, len(inc.parts)))

    # -- membership ---------------------------------------------------------------------------

    def is_in_scope(self, path: bytes, is_dir: bool | None = None) -> bool:
        """True if ``path`` is an include root, lies below one, or is a top-level dotfile."""
        for root in self.roots:
            if path == root or path.startswith(root + b"/"):
                return True
        return (self.settings.include_dotfiles and b"/" not in path and path.startswith(b".")
                and is_dir is not True)

    def is_dotfile_candidate(self, path: bytes) -> bool:
        """A top-level name the dotfile rule would take (if it is a plain file)."""
        return self.settings.include_dotfiles and b"/" not in path and path.startswith(b".")

    # -- verdicts ----------------------------------------------------------------------------

    def verdict(self, path: bytes, is_dir: bool) -> Verdict:
        """Where ``path`` may move: never, pull only, push only or both (with the reason)."""
        parts = path.split(b"/")
        try:
            names = [check_name(p) for p in parts]
        except BadName as exc:
            return Verdict(NEITHER, f"the server cannot store this name: {exc}")
        if any(p.startswith((LOCAL_TEMP_PREFIX, UPLOAD_TEMP_PREFIX.encode())) for p in parts):
            return Verdict(NEITHER, "a cscd temporary")
        for prefix in self._excluded_prefixes:
            if path == prefix or path.startswith(prefix + b"/"):
                return Verdict(NEITHER, "kept on this machine by cscd")
        for depth in range(1, len(names) + 1):
            sub = "/".join(names[:depth])
            sub_is_dir = is_dir if depth == len(names) else True
            for pattern in self._patterns:
                if pattern.matches(sub, sub_is_dir):
                    return Verdict(NEITHER, f"excluded by the pattern {pattern.text!r}")
        rule = self._exclusions.rule_for(names)
        if isinstance(rule, Exclusion):
            directions = set()
            if rule.copy.copies_in:
                directions.add(Direction.PULL)
            if rule.copy.copies_out:
                directions.add(Direction.PUSH)
            where = self._exclusions.source or "redirections.xml"
            return Verdict(frozenset(directions),
                           f"excluded by {where} ({rule.path}, Copy {int(rule.copy)})", True)
        return Verdict(BOTH)

    def should_descend(self, path: bytes) -> bool:
        """Whether a walk lists the folder ``path``: it roams, or an Include lies below it."""
        v = self.verdict(path, True)
        if not v.never_moves:
            return True
        if not v.is_fslogix:
            return False
        key = tuple(p.decode("utf-8").casefold() for p in path.split(b"/"))
        return key in self._included_below

    def allows(self, path: bytes, is_dir: bool, direction: Direction) -> bool:
        return direction in self.verdict(path, is_dir).directions


def _relative_to(path: Path, home: Path) -> bytes | None:
    """``path`` relative to ``home`` as profile bytes, or None if it lies outside."""
    try:
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(home))
    except ValueError:
        return None
    text = rel.as_posix()
    return None if text in ("", ".") else os.fsencode(text)

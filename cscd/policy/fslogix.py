r"""FSLogix ``redirections.xml`` → ``ProfileExclusions``: what the roaming profile leaves out.

Owns the parser (``xml.parsers.expat``, for line numbers; DTDs and entities refused) and the
exclusion model the roaming-profile code asks: is this profile path excluded, and which
excluded paths are copied from the stored profile into the local-only folder at sign-in
(``Copy`` 1 and 3) or from there back into the profile at sign-out (``Copy`` 2 and 3).
Paths are relative to the profile root, compared case-insensitively as Windows does, written
with ``\`` (``/`` is accepted too). No I/O beyond reading the file given; no logging.

Format, as admins already have it::

    <FrxProfileFolderRedirection ExcludeCommonFolders="BITMASK">
      <Excludes> <Exclude Copy="0-3">AppData\Local\Vendor\Cache</Exclude> … </Excludes>
      <Includes> <Include>AppData\Local\Vendor\Cache\Keep</Include> … </Includes>
    </FrxProfileFolderRedirection>

``Exclude``/``Include`` may also sit directly under the root. A missing ``Copy`` is 0. An
``Include`` re-adds a folder below an excluded one; when both name the same folder, the
exclusion wins. ``Copy`` on an ``Include`` is accepted (0-3) and has no effect, as in FSLogix.
Not supported: anything else in the file is an error rather than ignored.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat

from cscd.errors import BadName, ConfigError
from cscd.names import check_strict
from cscd.policy.located import MAX_POLICY_FILE_BYTES

ROOT = "FrxProfileFolderRedirection"


class CommonFolder(enum.IntFlag):
    """The ``ExcludeCommonFolders`` bits."""

    CONTACTS = 1
    DESKTOP = 2
    DOCUMENTS = 4
    DOWNLOADS = 8
    LINKS = 16
    MUSIC = 32
    PICTURES_AND_VIDEOS = 64
    LOW_INTEGRITY = 128  # folders written by Low Integrity Level processes


COMMON_FOLDER_PATHS: dict[CommonFolder, tuple[str, ...]] = {
    CommonFolder.CONTACTS: ("Contacts",),
    CommonFolder.DESKTOP: ("Desktop",),
    CommonFolder.DOCUMENTS: ("Documents",),
    CommonFolder.DOWNLOADS: ("Downloads",),
    CommonFolder.LINKS: ("Links",),
    CommonFolder.MUSIC: ("Music",),
    CommonFolder.PICTURES_AND_VIDEOS: ("Pictures", "Videos"),
    CommonFolder.LOW_INTEGRITY: ("AppData\\LocalLow",),
}


class CopyMode(enum.IntEnum):
    """``Copy`` of an ``Exclude``: which way content crosses between profile and local folder."""

    NONE = 0  # an empty local folder; its content is dropped at sign-out
    BASE_TO_TEMP = 1  # filled from the profile at sign-in; dropped at sign-out
    TEMP_TO_BASE = 2  # empty at sign-in; copied into the profile at sign-out
    BOTH = 3  # filled at sign-in and copied back at sign-out

    @property
    def copies_in(self) -> bool:
        return bool(self.value & 1)

    @property
    def copies_out(self) -> bool:
        return bool(self.value & 2)


def split_profile_path(text: str) -> tuple[str, ...]:
    r"""``AppData\Local\X`` → ("AppData", "Local", "X"); BadName for absolute or unsafe paths."""
    t = text.strip()
    if not t:
        raise BadName("the path is empty")
    if "%" in t or (len(t) > 1 and t[1] == ":") or t.startswith(("\\", "/")):
        raise BadName(f"{t!r} must be relative to the profile folder "
                      f"(leave out C:\\Users\\%username%)")
    parts = tuple(p for p in t.replace("/", "\\").split("\\") if p)
    if "." in parts or ".." in parts:
        raise BadName(f"{t!r}: '.' and '..' are not allowed in a profile path")
    for p in parts:
        check_strict(p.encode("utf-8"))
    return parts


def _key(parts: Iterable[str]) -> tuple[str, ...]:
    return tuple(p.casefold() for p in parts)


@dataclass(frozen=True, slots=True)
class Exclusion:
    """An excluded profile path. ``line`` is None for one that comes from a common-folder bit."""

    parts: tuple[str, ...]
    copy: CopyMode = CopyMode.NONE
    line: int | None = None
    common: CommonFolder | None = None

    @property
    def path(self) -> str:
        return "\\".join(self.parts)


@dataclass(frozen=True, slots=True)
class Inclusion:
    parts: tuple[str, ...]
    line: int | None = None

    @property
    def path(self) -> str:
        return "\\".join(self.parts)


@dataclass(frozen=True)
class ProfileExclusions:
    """The parsed file. ``inclusions`` no longer hold paths that are also excluded."""

    exclude_common_folders: CommonFolder = CommonFolder(0)
    exclusions: tuple[Exclusion, ...] = ()
    inclusions: tuple[Inclusion, ...] = ()
    source: str = ""
    _rules: dict[tuple[str, ...], Exclusion | Inclusion] = field(default_factory=dict, repr=False,
                                                                 compare=False)

    def __post_init__(self) -> None:
        self._rules.update({_key(i.parts): i for i in self.inclusions})
        self._rules.update({_key(e.parts): e for e in self.exclusions})  # exclusion wins

    def rule_for(self, path: str | Iterable[str]) -> Exclusion | Inclusion | None:
        """The deepest rule at or above ``path``: what decides whether it roams."""
        parts = split_profile_path(path) if isinstance(path, str) else tuple(path)
        key = _key(parts)
        for depth in range(len(key), 0, -1):
            rule = self._rules.get(key[:depth])
            if rule is not None:
                return rule
        return None

    def is_excluded(self, path: str | Iterable[str]) -> bool:
        """True if ``path`` stays out of the roaming profile (kept only on this machine)."""
        return isinstance(self.rule_for(path), Exclusion)

    def copied_in(self) -> tuple[Exclusion, ...]:
        """Exclusions filled from the profile at sign-in (Copy 1 and 3)."""
        return tuple(e for e in self.exclusions if e.copy.copies_in)

    def copied_out(self) -> tuple[Exclusion, ...]:
        """Exclusions copied back into the profile at sign-out (Copy 2 and 3)."""
        return tuple(e for e in self.exclusions if e.copy.copies_out)


@dataclass
class _Element:
    name: str
    attrs: dict[str, str]
    line: int
    text: list[str] = field(default_factory=list)
    children: list[_Element] = field(default_factory=list)


def _parse_tree(data: bytes, source: str) -> _Element:
    parser = expat.ParserCreate()
    stack: list[_Element] = []
    roots: list[_Element] = []

    def refuse(*_: object) -> None:
        raise ConfigError(f"{source}:{parser.CurrentLineNumber}: DTDs and entities are not "
                          f"allowed in redirections.xml")

    def start(name: str, attrs: dict[str, str]) -> None:
        el = _Element(name, attrs, parser.CurrentLineNumber)
        (stack[-1].children if stack else roots).append(el)
        stack.append(el)

    def end(name: str) -> None:
        stack.pop()

    def text(data: str) -> None:
        if stack:
            stack[-1].text.append(data)

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise ConfigError(f"{source}:{exc.lineno}: not well-formed XML: "
                          f"{expat.ErrorString(exc.code)}") from None
    return roots[0]


def parse_redirections_xml(data: bytes, source: str = "redirections.xml") -> ProfileExclusions:
    """Parse the file's bytes; ConfigError ``SOURCE:LINE: ELEMENT: message`` for any mistake."""
    root = _parse_tree(data, source)

    def err(el: _Element, what: str, message: str) -> ConfigError:
        return ConfigError(f"{source}:{el.line}: {what}: {message}")

    if root.name != ROOT:
        raise err(root, root.name, f"the root element must be {ROOT}")
    _only_attrs(root, {"ExcludeCommonFolders"}, err)
    mask_text = root.attrs.get("ExcludeCommonFolders", "0").strip()
    if not mask_text.isdigit() or not 0 <= int(mask_text) <= 255:
        raise err(root, f"{ROOT} ExcludeCommonFolders",
                  f"expected a bitmask from 0 to 255 (sum of 1, 2, 4, … 128), got {mask_text!r}")
    mask = CommonFolder(int(mask_text))

    excludes: dict[tuple[str, ...], Exclusion] = {}
    includes: dict[tuple[str, ...], Inclusion] = {}
    for bit, paths in COMMON_FOLDER_PATHS.items():
        if bit in mask:
            for p in paths:
                parts = split_profile_path(p)
                excludes[_key(parts)] = Exclusion(parts, CopyMode.NONE, None, bit)
    explicit: dict[tuple[str, ...], int] = {}

    def leaf(el: _Element) -> None:
        if el.children:
            raise err(el.children[0], el.children[0].name,
                      f"{el.name} holds a path as text, not elements")
        _only_attrs(el, {"Copy"}, err)
        copy_text = el.attrs.get("Copy", "0").strip()
        if copy_text not in ("0", "1", "2", "3"):
            raise err(el, f"{el.name} Copy", f"expected 0, 1, 2 or 3, got {copy_text!r}")
        try:
            parts = split_profile_path("".join(el.text))
        except BadName as exc:
            raise err(el, el.name, str(exc)) from None
        key = _key(parts)
        if el.name == "Exclude":
            if key in explicit:
                raise err(el, "Exclude", f"{chr(92).join(parts)!r} is already excluded on line "
                                         f"{explicit[key]}")
            explicit[key] = el.line
            excludes[key] = Exclusion(parts, CopyMode(int(copy_text)), el.line)
        else:
            includes.setdefault(key, Inclusion(parts, el.line))

    _no_text(root, err)
    for el in root.children:
        if el.name in ("Exclude", "Include"):
            leaf(el)
        elif el.name in ("Excludes", "Includes"):
            _only_attrs(el, set(), err)
            _no_text(el, err)
            for child in el.children:
                if child.name != el.name[:-1]:
                    raise err(child, child.name, f"{el.name} may hold only {el.name[:-1]} elements")
                leaf(child)
        else:
            raise err(el, el.name,
                      "unknown element (allowed: Exclude, Include, Excludes, Includes)")

    inclusions = tuple(i for k, i in includes.items() if k not in excludes)
    return ProfileExclusions(mask, tuple(excludes.values()), inclusions, source)


_Err = Callable[[_Element, str, str], ConfigError]


def _only_attrs(el: _Element, allowed: set[str], err: _Err) -> None:
    for name in el.attrs:
        if name not in allowed:
            hint = f"allowed: {', '.join(sorted(allowed))}" if allowed else "none are allowed"
            raise err(el, f"{el.name} {name}", f"unknown attribute ({hint})")


def _no_text(el: _Element, err: _Err) -> None:
    if "".join(el.text).strip():
        raise err(el, el.name, "unexpected text; paths go inside Exclude or Include elements")


def load_redirections_xml(path: Path) -> ProfileExclusions:
    """Read and parse a ``redirections.xml`` file; ConfigError names file and line."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_POLICY_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read redirections.xml: {exc.strerror}") from None
    if len(data) > MAX_POLICY_FILE_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_POLICY_FILE_BYTES} bytes; not a "
                          f"redirections.xml")
    return parse_redirections_xml(data, str(path))

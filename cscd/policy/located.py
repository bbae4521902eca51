"""YAML read as a tree of located values: every key, list item and scalar keeps its file and line.

Owns turning one YAML file into ``Located`` nodes and the one error shape of policy files,
``FILE:LINE: KEY: message`` (a ``ConfigError``), the same shape ``config.py`` uses. Knows no
policy keys. No I/O except reading the file it is given; no network, no logging.

Typed readers (``as_bool``, ``as_int``, …) check a value and raise the error themselves, so a
schema reads as a list of calls. Mappings refuse duplicate keys (YAML itself would silently
keep the last one) and suggest the closest allowed name for an unknown key.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cscd.errors import ConfigError

#: Policy files are small; anything bigger is a mistake (or hostile) and is refused unread.
MAX_POLICY_FILE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a value came from: a file and a 1-based line."""

    file: Path
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


class Located:
    """One YAML node with its origin and its dotted key (``folders.Documents.target``)."""

    __slots__ = ("node", "origin", "key")

    def __init__(self, node: yaml.Node, origin: Origin, key: str) -> None:
        self.node = node
        self.origin = origin
        self.key = key

    # -- errors ---------------------------------------------------------------------------------

    def error(self, message: str) -> ConfigError:
        """``FILE:LINE: KEY: message``, or ``FILE:LINE: message`` at the top of a file."""
        where = f"{self.origin}: {self.key}: " if self.key else f"{self.origin}: "
        return ConfigError(where + message)

    # -- shapes ---------------------------------------------------------------------------------

    @property
    def is_mapping(self) -> bool:
        return isinstance(self.node, yaml.MappingNode)

    @property
    def is_list(self) -> bool:
        return isinstance(self.node, yaml.SequenceNode)

    def items(self, allowed: Iterable[str] | None = None, what: str = "a mapping of keys to values"
              ) -> Iterator[tuple[str, Located]]:
        """The key/value pairs of a mapping; each value located at its key's line.

        Refuses a non-mapping, a non-text key, a key given twice and (if ``allowed`` is given)
        a key not in ``allowed``.
        """
        if not self.is_mapping:
            raise self.error(f"expected {what}, got {_describe(self.node)}")
        allowed_set = None if allowed is None else set(allowed)
        seen: set[str] = set()
        for k, v in self.node.value:
            line = k.start_mark.line + 1
            if not isinstance(k, yaml.ScalarNode) or k.tag == "tag:yaml.org,2002:null":
                raise Located(k, Origin(self.origin.file, line), self.key).error(
                    "a key must be a plain name")
            name = str(k.value)
            child = Located(v, Origin(self.origin.file, line), _join(self.key, name))
            if name in seen:
                raise child.error("appears twice in the same mapping")
            seen.add(name)
            if allowed_set is not None and name not in allowed_set:
                raise child.error(unknown_key_message(name, allowed_set))
            yield name, child

    def entries(self, what: str = "a list") -> list[Located]:
        """The items of a list, each located at its own line (``key[i]``)."""
        if not self.is_list:
            raise self.error(f"expected {what}, got {_describe(self.node)}")
        return [
            Located(n, Origin(self.origin.file, n.start_mark.line + 1), f"{self.key}[{i}]")
            for i, n in enumerate(self.node.value)
        ]

    def scalar(self) -> Any:
        """The Python value of a scalar (str, int, float, bool or None)."""
        if not isinstance(self.node, yaml.ScalarNode):
            raise self.error(f"expected a single value, got {_describe(self.node)}")
        return yaml.SafeLoader(b"").construct_object(self.node, deep=True)

    # -- typed readers --------------------------------------------------------------------------

    def as_bool(self) -> bool:
        v = self.scalar()
        if not isinstance(v, bool):
            raise self.error(f"expected true or false, got {v!r}")
        return v

    def as_int(self, lo: int, hi: int, unit: str = "") -> int:
        v = self.scalar()
        if not isinstance(v, int) or isinstance(v, bool):
            raise self.error(f"expected a whole number{_unit(unit)}, got {v!r}")
        if not lo <= v <= hi:
            raise self.error(f"{v}{_unit(unit)} is out of range: allowed {lo} to {hi}")
        return v

    def as_str(self) -> str:
        v = self.scalar()
        if not isinstance(v, str) or not v.strip():
            raise self.error(f"expected a non-empty text, got {v!r}")
        return v

    def as_choice(self, choices: Iterable[str]) -> str:
        options = list(choices)
        v = self.scalar()
        if v not in options:
            raise self.error(f"expected one of {', '.join(options)}, got {v!r}")
        return str(v)

    def as_str_list(self, *, allow_empty: bool = True) -> list[tuple[str, Located]]:
        """A list of non-empty texts, each with its located node (a single text is refused)."""
        items = self.entries("a list of texts, e.g. [a, b]")
        if not items and not allow_empty:
            raise self.error("the list is empty; name at least one entry or leave the key out")
        return [(item.as_str(), item) for item in items]


def unknown_key_message(name: str, allowed: Iterable[str]) -> str:
    allowed = sorted(allowed)
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown key; {hint}(allowed: {', '.join(allowed)})"


def load_yaml(path: Path) -> Located | None:
    """Compose one YAML file into a located root, or None for an empty file.

    Raises ConfigError (never a YAML traceback) for a file that cannot be read, is too big, is
    not UTF-8 or not valid YAML, naming the line where the parser stopped.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_POLICY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: policy file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the policy file: {exc.strerror}") from None
    if len(data) > MAX_POLICY_FILE_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_POLICY_FILE_BYTES} bytes; not a policy file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    if root is None:
        return None
    return Located(root, Origin(path, root.start_mark.line + 1), "")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _unit(unit: str) -> str:
    return f" {unit}" if unit else ""


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    value = yaml.SafeLoader(b"").construct_object(node, deep=True)
    return "nothing" if value is None else repr(value)

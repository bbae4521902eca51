"""The module map of STYLE.md §1, enforced: imports inside ``cscd`` only go down; and no test
module imports another (STYLE.md §5).

Owns ``ALLOWED``, the table of which top-level part of ``cscd`` may import which, and an
``ast`` walk over every ``.py`` file under ``cscd/`` (imports inside functions and under
``if TYPE_CHECKING:`` count too: a type-only import upward is still an upward edge — declare
a ``typing.Protocol`` instead). Only files that exist are checked; a file whose part is not in
the table fails with a request to add it. The shape is s3ql's
``developer-notes/check_imports.py``. No imports of cscd itself: the files are parsed, not run.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "cscd"

ROOT = "cscd"
"""The package's own ``__init__.py`` (``__version__``): anyone may import it."""

LEAVES = frozenset({"types", "errors", "events", "metrics", "names", "reconcile", "symlinks", "xattrs",
                    "sealed_files", "durable"})

# Top-level part of cscd (a module ``cscd/x.py`` or a package ``cscd/x/``) -> the parts it
# may import besides itself and ROOT. Keep in step with STYLE.md §1.
ALLOWED: Mapping[str, frozenset[str]] = {
    # leaves: nothing above them; among themselves an order, so no cycles
    "types": frozenset(),
    # syncing a directory after a name changed in it: the one copy
    "durable": frozenset(),
    "errors": frozenset({"types"}),
    "names": frozenset({"types", "errors"}),
    # the Minshall-French link format, pure: the cache writes and reads it
    "symlinks": frozenset({"types", "errors"}),
    "xattrs": frozenset({"types", "errors"}),
    # the format of a content file cscd encrypted: the cache writes it, upload workers read it
    "sealed_files": frozenset({"types", "errors"}),
    "events": frozenset({"types", "errors"}),
    "metrics": frozenset({"types", "errors", "events"}),
    # journald's explanations of the events
    "catalog": frozenset({"types", "errors", "events"}),
    # the three-way decision, pure: cache (listings) and sync (uploads) both apply it
    "reconcile": frozenset({"types"}),
    # the layers
    "upstream": LEAVES,
    "policy": LEAVES,
    "control": LEAVES,
    "cache": LEAVES,
    "sync": frozenset({"upstream", "policy"}) | LEAVES,
    "network": LEAVES,
    # is the screen locked when left alone? (device.require_screen_lock), over D-Bus
    "screenlock": LEAVES,
    "link": frozenset({"upstream", "policy", "network"}) | LEAVES,
    "redirect": frozenset({"upstream", "policy"}) | LEAVES,
    "profile": frozenset({"sync", "upstream", "policy"}) | LEAVES,
    "fs": frozenset({"cache"}) | LEAVES,
    # the embedded Samba for the demo, tests and benchmarks: only cli and daemon use it
    "samba": LEAVES,
    "daemon": frozenset(),  # filled in below: everything but cli
    "operations": frozenset(),  # daemon's other half (control handlers): filled in below
    # drawing a followed job's progress, pure text: the cli's
    "progress": frozenset(),
    # the man page and completions, from the parser the cli hands in
    "manual": frozenset(),
    # cscd doctor: what the daemon would read and connect to, checked without it
    "doctor": frozenset({"policy", "upstream", "control", "operations", "cache"}) | LEAVES,
    "cli": frozenset({"daemon", "control", "policy", "samba", "progress", "doctor", "manual"}) | LEAVES,
    ROOT: frozenset(),
    "__main__": frozenset({"cli"}),
}
ALLOWED = {**ALLOWED, "daemon": frozenset(ALLOWED) - {"daemon", "cli", "__main__", "progress", "doctor", "manual"}}
ALLOWED = {**ALLOWED, "operations": ALLOWED["daemon"] - {"operations"}}


@dataclass(frozen=True)
class Edge:
    """One import statement inside cscd, reduced to the two top-level parts it joins."""

    path: Path
    line: int
    source: str
    target: str
    imported: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.imported}"


def part_of(path: Path, package_dir: Path) -> str:
    """The top-level part a file belongs to: ``cscd/cache/index.py`` -> ``cache``."""
    rel = path.relative_to(package_dir)
    if len(rel.parts) == 1:
        return ROOT if rel.stem == "__init__" else rel.stem
    return rel.parts[0]


def module_name(path: Path, package_dir: Path) -> str:
    """Dotted name of a file: ``cscd/cache/__init__.py`` -> ``cscd.cache``."""
    rel = path.relative_to(package_dir).with_suffix("")
    parts = [package_dir.name, *rel.parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def existing_parts(package_dir: Path) -> set[str]:
    """Top-level parts present on disk."""
    parts = {ROOT}
    for child in package_dir.iterdir():
        if child.suffix == ".py":
            parts.add(ROOT if child.stem == "__init__" else child.stem)
        elif child.is_dir() and any(child.rglob("*.py")):
            parts.add(child.name)
    return parts


def _target_part(dotted: str, package: str) -> str | None:
    """Top-level part of cscd named by a dotted import, or None if outside cscd."""
    names = dotted.split(".")
    if names[0] != package:
        return None
    if len(names) == 1:
        return ROOT
    return names[1]


def edges_of(path: Path, package_dir: Path) -> Iterator[Edge]:
    """Every import of something inside the package made anywhere in ``path``."""
    package = package_dir.name
    known = existing_parts(package_dir)
    source = part_of(path, package_dir)
    this_module = module_name(path, package_dir)
    is_init = path.name == "__init__.py"
    shown = path.relative_to(package_dir.parent)
    tree = ast.parse(path.read_bytes(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _target_part(alias.name, package)
                if target is not None:
                    yield Edge(shown, node.lineno, source, target, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # Relative: resolve against this module's package.
                base = this_module.split(".")
                if not is_init:
                    base = base[:-1]
                if node.level > 1:
                    base = base[: len(base) - (node.level - 1)]
                dotted = ".".join(base + ([node.module] if node.module else []))
            else:
                dotted = node.module or ""
            if dotted == package:
                # "from cscd import x": x is a part, or a name from cscd/__init__.py.
                for alias in node.names:
                    target = alias.name if alias.name in known or alias.name in ALLOWED else ROOT
                    yield Edge(shown, node.lineno, source, target, f"{package}.{alias.name}")
                continue
            target = _target_part(dotted, package)
            if target is not None:
                names = ", ".join(alias.name for alias in node.names)
                yield Edge(shown, node.lineno, source, target, f"{dotted} ({names})")


def unknown_part_message(part: str, where: str) -> str:
    return (
        f"{where}: '{part}' is not in the module map. Add it to ALLOWED in tests/test_layers.py "
        f"(and to the table in STYLE.md §1) with the parts it may import, or move the code into "
        f"an existing part."
    )


def violations(path: Path, package_dir: Path) -> list[str]:
    """Messages for every import in ``path`` that the table forbids."""
    source = part_of(path, package_dir)
    if source not in ALLOWED:
        return [unknown_part_message(source, str(path.relative_to(package_dir.parent)))]
    problems = []
    for edge in edges_of(path, package_dir):
        if edge.target == edge.source or edge.target == ROOT:
            continue
        if edge.target not in ALLOWED:
            problems.append(unknown_part_message(edge.target, str(edge)))
        elif edge.target not in ALLOWED[source]:
            allowed = ALLOWED[source]
            rule = (
                f"may import only {', '.join(sorted(allowed))}"
                if allowed
                else "may import nothing in cscd"
            )
            problems.append(f"{edge}: '{source}' {rule} (STYLE.md §1)")
    return problems


def package_files(package_dir: Path) -> list[Path]:
    return sorted(p for p in package_dir.rglob("*.py") if "__pycache__" not in p.parts)


# ------------------------------------------------------------------ the real tree


@pytest.mark.parametrize(
    "path", package_files(PACKAGE_DIR), ids=lambda p: str(p.relative_to(PACKAGE_DIR.parent))
)
def test_imports_only_go_down(path: Path) -> None:
    problems = violations(path, PACKAGE_DIR)
    assert not problems, "\n".join(problems)


def test_every_part_is_in_the_module_map() -> None:
    unknown = sorted(existing_parts(PACKAGE_DIR) - set(ALLOWED))
    assert not unknown, "\n".join(unknown_part_message(p, f"cscd/{p}") for p in unknown)


def test_the_walk_finds_the_tree() -> None:
    """Guard against a checker that passes because it checked nothing."""
    assert {"types", "errors", "upstream"} <= existing_parts(PACKAGE_DIR)
    assert any(
        edge.target == "errors"
        for edge in edges_of(PACKAGE_DIR / "upstream" / "base.py", PACKAGE_DIR)
    )


# ------------------------------------------------------------------ the checker, on made-up trees


def make_tree(root: Path, files: Mapping[str, str]) -> Path:
    package_dir = root / "cscd"
    for rel, text in files.items():
        path = package_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package_dir


def all_violations(package_dir: Path) -> list[str]:
    return [msg for path in package_files(package_dir) for msg in violations(path, package_dir)]


def test_checker_accepts_downward_imports(tmp_path: Path) -> None:
    package_dir = make_tree(
        tmp_path,
        {
            "__init__.py": "",
            "types.py": "",
            "errors.py": "from cscd.types import X\n",
            "cache/__init__.py": "",
            "cache/index.py": "from . import nodes\nfrom .nodes import N\nfrom ..errors import E\n",
            "cache/nodes.py": "import cscd.types\nfrom cscd import errors, __version__\n",
            "fs.py": "from cscd.cache.index import Index\nimport os\n",
            "cli.py": "def f():\n    from cscd.samba import S\n    from cscd.daemon import run\n",
            "samba.py": "",
            "daemon.py": "from cscd.fs import Fs\nfrom cscd.samba import S\n",
        },
    )
    assert all_violations(package_dir) == []


@pytest.mark.parametrize(
    ("rel", "text", "expected"),
    [
        ("cache/store.py", "from cscd.sync.push import Pusher\n", "'cache' may import only"),
        ("cache/store.py", "from ..sync import push\n", "'cache' may import only"),
        ("sync/push.py", "from cscd.cache.cache import Cache\n", "'sync' may import only"),
        ("fs.py", "def f():\n    import cscd.upstream.smb\n", "'fs' may import only"),
        (
            "fs.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cscd.sync import x\n",
            "'fs' may import only",
        ),
        ("upstream/smb.py", "from cscd import policy\n", "'upstream' may import only"),
        ("types.py", "from cscd.errors import E\n", "'types' may import nothing in cscd"),
        ("link.py", "from cscd.daemon import run\n", "'link' may import only"),
        ("fs.py", "from cscd.samba import EmbeddedSamba\n", "'fs' may import only"),
        ("gadget.py", "", "'gadget' is not in the module map"),
        ("fs.py", "from cscd.gadget import G\n", "'gadget' is not in the module map"),
    ],
)
def test_checker_rejects(tmp_path: Path, rel: str, text: str, expected: str) -> None:
    package_dir = make_tree(tmp_path, {"__init__.py": "", rel: text})
    problems = all_violations(package_dir)
    assert problems, f"{rel} with {text!r} should be refused"
    assert expected in problems[0]
    if "module map" not in expected:
        assert f"{rel}:" in problems[0], "the message names the file and line"


CACHE_PARTS = re.compile(r"\b(?:cache|core|namespace|listings|residency|hydration|content|sync)\._[a-z]\w*")


def test_the_cache_parts_are_collaborators_not_mixins() -> None:
    """Issue 20, item 1: each part of ``cscd.cache`` is its own class over ``CacheCore``. No
    class there inherits from another cache class, and no module reaches into another part's
    private state (``core._x``, ``cache._x``)."""
    cache_dir = PACKAGE_DIR / "cache"
    local_classes: set[str] = set()
    trees = {p: ast.parse(p.read_text()) for p in sorted(cache_dir.glob("*.py"))}
    for tree in trees.values():
        local_classes |= {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    problems = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
                if bases & local_classes:
                    problems.append(f"{path.name}: {node.name} inherits from {sorted(bases & local_classes)}")
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if CACHE_PARTS.search(line):
                problems.append(f"{path.name}:{n}: private access: {line.strip()}")
    assert problems == []


# ------------------------------------------------------------------ the tests themselves

TESTS_DIR = Path(__file__).resolve().parent


def imports_of_test_modules(path: Path) -> list[str]:
    """``file:line imports X`` for each import of a test module (``tests.test_*``, a relative
    ``test_*``, ``from tests import test_x``) anywhere in ``path``."""

    def is_test_module(dotted: str) -> bool:
        names = dotted.split(".")
        return names[0].startswith("test_") or (names[0] == "tests" and len(names) > 1
                                                and names[1].startswith("test_"))

    found = []
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if is_test_module(a.name)]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module in ("", "tests"):  # from . import test_x / from tests import test_x
                found += [(node.lineno, f"{module}.{a.name}") for a in node.names if a.name.startswith("test_")]
            elif is_test_module(module):
                found.append((node.lineno, module))
    return [f"{path}:{line} imports {name}" for line, name in found]


@pytest.mark.parametrize(
    "path",
    sorted(p for d in (TESTS_DIR, TESTS_DIR.parent / "bench") for p in d.rglob("*.py")
           if "__pycache__" not in p.parts),
    ids=lambda p: str(p.relative_to(TESTS_DIR.parent)),
)
def test_no_test_module_imports_another(path: Path) -> None:
    """STYLE.md §5: shared test code lives in ``tests/helpers/`` and fixtures in
    ``tests/conftest.py``; no test module, helper or benchmark imports a ``tests/test_*`` module
    (s3ql's ``t3_fs_api.py`` importing ``t2_block_cache.py`` is the thing not to do)."""
    problems = imports_of_test_modules(path)
    assert not problems, "\n".join(problems) + "\nmove what is shared into tests/helpers/ or tests/conftest.py"


@pytest.mark.parametrize(
    "text",
    ["from tests.test_policy_daemon import PolicyEnv\n", "import tests.test_upstream\n",
     "from tests import test_delta\n", "from . import test_delta\n", "from .test_delta import rand\n",
     "def f():\n    from tests.test_offline import x\n"],
)
def test_the_test_import_check_finds(tmp_path: Path, text: str) -> None:
    path = tmp_path / "test_x.py"
    path.write_text(text)
    assert imports_of_test_modules(path), f"{text!r} should be refused"


def test_the_test_import_check_accepts_helpers(tmp_path: Path) -> None:
    path = tmp_path / "test_x.py"
    path.write_text("from tests.helpers.mount_env import MountEnv\nfrom tests.helpers import wait\n"
                    "import tests.helpers.daemon\nfrom . import helpers\n")
    assert imports_of_test_modules(path) == []

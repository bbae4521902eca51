"""Crash churn: a seeded churner in a mount, a reference of what was acknowledged, the checks.

Owns the support of ``tests/test_crash_churn.py``:

- ``Tree``: a folder's state as ``{relative path: content}``, ``DIR`` (None) for a directory.
- ``Churner``: a thread of plain syscalls on a mounted folder, each operation drawn from a
  seeded ``random.Random``: create/write/close files (some fsync'ed), overwrite, patch a few
  bytes in place, rename (files and directories, to a new name or over another file),
  delete, mkdir, rmdir, and the atomic save (write a temporary, fsync, close, rename it over
  the target). It keeps ``committed``: the tree after the last *acknowledged* operation (a
  write counts once ``close`` or ``fsync`` returned). An operation whose syscalls did not all
  return is ``in_flight``: ``outcomes`` lists every tree the folder may then hold.
- ``read_tree`` / ``diff_trees`` / ``conflict_copies``: what a folder holds and how it
  differs, in messages a person can act on.
- ``key_log_lines``: the WARNING/ERROR/traceback lines of a daemon log, deduplicated.

What an interrupted operation may leave (``outcomes``), with no writeback cache in the
mount (``cscd/fs.py``), so every ``write`` reaches the daemon as requests of whole pages up
to ``max_write``, each one LMDB transaction:

- put (``open(O_CREAT|O_TRUNC)``, writes, optional fsync, close): the old state of the path
  (absent or the old content), or a prefix of the new content whose length is a multiple of
  4096 (the empty file included: the truncation or create went through), or the whole new
  content. Never a mix of old and new bytes, never a prefix cut inside a page.
- patch (at most 4096 bytes written in place inside one page, one ``pwrite``): old or new.
- rename, unlink, mkdir, rmdir (one request each): before or after.

Names are lower-case ASCII (Samba compares case-insensitively), some with a space; the
temporary of an atomic save is either ``.NAME.part`` (synced like any file) or ``NAME.tmp``
(the default exclusion pattern ``*.tmp``: it stays on this machine, so the server side of a
comparison leaves it out). No fixtures, no daemon or server control here.
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import os
import random
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.churn import conflict_copies, wait_settled
from tests.helpers.wait import wait_for

__all__ = [
    "DIR", "Churner", "Op", "Tree", "conflict_copies", "diff_trees", "key_log_lines",
    "outcomes", "read_tree", "resolve", "server_view", "upload_temporaries",
]

DIR = None
"""The value of a directory in a ``Tree``."""

Tree = dict[str, "bytes | None"]

PAGE = 4096
WRITE_CHUNK = 128 * 1024
EXCLUDED_PATTERNS = ("*.tmp", "~$*", ".~lock.*#")
"""cscd's default ``offline_files.exclude_patterns`` (README): such files stay local."""
UPLOAD_TEMP_PREFIX = ".cscd-upload-"
"""cscd's upload temporaries on the server; a crash may leave one, deleted after an hour."""


# ---------------------------------------------------------------- trees


def is_excluded(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in EXCLUDED_PATTERNS)


def read_tree(root: Path, *, skip: Callable[[str], bool] = lambda name: False,
              anomalies: list[str] | None = None) -> Tree:
    """Everything below ``root``: directories as ``DIR``, files with their whole content.

    A file whose ``fstat`` size differs from the bytes a read returns is added to
    ``anomalies`` (when given).
    """
    out: Tree = {}

    def walk(d: str, rel: str) -> None:
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            if skip(e.name):
                continue
            p = f"{rel}/{e.name}" if rel else e.name
            if e.is_dir(follow_symlinks=False):
                out[p] = DIR
                walk(e.path, p)
            else:
                try:
                    with open(e.path, "rb") as f:
                        data = out[p] = f.read()
                        size = os.fstat(f.fileno()).st_size
                except OSError as exc:
                    if exc.filename is None:  # read(2) names no file: name it for the message
                        raise type(exc)(exc.errno, f"{exc.strerror} (reading {p})", e.path) from exc
                    raise
                if anomalies is not None and size != len(data):
                    anomalies.append(f"{p}: stat says {size} bytes, reading it gives {len(data)}")

    walk(str(root), "")
    return out


def server_view(tree: Tree) -> Tree:
    """What the server should hold of a local tree: excluded files stay local."""
    return {p: v for p, v in tree.items() if v is DIR or not is_excluded(p.rsplit("/", 1)[-1])}


def upload_temporaries(root: Path) -> list[str]:
    found = []
    for dirpath, _dirnames, filenames in os.walk(root):
        found += [os.path.relpath(os.path.join(dirpath, n), root)
                  for n in filenames if n.startswith(UPLOAD_TEMP_PREFIX)]
    return sorted(found)


def describe(value: bytes | None | str) -> str:
    if value is DIR:
        return "a directory"
    if isinstance(value, str):
        return value
    return f"{len(value)} bytes sha256 {hashlib.sha256(value).hexdigest()[:12]}"


def diff_trees(expected: Tree, found: Tree, *, history: dict[str, list[str]] | None = None,
               limit: int = 15) -> list[str]:
    """One line per difference (at most ``limit`` per kind): missing, unexpected, different.

    ``history`` (path → sha256 of every content it was acknowledged with, oldest first) lets a
    different file be named as "an older acknowledged version" or "a prefix of".
    """
    out: list[str] = []
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    differ = sorted(p for p in set(expected) & set(found) if expected[p] != found[p])
    for p in missing[:limit]:
        out.append(f"missing: {p} (expected {describe(expected[p])})")
    for p in extra[:limit]:
        out.append(f"unexpected: {p} ({describe(found[p])})")
    for p in differ[:limit]:
        want, got = expected[p], found[p]
        why = ""
        if isinstance(want, bytes) and isinstance(got, bytes):
            digest = hashlib.sha256(got).hexdigest()
            versions = (history or {}).get(p, [])
            if digest in versions[:-1]:
                why = f"; that is the acknowledged version {len(versions) - 1 - versions.index(digest)} back"
            elif want.startswith(got):
                why = "; a prefix of the expected content"
            else:
                first = next((i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b),
                             min(len(want), len(got)))
                why = f"; first differing byte at offset {first}"
        out.append(f"different: {p}: expected {describe(want)}, found {describe(got)}{why}")
    for kind, items in (("missing", missing), ("unexpected", extra), ("different", differ)):
        if len(items) > limit:
            out.append(f"... and {len(items) - limit} more {kind}")
    return out


# ---------------------------------------------------------------- operations


@dataclass
class Op:
    """One operation of the churner, described well enough to say what it may leave."""

    kind: str  # put | patch | rename | unlink | mkdir | rmdir
    path: str
    data: bytes = b""
    dst: str = ""
    offset: int = 0
    fsync: bool = False
    note: str = ""  # e.g. " (atomic save, step 1 of X)"
    then: Op | None = None  # the next step, done at once (the rename of an atomic save)

    def __str__(self) -> str:
        if self.kind == "put":
            return f"put {self.path} ({len(self.data)} bytes{', fsync' if self.fsync else ''}){self.note}"
        if self.kind == "patch":
            return f"patch {self.path} at {self.offset} ({len(self.data)} bytes)"
        if self.kind == "rename":
            return f"rename {self.path} -> {self.dst}{self.note}"
        return f"{self.kind} {self.path}"


def apply(tree: Tree, op: Op) -> Tree:
    """The tree after ``op`` completed (a new dict)."""
    t = dict(tree)
    if op.kind == "put":
        t[op.path] = op.data
    elif op.kind == "patch":
        old = t[op.path]
        assert isinstance(old, bytes)
        t[op.path] = old[:op.offset] + op.data + old[op.offset + len(op.data):]
    elif op.kind == "rename":
        moved = {p: v for p, v in t.items() if p == op.path or p.startswith(op.path + "/")}
        for p in moved:
            del t[p]
        if op.dst in t and t[op.dst] is not DIR:
            del t[op.dst]  # replaced
        for p, v in moved.items():
            t[op.dst + p[len(op.path):]] = v
    elif op.kind == "unlink" or op.kind == "rmdir":
        del t[op.path]
    elif op.kind == "mkdir":
        t[op.path] = DIR
    else:
        raise ValueError(op.kind)
    return t


def outcomes(tree: Tree, op: Op | None) -> list[Tree]:
    """Every tree the folder may hold if ``op`` was interrupted (see the module docstring)."""
    if op is None:
        return [tree]
    out = [tree]
    if op.kind == "put":
        for n in range(0, len(op.data), PAGE):
            out.append({**tree, op.path: op.data[:n]})
    out.append(apply(tree, op))
    return out


# ---------------------------------------------------------------- the churner


@dataclass
class ChurnError:
    at: float  # time.monotonic() when the error came back
    op: str
    error: str


@dataclass
class Churner:
    """Seeded operations on ``root`` in a thread; see the module docstring.

    ``committed`` and ``in_flight`` belong to the thread while it runs: read them only after
    ``stop()``. The first failed syscall ends the thread's run (the folder's state is then
    uncertain until ``adopt``). ``max_files`` keeps the tree small, so reading it whole after
    every fault stays cheap.
    """

    root: Path
    rng: random.Random
    max_files: int = 120
    max_dirs: int = 12
    committed: Tree = field(default_factory=dict)
    in_flight: Op | None = None
    errors: list[ChurnError] = field(default_factory=list)
    ops_done: int = 0
    longest_s: float = 0.0
    longest_op: str = ""
    #: path → sha256 of every content acknowledged under it, oldest first (for messages)
    history: dict[str, list[str]] = field(default_factory=dict)
    #: every path that ever held something acknowledged
    ever: set[str] = field(default_factory=set)
    #: (label, operation) of every acknowledged operation, oldest first (for messages)
    journal: list[tuple[str, Op]] = field(default_factory=list)
    label: str = ""  # set by the test: which round the operations belong to
    _names: Iterable[int] = field(default_factory=lambda: itertools.count(1))
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _current: tuple[str, float] | None = None

    # ------------------------------------------------------------ control (test thread)

    def start(self) -> None:
        assert self._thread is None and self.in_flight is None
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="crash-churner", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask the thread to end after its current operation; fail if it does not in time."""
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            what, since = self._current or ("?", time.monotonic())
            raise AssertionError(f"a churn operation did not return: {what} has been waiting "
                                 f"{time.monotonic() - since:.1f} s (the mount is wedged)")
        self._thread = None

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def current(self) -> tuple[str, float] | None:
        """The operation under way and since when (monotonic), or None."""
        return self._current

    def adopt(self, found: Tree) -> None:
        """Take ``found`` as the acknowledged state (after a fault was resolved)."""
        if self.in_flight is not None:
            self.journal.append((self.label, self.in_flight))
            self.in_flight.note += " [interrupted; resolved from the mount]"
        self.committed = dict(found)
        self.in_flight = None
        for p, v in found.items():
            self._remember(p, v)

    # ------------------------------------------------------------ the thread

    def _run(self) -> None:
        while not self._stop.is_set():
            op = self._choose()
            t0 = time.monotonic()
            self._current = (str(op), t0)
            try:
                self._do(op)
            except OSError as exc:
                self.errors.append(ChurnError(time.monotonic(), str(op), f"{type(exc).__name__}: {exc}"))
                return
            finally:
                self._current = None
                took = time.monotonic() - t0
                if took > self.longest_s:
                    self.longest_s, self.longest_op = took, str(op)
            self.ops_done += 1

    def _remember(self, path: str, value: bytes | None) -> None:
        self.ever.add(path)
        if isinstance(value, bytes):
            versions = self.history.setdefault(path, [])
            digest = hashlib.sha256(value).hexdigest()
            if not versions or versions[-1] != digest:
                versions.append(digest)

    def _commit(self) -> None:
        op = self.in_flight
        assert op is not None
        self.committed = apply(self.committed, op)
        self.in_flight = None
        self.journal.append((self.label, op))
        if op.kind in ("put", "patch"):
            self._remember(op.path, self.committed[op.path])
        elif op.kind == "rename":
            for p, v in self.committed.items():
                if p == op.dst or p.startswith(op.dst + "/"):
                    self._remember(p, v)
        elif op.kind == "mkdir":
            self._remember(op.path, DIR)

    def _full(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def _do(self, op: Op) -> None:
        self.in_flight = op
        if op.kind == "put":
            fd = os.open(self._full(op.path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(op.data)
                while view:
                    n = os.write(fd, view[:WRITE_CHUNK])
                    view = view[n:]
                if op.fsync:
                    os.fsync(fd)
                    self._commit()  # acknowledged: whatever close says now
            finally:
                os.close(fd)
        elif op.kind == "patch":
            fd = os.open(self._full(op.path), os.O_WRONLY)
            try:
                n = os.pwrite(fd, op.data, op.offset)
                if n != len(op.data):
                    raise OSError(0, f"short pwrite: {n} of {len(op.data)} bytes")
            finally:
                os.close(fd)
        elif op.kind == "rename":
            os.rename(self._full(op.path), self._full(op.dst))
        elif op.kind == "unlink":
            os.unlink(self._full(op.path))
        elif op.kind == "mkdir":
            os.mkdir(self._full(op.path))
        elif op.kind == "rmdir":
            os.rmdir(self._full(op.path))
        if self.in_flight is not None:
            self._commit()
        if op.then is not None:
            self._current = (str(op.then), time.monotonic())
            self._do(op.then)

    # ------------------------------------------------------------ choosing

    def _new_name(self, parent: str, *, is_dir: bool = False) -> str:
        n = next(self._names)  # type: ignore[call-overload]
        if is_dir:
            name = f"d{n:04d}"
        else:
            name = self.rng.choice([f"f{n:04d}.txt", f"f{n:04d}.bin", f"f{n:04d}", f"note {n:04d}.txt"])
        return f"{parent}/{name}" if parent else name

    def _data(self) -> bytes:
        r = self.rng.random()
        if r < 0.05:
            size = 0
        elif r < 0.55:
            size = self.rng.randint(1, PAGE)
        elif r < 0.92:
            size = self.rng.randint(PAGE + 1, 64 * 1024)
        else:
            size = self.rng.randint(64 * 1024 + 1, 300 * 1024)
        return self.rng.randbytes(size)

    def _choose(self) -> Op:
        rng = self.rng
        t = self.committed
        files = sorted(p for p, v in t.items() if v is not DIR)
        synced = [p for p in files if not is_excluded(p.rsplit("/", 1)[-1])]
        dirs = [""] + sorted(p for p, v in t.items() if v is DIR)
        subdirs = dirs[1:]
        empty = [d for d in subdirs if not any(p.startswith(d + "/") for p in t)]
        full = len(files) >= self.max_files
        weights = {
            "create": 5 if full else 30,
            "overwrite": 15 if files else 0,
            "patch": 10 if any(t[p] for p in files) else 0,
            "rename": 8 if synced else 0,
            "rename-over": 4 if len(synced) >= 2 else 0,
            "unlink": (30 if full else 10) if files else 0,
            "atomic-save": 12,
            "mkdir": 4 if len(subdirs) < self.max_dirs else 0,
            "rename-dir": 1 if subdirs else 0,
            "rmdir": 2 if empty else 0,
        }
        kind = rng.choices(list(weights), weights=list(weights.values()))[0]
        if kind == "create":
            return Op("put", self._new_name(rng.choice(dirs)), self._data(), fsync=rng.random() < 0.3)
        if kind == "overwrite":
            return Op("put", rng.choice(files), self._data(), fsync=rng.random() < 0.3)
        if kind == "patch":
            path = rng.choice([p for p in files if t[p]])
            old = t[path]
            assert isinstance(old, bytes)
            start = rng.randrange(len(old))
            page_end = (start // PAGE + 1) * PAGE
            length = rng.randint(1, min(page_end, len(old)) - start)
            return Op("patch", path, rng.randbytes(length), offset=start)
        if kind == "rename":
            src = rng.choice(synced)
            return Op("rename", src, dst=self._new_name(rng.choice(dirs)))
        if kind == "rename-over":
            src, dst = rng.sample(synced, 2)
            return Op("rename", src, dst=dst, note=" (over an existing file)")
        if kind == "unlink":
            return Op("unlink", rng.choice(files))
        if kind == "atomic-save":
            target = rng.choice(synced) if synced and rng.random() < 0.8 else self._new_name(rng.choice(dirs))
            parent, _, name = target.rpartition("/")
            temp = f".{name}.part" if rng.random() < 0.5 else f"{name}.tmp"
            temp = f"{parent}/{temp}" if parent else temp
            return Op("put", temp, self._data(), fsync=True, note=f" (atomic save, step 1 of {target})",
                      then=Op("rename", temp, dst=target, note=" (atomic save, step 2)"))
        if kind == "mkdir":
            parents = [d for d in dirs if d.count("/") < 2]
            return Op("mkdir", self._new_name(rng.choice(parents), is_dir=True))
        if kind == "rename-dir":
            src = rng.choice(subdirs)
            parents = [d for d in dirs if d != src and not d.startswith(src + "/") and d.count("/") < 2]
            return Op("rename", src, dst=self._new_name(rng.choice(parents), is_dir=True), note=" (a directory)")
        return Op("rmdir", rng.choice(empty))


def touching(journal: list[tuple[str, Op]], path: str, limit: int = 5) -> list[str]:
    """The last acknowledged operations on the entry now at ``path``, oldest first.

    Walks the journal backwards and follows the entry through renames (of itself or of a
    directory above it), so an entry that came back after it was moved away is explained by
    the operations on the path it had then.
    """
    alias = path
    out: list[str] = []
    for label, op in reversed(journal):
        if len(out) >= limit:
            break
        if op.kind == "rename" and (alias == op.dst or alias.startswith(op.dst + "/")):
            out.append(f"{label}: {op}")
            alias = op.path + alias[len(op.dst):]
        elif op.kind == "rename" and (alias == op.path or alias.startswith(op.path + "/")):
            out.append(f"{label}: {op} (moved it away)")
        elif op.kind != "rename" and op.path == alias:
            out.append(f"{label}: {op}")
    return out[::-1]


def explain(lines: list[str], journal: list[tuple[str, Op]]) -> list[str]:
    """``diff_trees`` lines, each followed by the operations that last touched its path."""
    out = []
    for line in lines:
        out.append(line)
        kind, _, rest = line.partition(": ")
        if kind in ("missing", "unexpected", "different"):
            path = rest.split(" (", 1)[0] if kind != "different" else rest.split(": expected", 1)[0]
            ops = touching(journal, path)
            out += [f"      last touched by {o}" for o in ops] or ["      never touched by an acknowledged operation"]
    return out


def resolve(churner: Churner, found: Tree) -> list[str]:
    """Check ``found`` against what the churner's interrupted operation may leave; adopt it.

    Returns the differences (empty when ``found`` is one of the outcomes), measured against
    the nearest outcome.
    """
    candidates = outcomes(churner.committed, churner.in_flight)
    if found in candidates:
        churner.adopt(found)
        return []
    nearest = min(candidates, key=lambda c: len(diff_trees(c, found, limit=10**6)))
    lines = explain(diff_trees(nearest, found, history=churner.history), churner.journal)
    churner.adopt(found)
    return lines


# ---------------------------------------------------------------- the daemon


_STAMP_RE = re.compile(r"^\S+ \S+ ")  # "2026-12-02 10:11:12,345 " and similar


def key_log_lines(log_text: str, limit: int = 25) -> list[str]:
    """WARNING/ERROR/CRITICAL lines and the last line of each traceback, first occurrence
    of each (ignoring time stamps), with a count; at most ``limit``."""
    lines = log_text.splitlines()
    picked: dict[str, list[Any]] = {}
    for i, line in enumerate(lines):
        key = None
        if re.search(r" (WARNING|ERROR|CRITICAL) ", line):
            key = _STAMP_RE.sub("", line)
        elif line.startswith("Traceback"):
            j = i + 1
            while j < len(lines) and (lines[j].startswith(" ") or not lines[j].strip()):
                j += 1
            key = "Traceback ... " + (lines[j] if j < len(lines) else "")
        if key is not None:
            entry = picked.setdefault(key, [line if not key.startswith("Traceback") else key, 0])
            entry[1] += 1
    out = [f"{text}" + (f"   [x{n}]" if n > 1 else "") for text, n in picked.values()]
    return out[:limit] + ([f"... {len(out) - limit} more distinct lines"] if len(out) > limit else [])


# ---------------------------------------------------------------- a run of rounds


CRASH_LEFT_TRANSIENT = "tombstone with nothing pending"
"""The one ``check_cache`` finding a crash may leave on purpose: an unlinked file still open at
the crash; the next start deletes such records (``Cache.__init__``)."""


class CrashRun:
    """Rounds of churn with faults on one ``MountEnv``; problems are collected, not raised.

    ``seed`` drives two generators: one for the scenario (fault times), one for the churner's
    operations. Every check adds lines to ``problems``; ``finish()`` runs the end checks and
    raises one ``AssertionError`` with all of them, the seed and the key daemon log lines.
    """

    def __init__(self, env: Any, seed: int, *, stall_limit_s: float | None = None) -> None:
        self.env = env
        self.seed = seed
        self.scenario = random.Random(f"{seed}:scenario")
        self.churner = Churner(env.docs, random.Random(f"{seed}:ops"))
        self.problems: list[str] = []
        self.stall_limit_s = stall_limit_s
        self.rounds = 0
        self.t0 = time.monotonic()
        self.log: list[str] = []  # what happened, one line per round, for the message

    def note(self, text: str) -> None:
        self.log.append(f"{time.monotonic() - self.t0:6.1f} s  {text}")

    def problem(self, text: str) -> None:
        self.problems.append(f"[{time.monotonic() - self.t0:.1f} s, round {self.rounds}] {text}")

    # ------------------------------------------------------------ pieces of a round

    def begin_round(self, n: int, lead_in: tuple[float, float] = (0.2, 2.0)) -> None:
        """Round ``n``: start the churn and let it run for a seeded while before the fault."""
        self.rounds = n
        self.churner.label = f"round {n}"
        self.start_churn()
        time.sleep(self.scenario.uniform(*lead_in))  # the fault's moment, chosen by the seed

    def end_round(self) -> None:
        """After the fault healed: churn on for a seeded while, stop, and check the mount."""
        time.sleep(self.scenario.uniform(0.5, 2.0))
        self.stop_churn()
        self.check_mount(f"end of round {self.rounds}")

    def start_churn(self) -> None:
        self.churner.start()

    def stop_churn(self, *, errors_expected_after: float | None = None) -> None:
        """Stop the churner; its errors are problems, except those that came back after
        ``errors_expected_after`` (the monotonic time a fault began that makes them normal)."""
        n_errors = len(self.churner.errors)
        try:
            self.churner.stop()
        except AssertionError as exc:
            self.problem(str(exc))
            raise
        for e in self.churner.errors[n_errors:]:
            if errors_expected_after is None or e.at < errors_expected_after:
                self.problem(f"a churn operation failed with the daemon up: {e.op}: {e.error}")
        self._check_stall()

    def _check_stall(self) -> None:
        if self.stall_limit_s is not None and self.churner.longest_s > self.stall_limit_s:
            self.problem(f"a churn operation took {self.churner.longest_s:.1f} s "
                         f"(limit {self.stall_limit_s:g} s): {self.churner.longest_op}")
            self.churner.longest_s = 0.0

    def check_mount(self, when: str) -> None:
        """The mount holds the acknowledged tree (or an outcome of the interrupted operation)."""
        anomalies: list[str] = []
        try:
            found = read_tree(self.env.docs, anomalies=anomalies)
        except OSError as exc:
            # Nothing after this can be judged (the interrupted operation stays unresolved):
            # report now, with the daemon's log, rather than trip over it in the next round.
            self.problem(f"{when}: the mount could not be read: {exc!r}")
            self.fail_now()
        if anomalies:
            self.problem(f"{when}: files whose size and content disagree:\n    " + "\n    ".join(anomalies))
        interrupted = self.churner.in_flight
        lines = resolve(self.churner, found)
        if lines:
            what = f" (interrupted: {interrupted})" if interrupted else ""
            self.problem(f"{when}: the mount does not hold what was acknowledged{what}:\n    "
                         + "\n    ".join(lines))

    def check_crash_left_cache(self) -> None:
        from cscd.cache.check import check_cache  # the daemon's own checker, run read-only

        try:
            found = [p for p in check_cache(self.env.daemon.cache, self.env.check_sealer)
                     if CRASH_LEFT_TRANSIENT not in p]
        except Exception as exc:  # noqa: BLE001 - a cache the checker cannot read is a finding
            found = [f"the check failed: {exc!r}"]
        if found:
            kept = self.env.workdir / f"index-after-round-{self.rounds}"
            shutil.copytree(self.env.daemon.cache / "index", kept, dirs_exist_ok=True)
            self.problem(f"the cache the crash left is inconsistent (index kept in {kept}):\n    "
                         + "\n    ".join(found[:15]))

    def restart_daemon(self) -> None:
        t = time.monotonic()
        try:
            self.env.start_daemon()
        except AssertionError as exc:
            self.problem(f"the daemon did not start again: {exc}")
            raise
        self.note(f"daemon started again in {time.monotonic() - t:.1f} s")

    # ------------------------------------------------------------ the end

    def finish(self, settle_timeout_s: float) -> None:
        """The end checks (see the test module's docstring); raises with every problem found."""
        env = self.env
        settled = False
        if not env.daemon.is_running():
            self.problem(f"the daemon is not running at the end (exit code {env.daemon.proc.poll()})")
        else:
            self.check_mount("at the end")
            t = time.monotonic()
            try:
                wait_settled(env, settle_timeout_s)
                settled = True
                self.note(f"0 pending {time.monotonic() - t:.1f} s after the last operation")
            except AssertionError as exc:
                self.problem(str(exc))
        expected = server_view(self.churner.committed)
        skip = lambda name: name.startswith(UPLOAD_TEMP_PREFIX)  # noqa: E731
        server = read_tree(env.server, skip=skip)
        lines = explain(diff_trees(expected, server, history=self.churner.history), self.churner.journal)
        if lines:
            later = ""
            if settled:
                try:
                    wait_for(lambda: read_tree(env.server, skip=skip) == expected, 15, "server converges")
                    later = " (it did converge within 15 s more: status said 0 pending too early)"
                except AssertionError:
                    later = " (still so 15 s later)"
            self.problem(f"the server differs from the reference{' with 0 pending' if settled else ''}"
                         f"{later}:\n    " + "\n    ".join(lines))
        gone = sorted(p for p in self.churner.ever - set(self.churner.committed)
                      if p in server or os.path.lexists(env.server / p))
        if gone:
            self.problem("deleted (and not re-created) but on the server: " + ", ".join(gone[:20]))
        for where, root in (("mount", env.docs), ("server", env.server)):
            try:
                copies = conflict_copies(root)
            except OSError as exc:
                copies = [f"(could not walk: {exc!r})"]
            if copies:
                self.problem(f"conflict copies on the {where} (one writer): " + ", ".join(copies[:20]))
        if not env.daemon.is_running():
            self.problem("the daemon is not running after the end checks")
        tracebacks = [line for line in env.daemon.log_text().splitlines() if line.startswith("Traceback")]
        if tracebacks:
            self.problem(f"the daemon logged {len(tracebacks)} traceback(s)")
        temps = upload_temporaries(env.server)
        c = self.churner
        self.note(f"{self.rounds} rounds, {c.ops_done} operations, {len(c.committed)} entries at the end, "
                  f"longest operation {c.longest_s * 1000:.0f} ms ({c.longest_op}); "
                  f"upload temporaries left on the server: {len(temps)}")
        self.fail_now()

    def fail_now(self) -> None:
        """Fail the test if anything went wrong so far: every problem, what happened, the daemon's log."""
        env = self.env
        print(f"seed {self.seed}\n" + "\n".join(self.log))
        if self.problems:
            pytest.fail(
                f"seed {self.seed} (CSCD_CRASH_SEED={self.seed} repeats the choices; the timing of a "
                f"fault against the operations still varies)\n"
                + "\n".join(self.problems)
                + "\n---- what happened:\n" + "\n".join(self.log)
                + "\n---- key lines of the daemon log:\n" + "\n".join(key_log_lines(env.daemon.log_text()))
                + f"\n---- last lines of {env.daemon.log_path}:\n{env.daemon.log_tail(30)}", pytrace=False)

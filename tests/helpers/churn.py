"""Churn: programs nobody here wrote drive a mounted folder, and the outcome is judged.

Owns the workloads of the churn stage (``tests/test_churn.py``) and the checks that judge
them. A workload takes a directory inside the mount (and, where the expected end state is
not obvious, a reference directory on local disk that it keeps equal to what the mount
should hold) and runs a real program the way its users do: the ``sqlite3`` shell, ``git``,
``tar``, ``rsync``, ``stress-ng``, ``fio``, and the save patterns of vim, LibreOffice and
VS Code replayed with plain syscalls. A workload fails only when the program itself says so
(its exit status, its own verify); everything else is judged afterwards by outcome:

- ``wait_settled``: the daemon stays alive and reaches 0 pending changes;
- ``assert_converged``: daemon alive, the mount answers, nothing pending, no conflict copy
  on the mount nor on the server (one writer never conflicts with itself), no traceback in
  the daemon's log, and the server's tree (``env.server``: what smbd stores on disk) equals
  the mount's tree equals the local reference (names, kinds, sizes, sha256).

Symbolic and hard links are not supported by cscd (EPERM), so no workload makes any. Names
matching the default exclusion patterns (``*.tmp``, ``~$*``, ``.~lock.*#``) stay on this
machine only, so a workload leaves none behind at its end. No fixtures here.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers.wait import wait_for

__all__ = [
    "CONFLICT_RE", "STRESS_NG_EXIT", "assert_alive", "assert_converged", "assert_no_tracebacks",
    "assert_trees_equal", "bogo_ops", "conflict_copies", "copy_out", "create_delete_races",
    "fio_randwrite_verify", "fio_verify_only", "git", "git_workload", "libreoffice_saves",
    "make_tree", "mount_answers", "mutate_tree", "pending_of", "rapid_rewrites", "rsync_workload",
    "run", "sha256_file", "sqlite_workload", "status", "stress_ng", "tar_roundtrip", "tree_digest",
    "vim_saves", "vscode_saves", "wait_settled", "write_docs",
]

SETTLE_TIMEOUT_S = 120.0
"""How long a churned folder may take to have nothing pending (a few thousand small files)."""

STABLE_FOR_S = 1.0
"""0 pending must hold this long (two polls at least) before the folder counts as settled."""

MOUNT_ANSWER_TIMEOUT_S = 10.0

#: ``name (conflict HOST YYYY-MM-DD HHMMSS).ext`` as ``cscd/sync/conflicts.py`` makes them
#: (the extension is optional; HOST has no "/").
CONFLICT_RE = re.compile(r" \(conflict [^/]+ \d{4}-\d{2}-\d{2} \d{6}\)(\.[^/]*)?$")

Digest = dict[str, tuple[str, int, str]]


# ---------------------------------------------------------------- running programs


def run(cmd: list[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
        input: bytes | None = None, timeout_s: float = 120.0,
        ok: Iterable[int] = (0,)) -> subprocess.CompletedProcess[str]:
    """Run a program to its end; fail with its exit code and output unless the code is ``ok``."""
    proc = subprocess.run(cmd, cwd=cwd, env=None if env is None else dict(env), input=input,
                          capture_output=True, timeout=timeout_s, check=False)
    result = subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
        proc.stderr.decode(errors="replace"))
    if result.returncode not in tuple(ok):
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited with {result.returncode} (cwd {cwd})\n"
            f"---- stdout (end):\n{_tail(result.stdout)}\n---- stderr (end):\n{_tail(result.stderr)}")
    return result


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------- trees and conflicts


def tree_digest(path: Path) -> Digest:
    """Every entry below ``path``: relative path → (kind, size, sha256 of the content).

    Nothing is skipped. Kinds are ``dir`` (size 0, no hash), ``file``, ``symlink`` (hash of
    the target) and ``other``. Relative paths use "/" and never start with it.
    """
    path = Path(path)
    out: Digest = {}
    for dirpath, dirnames, filenames in os.walk(path, onerror=_raise):
        rel_dir = os.path.relpath(dirpath, path)
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            st = os.lstat(full)
            if stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", 0, "")
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", st.st_size, _sha256_file(full))
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(full).encode(errors="surrogateescape")
                out[rel] = ("symlink", len(target), hashlib.sha256(target).hexdigest())
            else:
                out[rel] = ("other", st.st_size, "")
    return out


def _raise(exc: OSError) -> None:
    raise exc


def _sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's content, read in 1 MiB pieces."""
    return _sha256_file(path)


def conflict_copies(path: Path) -> list[str]:
    """Relative paths below ``path`` whose names are cscd conflict copies (sorted)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(path, onerror=_raise):
        for name in dirnames + filenames:
            if CONFLICT_RE.search(name):
                found.append(os.path.relpath(os.path.join(dirpath, name), path))
    return sorted(found)


def assert_trees_equal(left: Digest, right: Digest, left_name: str, right_name: str,
                       limit: int = 25) -> None:
    """Fail naming the entries only on one side and those that differ (at most ``limit`` each)."""
    if left == right:
        return
    only_left = sorted(set(left) - set(right))
    only_right = sorted(set(right) - set(left))
    differ = sorted(k for k in set(left) & set(right) if left[k] != right[k])

    def show(items: list[str], fmt: Callable[[str], str]) -> str:
        more = f"\n    … and {len(items) - limit} more" if len(items) > limit else ""
        return "".join(f"\n    {fmt(k)}" for k in items[:limit]) + more

    raise AssertionError(
        f"{left_name} and {right_name} differ: {len(only_left)} only in {left_name}, "
        f"{len(only_right)} only in {right_name}, {len(differ)} differ"
        + (f"\n  only in {left_name}:" + show(only_left, lambda k: f"{k} {left[k][:2]}") if only_left else "")
        + (f"\n  only in {right_name}:" + show(only_right, lambda k: f"{k} {right[k][:2]}") if only_right else "")
        + (f"\n  differ ({left_name} vs {right_name}):"
           + show(differ, lambda k: f"{k}: {_short(left[k])} vs {_short(right[k])}") if differ else ""))


def _short(entry: tuple[str, int, str]) -> str:
    kind, size, digest = entry
    return f"{kind} {size} B {digest[:12]}"


# ---------------------------------------------------------------- the daemon's view


def _log_tail(env: Any) -> str:
    return f"---- last lines of {env.daemon.log_path}:\n{env.daemon.log_tail()}"


def assert_alive(env: Any, when: str = "") -> None:
    """Fail with the exit code and the daemon log's tail if the daemon process has ended."""
    if not env.daemon.is_running():
        code = env.daemon.proc.poll() if env.daemon.proc is not None else None
        raise AssertionError(f"the daemon died{(' ' + when) if when else ''} (exit code {code})\n"
                             + _log_tail(env))


def status(env: Any) -> dict[str, Any]:
    """``cscd status --json`` of the env's daemon; fails if the command does."""
    result = env.daemon.run_cli("status", "--json", timeout_s=20)
    if result.returncode != 0:
        raise AssertionError(f"cscd status --json exited with {result.returncode}: "
                             f"{result.stderr.strip() or result.stdout.strip()}")
    return json.loads(result.stdout)


def pending_of(answer: Mapping[str, Any]) -> dict[str, Any]:
    """What ``status`` says is still pending: per folder and the sync engine's total."""
    return {**{name: f.get("pending_changes") for name, f in answer.get("folders", {}).items()},
            "sync": answer.get("sync", {}).get("pending_changes")}


def wait_settled(env: Any, timeout_s: float = SETTLE_TIMEOUT_S) -> dict[str, Any]:
    """Poll ``cscd status --json`` until every folder and the engine have 0 pending changes.

    The daemon must be alive at every poll (else fail at once with its log tail), and 0
    pending must hold for ``STABLE_FOR_S`` (a rescan that finds more starts the wait again).
    Returns the last status.
    """
    since: list[float | None] = [None]
    last: list[Any] = [None]

    def settled() -> bool:
        assert_alive(env, "while waiting for its changes to settle")
        try:
            answer = status(env)
        except (AssertionError, json.JSONDecodeError, subprocess.TimeoutExpired) as exc:
            last[0] = exc
            since[0] = None
            return False
        last[0] = {"pending": pending_of(answer), "problems": answer.get("sync", {}).get("problems")}
        if any(v is None or v != 0 for v in last[0]["pending"].values()):
            since[0] = None
            return False
        now = time.monotonic()
        if since[0] is None:
            since[0] = now
            return False
        return now - since[0] >= STABLE_FOR_S

    try:
        wait_for(settled, timeout_s, "the daemon's changes did not settle to 0 pending", interval_s=0.25)
    except AssertionError as exc:
        if "did not settle" in str(exc):
            raise AssertionError(f"{exc}\nlast answer: {last[0]!r}\n{_log_tail(env)}") from None
        raise
    return status(env)


def mount_answers(path: Path, timeout_s: float = MOUNT_ANSWER_TIMEOUT_S) -> list[str]:
    """``os.listdir(path)``, failing (not hanging) if the mount gives no answer in time."""
    box: dict[str, Any] = {}

    def listdir() -> None:
        try:
            box["names"] = os.listdir(path)
        except OSError as exc:
            box["error"] = exc

    t = threading.Thread(target=listdir, name="mount-answers", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise AssertionError(f"the mount does not answer: os.listdir({path}) hung for {timeout_s:g} s")
    if "error" in box:
        raise AssertionError(f"the mount does not answer: os.listdir({path}): {box['error']!r}")
    return box["names"]


def assert_no_tracebacks(env: Any) -> None:
    """Fail if the daemon's log holds a traceback (quoting the lines after the first one)."""
    tracebacks = [line for line in env.daemon.warnings() if "Traceback" in line]
    if tracebacks:
        lines = env.daemon.log_text().splitlines()
        first = lines.index(tracebacks[0])
        excerpt = "\n".join(lines[max(0, first - 3):first + 40])
        raise AssertionError(f"the daemon's log holds {len(tracebacks)} traceback(s); the first:\n{excerpt}")


def assert_converged(env: Any, reference: Path | None = None, *, subdir: str = "",
                     timeout_s: float = SETTLE_TIMEOUT_S) -> None:
    """The end state of a churn test, with one writer: everything arrived, nothing invented.

    The daemon is alive, the mount answers, 0 changes pending, no conflict copy on the mount
    nor on the server, no traceback in the daemon's log, and the server's folder equals the
    mounted folder. With ``reference``, the mounted ``subdir`` (and so the server's) also
    equals that local directory.
    """
    assert_alive(env, "during the workload")
    mount_answers(env.docs)
    wait_settled(env, timeout_s)
    on_mount = conflict_copies(env.docs)
    on_server = conflict_copies(env.server)
    assert not on_mount and not on_server, (
        f"conflict copies from a single writer: on the mount {on_mount}, on the server {on_server}\n"
        + _log_tail(env))
    mount_tree = tree_digest(env.docs)
    server_tree = tree_digest(env.server)
    assert_trees_equal(server_tree, mount_tree, "the server", "the mount")
    if reference is not None:
        prefix = subdir.strip("/")
        sub = {k[len(prefix) + 1:]: v for k, v in mount_tree.items() if k.startswith(prefix + "/")} \
            if prefix else mount_tree
        assert_trees_equal(tree_digest(reference), sub, "the reference", f"the mount's {prefix or '.'}")
    assert_alive(env, "after the checks")
    assert_no_tracebacks(env)


# ---------------------------------------------------------------- content from a seed


def make_tree(root: Path, rng: random.Random, *, files: int, max_size: int = 8192,
              big_every: int = 0, big_size: int = 256 * 1024, fanout: int = 12) -> Digest:
    """Make a tree of ``files`` files with content from ``rng`` below ``root`` (local disk).

    Directories nest two levels (``fanout`` per level); sizes are uniform in
    ``[0, max_size]``, and every ``big_every``-th file is ``big_size``. No name matches an
    exclusion pattern. Returns the tree's digest.
    """
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        a, b = rng.randrange(fanout), rng.randrange(fanout)
        d = root / f"d{a:02d}" / f"e{b:02d}"
        d.mkdir(parents=True, exist_ok=True)
        size = big_size if big_every and i % big_every == big_every - 1 else rng.randint(0, max_size)
        (d / f"f{i:05d}.dat").write_bytes(rng.randbytes(size))
    return tree_digest(root)


def mutate_tree(root: Path, rng: random.Random, *, rewrite: int, append: int, delete: int,
                add: int, rename_dirs: int = 1) -> None:
    """Change a tree the way a day of work does: rewrite, append, delete, add, rename dirs."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    rng.shuffle(files)
    for p in files[:rewrite]:
        p.write_bytes(rng.randbytes(rng.randint(0, 8192)))
    for p in files[rewrite:rewrite + append]:
        with open(p, "ab") as f:
            f.write(rng.randbytes(rng.randint(1, 4096)))
    for p in files[rewrite + append:rewrite + append + delete]:
        p.unlink()
    dirs = sorted(p for p in root.rglob("*") if p.is_dir())
    for i in range(add):
        d = rng.choice(dirs)
        (d / f"new{i:04d}.dat").write_bytes(rng.randbytes(rng.randint(0, 8192)))
    leaves = sorted(p for p in root.rglob("e*") if p.is_dir())
    for i, d in enumerate(rng.sample(leaves, min(rename_dirs, len(leaves)))):
        d.rename(d.with_name(f"moved{i:02d}-{d.name}"))


# ---------------------------------------------------------------- sqlite3


@dataclass
class ReaderLog:
    """What the concurrent ``SELECT count(*)`` loop saw: counts and failed runs."""

    counts: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _sqlite(db: Path, sql: str, *, timeout_s: float = 60) -> str:
    return run(["sqlite3", "-bail", "-batch", "-cmd", ".timeout 20000", str(db)],
               input=sql.encode(), timeout_s=timeout_s).stdout


def sqlite_workload(db: Path, journal_mode: str, *, transactions: int, rows_per_tx: int,
                    seed: int) -> ReaderLog:
    """One ``sqlite3`` process per transaction of ``rows_per_tx`` inserts, with a reader.

    The database is made in ``journal_mode`` (``delete`` or ``wal``); every writer is a new
    process (the CLI opens, writes one transaction and closes, as scripts do), while another
    thread runs ``sqlite3 … "SELECT count(*) FROM t"`` processes in a loop until the writers
    are done. Returns what the reader saw; a writer that fails fails the workload.
    """
    _sqlite(db, f"PRAGMA journal_mode={journal_mode};\n"
                "CREATE TABLE t(id INTEGER PRIMARY KEY, tx INTEGER NOT NULL, body TEXT NOT NULL);\n"
                "CREATE INDEX t_tx ON t(tx);\n")
    log = ReaderLog()
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            proc = subprocess.run(["sqlite3", "-bail", "-batch", "-cmd", ".timeout 20000", str(db),
                                   "SELECT count(*) FROM t;"], capture_output=True, timeout=60, check=False)
            out = proc.stdout.decode(errors="replace").strip()
            if proc.returncode != 0 or not out.isdigit():
                log.failures.append(f"exit {proc.returncode}: {out!r} {proc.stderr.decode(errors='replace')!r}")
            else:
                log.counts.append(int(out))

    t = threading.Thread(target=reader, name="sqlite-reader", daemon=True)
    t.start()
    try:
        for tx in range(transactions):
            # A body from the seed and the transaction (hex of random bytes grows pages).
            body = random.Random(seed * 1_000_003 + tx).randbytes(rows_per_tx * 150).hex()
            values = ",\n".join(
                f"({tx}, '{body[i * 300:(i + 1) * 300]}')" for i in range(rows_per_tx))
            _sqlite(db, f"BEGIN;\nINSERT INTO t(tx, body) VALUES\n{values};\n"
                        f"UPDATE t SET body = body || 'u' WHERE tx = {max(0, tx - 1)} AND id % 7 = 0;\n"
                        "COMMIT;\n")
    finally:
        done.set()
        t.join(90)
    return log


# ---------------------------------------------------------------- git


GIT_DATE = "2024-05-01T12:00:00+00:00"


def git(repo: Path, *args: str, home: Path, timeout_s: float = 120) -> str:
    """Run ``git -C repo ARGS`` with no system or user configuration, fixed identity and dates.

    Fixed dates make commits (and so their ids) the same in every run and on every disk.
    """
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_DATE": GIT_DATE, "GIT_COMMITTER_DATE": GIT_DATE, "LC_ALL": "C",
        "GIT_TERMINAL_PROMPT": "0",
    }
    cmd = ["git", "-c", "user.name=Churn Test", "-c", "user.email=churn@example.invalid",
           "-c", "init.defaultBranch=main", "-c", "gc.auto=0", "-c", "maintenance.auto=false",
           "-C", str(repo), *args]
    return run(cmd, env=env, timeout_s=timeout_s).stdout


def git_workload(repo: Path, home: Path, *, files: int = 200, seed: int = 0) -> None:
    """init; ``files`` small files committed; a branch changing every third; checkouts; rebase; gc.

    ``main`` gets a commit of its own too, so the rebase replays the branch's commit onto it.
    Ends on the rebased branch with a clean work tree.
    """
    rng = random.Random(seed)
    repo.mkdir(parents=True, exist_ok=True)
    git(repo, "init", "-q", home=home)
    for i in range(files):
        d = repo / f"src{i % 8}"
        d.mkdir(exist_ok=True)
        (d / f"m{i:03d}.txt").write_text("".join(f"line {j} of {i}: {rng.random()}\n"
                                                 for j in range(rng.randint(1, 40))))
    git(repo, "add", "-A", home=home)
    git(repo, "commit", "-q", "-m", "initial", home=home)
    git(repo, "checkout", "-q", "-b", "feature", home=home)
    for i in range(0, files, 3):
        p = repo / f"src{i % 8}" / f"m{i:03d}.txt"
        p.write_text(p.read_text() + f"feature change {rng.random()}\n")
    (repo / "src0" / "m000.txt").unlink()
    (repo / "feature-notes.txt").write_text("notes\n" * 50)
    git(repo, "add", "-A", home=home)
    git(repo, "commit", "-q", "-m", "feature: change a third", home=home)
    git(repo, "checkout", "-q", "main", home=home)
    (repo / "README.txt").write_text("main moved on\n")
    p = repo / "src1" / "m001.txt"
    p.write_text("rewritten on main\n" + p.read_text())
    git(repo, "add", "-A", home=home)
    git(repo, "commit", "-q", "-m", "main: readme", home=home)
    for _ in range(3):
        git(repo, "checkout", "-q", "feature", home=home)
        git(repo, "checkout", "-q", "main", home=home)
    git(repo, "checkout", "-q", "feature", home=home)
    git(repo, "rebase", "-q", "main", home=home)
    git(repo, "gc", "-q", "--prune=now", home=home)


# ---------------------------------------------------------------- tar


def tar_roundtrip(reference: Path, target: Path, scratch: Path) -> Path:
    """``tar c`` the reference, ``tar x`` it into ``target`` (in the mount), ``tar c`` it back
    out and ``tar x`` that on local disk; return the directory it came back into."""
    scratch.mkdir(parents=True, exist_ok=True)
    target.mkdir(parents=True, exist_ok=True)
    run(["tar", "-c", "-f", str(scratch / "in.tar"), "-C", str(reference), "."])
    run(["tar", "-x", "-f", str(scratch / "in.tar"), "-C", str(target)], timeout_s=300)
    run(["tar", "-c", "-f", str(scratch / "out.tar"), "-C", str(target), "."], timeout_s=300)
    back = scratch / "back"
    back.mkdir()
    run(["tar", "-x", "-f", str(scratch / "out.tar"), "-C", str(back)])
    return back


# ---------------------------------------------------------------- editors' save patterns


def write_docs(directory: Path, reference: Path, names: Iterable[str], rng: random.Random) -> dict[str, bytes]:
    """Create the documents an editor then saves over; mirror them into ``reference``."""
    directory.mkdir(parents=True, exist_ok=True)
    reference.mkdir(parents=True, exist_ok=True)
    contents = {}
    for name in names:
        data = _doc_content(rng, 0)
        (directory / name).write_bytes(data)
        (reference / name).write_bytes(data)
        contents[name] = data
    return contents


def _doc_content(rng: random.Random, version: int) -> bytes:
    return f"version {version}\n".encode() + rng.randbytes(rng.randint(200, 20_000))


def _write_file(path: Path, data: bytes, *, fsync: bool = True, flags: int = 0) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flags, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _saves(directory: Path, reference: Path, names: list[str], saves: int, rng: random.Random,
           save: Callable[[Path, str, bytes, int], None]) -> dict[str, bytes]:
    last: dict[str, bytes] = {}
    for i in range(saves):
        name = names[i % len(names)]
        data = _doc_content(rng, i + 1)
        save(directory, name, data, i)
        last[name] = data
        # A person saves again after a moment; vary it so saves land in every phase of an upload.
        time.sleep(rng.choice((0, 0, 0.02, 0.05, 0.15, 0.3)))
    for name, data in last.items():
        (reference / name).write_bytes(data)
    return last


def vim_saves(directory: Path, reference: Path, names: list[str], *, saves: int,
              rng: random.Random) -> dict[str, bytes]:
    """vim's ``:w`` with ``backupcopy=no`` and ``writebackup``, ``saves`` times over ``names``.

    Per save: the swap file ``.NAME.swp`` is written (and rewritten), the ``4913`` probe
    file is created and removed, ``NAME`` is renamed to ``NAME~``, the new ``NAME`` written
    and fsynced, ``NAME~`` deleted, and the swap file deleted when the editor quits.
    Returns (and mirrors into ``reference``) the last content of every document saved.
    """

    def save(d: Path, name: str, data: bytes, i: int) -> None:
        swp = d / f".{name}.swp"
        _write_file(swp, b"b0VIM 9.0\0" + rng.randbytes(4086), fsync=True)
        with open(swp, "r+b") as f:  # vim updates the swap file in place while one types
            f.seek(4096)
            f.write(rng.randbytes(4096))
        probe = d / "4913"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        os.close(fd)
        os.unlink(probe)
        os.rename(d / name, d / f"{name}~")
        _write_file(d / name, data)
        os.unlink(d / f"{name}~")
        os.unlink(swp)

    return _saves(directory, reference, names, saves, rng, save)


def libreoffice_saves(directory: Path, reference: Path, names: list[str], *, saves: int,
                      rng: random.Random) -> dict[str, bytes]:
    """LibreOffice's save: lock file ``.~lock.NAME#``, a temp file renamed over ``NAME``.

    Per save: the lock file is created (the user's name and host in it), the new content
    goes into ``luXXXXXX.tmp`` beside the document and is fsynced, the temp file is renamed
    over ``NAME``, and the lock removed when the document is closed.
    """

    def save(d: Path, name: str, data: bytes, i: int) -> None:
        lock = d / f".~lock.{name}#"
        _write_file(lock, f",churn,host,{time.strftime('%d.%m.%Y %H:%M')},file:///home/churn;\n".encode())
        tmp = d / f"lu{os.getpid()}{i:04d}{rng.randrange(16**4):04x}.tmp"
        _write_file(tmp, data)
        os.rename(tmp, d / name)
        os.unlink(lock)

    return _saves(directory, reference, names, saves, rng, save)


def vscode_saves(directory: Path, reference: Path, names: list[str], *, saves: int,
                 rng: random.Random) -> dict[str, bytes]:
    """An atomic save as VS Code (and most modern editors) do it: ``NAME.tmpXXXX``, fsync,
    rename over ``NAME``."""

    def save(d: Path, name: str, data: bytes, i: int) -> None:
        tmp = d / f"{name}.tmp{rng.randrange(16**4):04x}"
        _write_file(tmp, data, flags=os.O_EXCL)
        os.rename(tmp, d / name)

    return _saves(directory, reference, names, saves, rng, save)


# ---------------------------------------------------------------- rsync


def rsync_workload(reference: Path, target: Path, rng: random.Random, *, files: int) -> str:
    """``rsync -a`` a local tree into the mount, change the tree locally, ``rsync -a --delete``
    again; return what ``rsync -a --delete --checksum --dry-run --itemize-changes`` would
    still do afterwards (nothing, if the mount kept what rsync wrote)."""
    make_tree(reference, rng, files=files, big_every=50, big_size=1 << 20)
    target.mkdir(parents=True, exist_ok=True)
    run(["rsync", "-a", f"{reference}/", f"{target}/"], timeout_s=300)
    mutate_tree(reference, rng, rewrite=files // 10, append=files // 20, delete=files // 20,
                add=files // 15, rename_dirs=2)
    run(["rsync", "-a", "--delete", f"{reference}/", f"{target}/"], timeout_s=300)
    return run(["rsync", "-a", "--delete", "--checksum", "--dry-run", "--itemize-changes",
                f"{reference}/", f"{target}/"], timeout_s=300).stdout


# ---------------------------------------------------------------- big rewrites


def rapid_rewrites(path: Path, *, versions: int, size: int,
                   bytes_sent: Callable[[], int] | None = None, started_after: int = 1 << 20,
                   start_timeout_s: float = 10.0) -> bytes:
    """Rewrite ``path`` with new random content ``versions`` times; return the last content.

    After each version but the last, wait (at most ``start_timeout_s``) until
    ``bytes_sent()`` (bytes on the wire to the server) grew by ``started_after`` since the
    file was closed, i.e. the daemon is uploading that version, and then write the next one
    over it while the upload runs. A version whose upload did not start in time is
    overwritten all the same (the point is the next write, not the wait).
    """
    data = b""
    for v in range(versions):
        data = os.urandom(size)
        with open(path, "wb") as f:
            for off in range(0, size, 1 << 20):
                f.write(data[off:off + (1 << 20)])
        if bytes_sent is not None and v < versions - 1:
            base = bytes_sent()
            deadline = time.monotonic() + start_timeout_s
            while bytes_sent() - base < started_after and time.monotonic() < deadline:
                time.sleep(0.005)
    return data


# ---------------------------------------------------------------- create, then delete


def create_delete_races(directory: Path, reference: Path, *, iterations: int, workers: int,
                        rng_seed: int) -> list[str]:
    """Files created, written, closed and deleted at once, in ``workers`` threads at a time.

    Each iteration of each worker: ``tNNN.dat`` is written and deleted; every third one is
    renamed to ``rNNN.dat`` first and deleted under that name; every fifth is written in a
    fresh directory ``dNNN`` that is then removed; every tenth, ``keepNNN.dat``, stays (it is
    mirrored into ``reference``). Returns the names that must not exist at the end.
    """
    directory.mkdir(parents=True, exist_ok=True)
    reference.mkdir(parents=True, exist_ok=True)
    transient: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        rng = random.Random(rng_seed * 100 + w)
        try:
            for i in range(iterations):
                stem = f"w{w}-{i:04d}"
                data = rng.randbytes(rng.randint(0, 64 * 1024))
                names = [f"t{stem}.dat"]
                _write_file(directory / names[0], data, fsync=i % 4 == 0)
                if i % 3 == 0:
                    names.append(f"r{stem}.dat")
                    os.rename(directory / names[0], directory / names[1])
                    os.unlink(directory / names[1])
                else:
                    os.unlink(directory / names[0])
                if i % 5 == 0:
                    d = directory / f"d{stem}"
                    d.mkdir()
                    _write_file(d / "inner.dat", data[:1000], fsync=False)
                    os.unlink(d / "inner.dat")
                    d.rmdir()
                    names.append(f"d{stem}")
                if i % 10 == 0:
                    keep = f"keep{stem}.dat"
                    _write_file(directory / keep, data, fsync=False)
                    (reference / keep).write_bytes(data)
                with lock:
                    transient.extend(names)
        except BaseException as exc:  # noqa: BLE001 — reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,), name=f"churn-{w}") for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    if errors:
        raise AssertionError(f"a create/delete worker failed: {errors[0]!r}") from errors[0]
    return transient


# ---------------------------------------------------------------- stress-ng and fio


#: stress-ng's exit codes (stress-ng(1), "EXIT STATUS")
STRESS_NG_EXIT = {0: "success", 1: "error (bad arguments or a fatal problem)",
                  2: "one or more stressors failed", 3: "a stressor failed for lack of resources",
                  4: "a stressor is not implemented on this system", 5: "a stressor was killed by a signal",
                  6: "a stressor exited by exit(2)", 7: "metrics untrustworthy"}


def stress_ng(temp_path: Path, stressor: str, args: list[str], *, timeout_s: int) -> subprocess.CompletedProcess[str]:
    """One ``stress-ng --STRESSOR 1`` worker for ``timeout_s`` in ``temp_path`` (in the mount),
    with ``--verify`` (stressors that can check what they read back do).

    Returns the result whatever the exit code; the caller judges it (``STRESS_NG_EXIT``,
    ``bogo_ops``).
    """
    temp_path.mkdir(parents=True, exist_ok=True)
    return run(["stress-ng", f"--{stressor}", "1", *args, "--verify", "--timeout", f"{timeout_s}s",
                "--temp-path", str(temp_path), "--metrics-brief"],
               timeout_s=timeout_s + 120, ok=range(256))


def bogo_ops(result: subprocess.CompletedProcess[str], stressor: str) -> int | None:
    """The bogo ops stress-ng's ``--metrics-brief`` reports for ``stressor`` (None if absent)."""
    m = re.search(rf"metrc: \[\d+\] {re.escape(stressor)}\s+(\d+)\s", result.stdout + result.stderr)
    return int(m[1]) if m else None


def fio_args(path: Path, size: str) -> list[str]:
    return ["fio", "--name=churn", f"--filename={path}", f"--size={size}", "--rw=randwrite",
            "--bsrange=4k-64k", "--ioengine=psync", "--iodepth=1", "--direct=0",
            "--verify=crc32c", "--verify_fatal=1", "--randseed=1234", "--end_fsync=1",
            "--fsync=64", "--verify_state_save=0", "--output-format=normal"]


def fio_randwrite_verify(path: Path, *, size: str = "32M") -> str:
    """fio random writes (4k–64k, psync) over one file, then fio reads it back and verifies
    every block's crc32c; fails unless fio exits 0. Returns fio's report."""
    return run(fio_args(path, size) + ["--do_verify=1"], timeout_s=300).stdout


def fio_verify_only(path: Path, *, size: str = "32M") -> str:
    """Replay the same job without writing and verify ``path`` (a copy of the server's file)."""
    return run(fio_args(path, size) + ["--verify_only"], timeout_s=300).stdout


def copy_out(src: Path, dst: Path) -> Path:
    """Copy a file or tree to local disk (to run a program on the server's copy untouched)."""
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copyfile(src, dst)
    return dst

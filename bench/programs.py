"""Cases 14 and 15: programs nobody here wrote, reading a cached tree and writing new ones.

The other cases time our own loops; a real program asks the file system for more, or other,
things (GNU ``ls -l`` asked every entry for its SELinux label and ACLs until the eighth run).
Each side gets a ``git clone`` of this repository: on the server's disk for the two mounts (so
they list and fetch it like any server tree) and on the local disk as the reference. Every
program runs once on each side before it is timed, so what is timed is the cached, warm case,
and its output must equal the local run's (``git status`` must find a clean tree). Git is told
``core.fileMode false`` on every side: file modes do not travel through SMB, and neither mount
shows the server disk's executable bits.

Case 15 (``program-writes``) writes with the same programs, one after the other as a user
would, without waiting for sync between them: ``tar x`` of that tree, ``cp -a`` of it, ``git
clone`` of it, ``rm -rf`` of the copy. Then the time until the server's tree is what the
mount shows (names and sizes; how that differs from the local disk's is info), and the number
of conflict copies, which must be zero: there is one writer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from bench.fileio import wait_for
from bench.harness import REPO_ROOT, Env
from bench.report import CaseResult

CLIENTS = ("cscd", "rclone")
TREE = "programs"

#: label → shell command, run in the tree's root; its output is compared with the local run's
PROGRAMS: dict[str, str] = {
    "git status": "git status --porcelain",
    "grep -r": "grep -r 'no line has''this text' .; [ $? -eq 1 ]",  # split: this file has no match
    "du -s": "du -s --inodes .",
    "find -name": "find . -name '*.py' | sort",
    "tar c": "tar cf - --sort=name --exclude=.git . | wc -c",
    "md5sum": "git ls-files -z | xargs -0 md5sum",
}


def _clone(dest: Path) -> None:
    if dest.exists():
        return  # both cases prepare the same tree
    dest.parent.mkdir(parents=True, exist_ok=True)
    if (REPO_ROOT / ".git").exists():
        subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO_ROOT), str(dest)], check=True, timeout=300)
        subprocess.run(["git", "-C", str(dest), "config", "core.fileMode", "false"], check=True, timeout=60)
    else:  # an unpacked tarball: no git, so no git rows
        shutil.copytree(REPO_ROOT, dest, ignore=shutil.ignore_patterns(".venv", "results", "__pycache__"))


def prepare_programs(env: Env, _o: object) -> int:
    for name in CLIENTS:
        _clone(env.server_dir(name) / TREE)
    _clone(env.local / TREE)
    return sum(1 for _ in (env.local / TREE).rglob("*"))


def _run(cmd: str, cwd: Path) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=cwd, capture_output=True, timeout=600)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd!r} in {cwd}: exit {proc.returncode}: {proc.stderr.decode(errors='replace')[:300]}")
    return dt, proc.stdout


def run_programs(env: Env, o: object, res: CaseResult, entries: int) -> None:
    roots: dict[str, Path] = {"local": env.local / TREE}
    for name in CLIENTS:
        try:
            roots[name] = env.side(name).root / TREE
        except RuntimeError as exc:
            res.cell(f"git status.{name}", "s").fail(exc)
    has_git = (env.local / TREE / ".git").exists()
    programs = {k: v for k, v in PROGRAMS.items() if has_git or "git " not in v}
    expected = {label: _run(cmd, roots["local"])[1] for label, cmd in programs.items()}
    for label, cmd in programs.items():
        for side, root in roots.items():
            cell = res.cell(f"{label}.{side}", "s")
            try:
                _run(cmd, root)  # the first run fetches and caches; git refreshes its index
                _, out = _run(cmd, root)
                if out != expected[label]:
                    raise RuntimeError(f"{label} on {side} printed something else than on the local disk: "
                                       f"{out[:200]!r} against {expected[label][:200]!r}")
            except Exception as exc:  # noqa: BLE001 - one side failing must not stop the others
                cell.fail(exc)
                continue
            for _ in range(o.repeat):  # type: ignore[attr-defined]
                cell.sample(lambda cmd=cmd, root=root: _run(cmd, root)[0])
        res.row(f"{label}, warm, {entries:,} entries (s)", f"{label}.cscd", f"{label}.local", "local disk",
                higher_is_better=False)
        res.row(f"{label}, warm, {entries:,} entries (s)", f"{label}.cscd", f"{label}.rclone", "rclone",
                higher_is_better=False)
    res.note("a git clone of this repository on each side; each program run once untimed, its output "
             "checked against the local disk's, then timed")


# ------------------------------------------------------------------ 15. writes

#: label → command, run in a fresh directory on each side; {src} is the clone, {tar} its tarball
WRITES: dict[str, str] = {
    "tar x": "tar xf {tar}",
    "cp -a": "cp -a {src} cp",
    "git clone": "git clone -q {src} gc",
    "rm -rf": "rm -rf cp",
}
#: how the local version of a conflicting file is named (``cscd.sync.conflicts``)
CONFLICT_MARK = " (conflict "


def _tree(root: Path) -> dict[str, int]:
    """Relative path → size (-1 for a directory) of everything under ``root``; upload
    temporaries left out, and entries that vanish during the walk."""
    out: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            if name.startswith(".cscd-upload"):
                continue
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            out[os.path.relpath(path, root)] = -1 if name in dirnames else st.st_size
    return out


def _until_on_server(env: Env, res: CaseResult, name: str, root: Path, local: dict[str, int], i: int) -> None:
    """Right after ``name``'s commands: the time until its server's tree is what the mount
    shows (git writes a config of its own on a mount that cannot chmod; how the mount's tree
    differs from the local disk's is info), and its conflict copies."""
    reference = _tree(root)
    res.info[f"differs_from_local.{name}.{i}"] = sorted(
        p for p in reference.keys() | local.keys() if reference.get(p) != local.get(p))[:10]
    server = env.server_dir(name) / root.name
    cell = res.cell(f"on_server.{name}", "s")
    t0 = time.perf_counter()
    try:
        wait_for(lambda: _tree(server) == reference, 600, f"{name}: the server's tree", interval_s=0.2)
        cell.add(time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - reported in the cell
        cell.fail(exc)
    conflicts = [p for p in reference if CONFLICT_MARK in os.path.basename(p)]
    res.info[f"conflict_copies.{name}.{i}"] = len(conflicts)
    if conflicts:
        res.cell(f"conflicts.{name}", "copies").fail(f"{len(conflicts)} conflict copies from one writer: "
                                                       f"{conflicts[:5]}")


def run_program_writes(env: Env, o: object, res: CaseResult, entries: int) -> None:
    src = env.local / TREE
    tar = env.workdir / "programs.tar"
    subprocess.run(["tar", "cf", str(tar), "-C", str(src.parent), TREE], check=True, timeout=300)
    for i in range(o.repeat):  # type: ignore[attr-defined]
        where: dict[str, Path] = {"local": env.local / f"writes-{i}"}
        for name in CLIENTS:
            try:
                where[name] = env.side(name).root / f"writes-{i}"
            except RuntimeError as exc:
                res.cell(f"tar x.{name}", "s").fail(exc)
        local: dict[str, int] = {}
        for side, root in where.items():  # local first: the mounts' trees are compared with it
            root.mkdir()
            for label, cmd in WRITES.items():
                cell = res.cell(f"{label}.{side}", "s")
                try:
                    cell.add(_run(cmd.format(src=src, tar=tar), root)[0])
                except Exception as exc:  # noqa: BLE001 - the next command still runs
                    cell.fail(exc)
            if side == "local":
                local = _tree(root)
            else:
                _until_on_server(env, res, side, root, local, i)
    for label in WRITES:
        res.row(f"{label}, {entries:,} entries (s)", f"{label}.cscd", f"{label}.local", "local disk",
                higher_is_better=False)
        res.row(f"{label}, {entries:,} entries (s)", f"{label}.cscd", f"{label}.rclone", "rclone",
                higher_is_better=False)
    res.row("after the last command, until the server's tree is the mount's (s)", "on_server.cscd",
            "on_server.rclone", "rclone", higher_is_better=False)
    res.note("tar x, cp -a, git clone and rm -rf one after the other in a fresh directory, no wait between; "
             "then until the server has every name the mount shows, with its size; info.conflict_copies must be 0")

"""Case 14: programs nobody here wrote, on a cached tree (git, grep, du, find, tar, md5sum).

The other cases time our own loops; a real program asks the file system for more, or other,
things (GNU ``ls -l`` asked every entry for its SELinux label and ACLs until the eighth run).
Each side gets a ``git clone`` of this repository: on the server's disk for the two mounts (so
they list and fetch it like any server tree) and on the local disk as the reference. Every
program runs once on each side before it is timed, so what is timed is the cached, warm case,
and its output must equal the local run's (``git status`` must find a clean tree). Git is told
``core.fileMode false`` on every side: file modes do not travel through SMB, and neither mount
shows the server disk's executable bits.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

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

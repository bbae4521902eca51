r"""Known-folder redirection: plans, moving content into the mount, removal actions.

Owns ``~/.config/user-dirs.dirs`` (rewritten so the known folders point into the mount, every
other line kept), the record of applied redirections (``RECORD``, so a removal later uses the
removal action in force when the folder was redirected, as Windows keeps it), the plan for a
logon (pure: ``plan_redirection``), carrying it out with plain file operations through the
mounted path (``apply_plan``), and the pure plan for moving a folder when its target changes
(``plan_target_move``, carried out through two upstreams by ``move.move_target``).

Must not touch LMDB or the cache, and must never lose a byte: a local file is deleted only
after its copy in the mount was read back and its xxh3-128 hash matched; a failure midway
leaves the rest of the local files in place and the redirection of that folder not applied
(the next logon retries; files already moved are recognised by hash). Blocking: every
function here does file I/O — call it from a worker thread or a helper process, never from the
thread that serves the FUSE mount (its own syscalls on the mount would deadlock it).

A redirected known folder: its XDG entry points at ``MOUNT/NAME``; the old local folder, once
empty, becomes a symlink to it, for programs that use ``~/Documents`` directly. Not supported:
symlinks, sockets and device files inside a folder being moved (left in place and reported);
file permissions are not carried over (the server decides access).
"""

from __future__ import annotations

import enum
import errno
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import xxhash

from cscd.errors import CscdError
from cscd.policy.model import Policy, RemovalAction
from cscd.policy.unc import parse_unc
from cscd.redirect.move import MoveKind, TargetMove, plan_target_move  # noqa: F401 - re-exported
from cscd.types import UncTarget

XDG_KEYS: dict[str, str] = {
    "Desktop": "XDG_DESKTOP_DIR", "Documents": "XDG_DOCUMENTS_DIR",
    "Downloads": "XDG_DOWNLOAD_DIR", "Music": "XDG_MUSIC_DIR", "Pictures": "XDG_PICTURES_DIR",
    "Videos": "XDG_VIDEOS_DIR", "Templates": "XDG_TEMPLATES_DIR", "Public": "XDG_PUBLICSHARE_DIR",
}
USER_DIRS = Path(".config/user-dirs.dirs")
RECORD = Path(".config/cscd/redirected-folders.json")
_CHUNK = 1 << 20
_LINE = re.compile(r'^\s*(XDG_[A-Z0-9_]+_DIR)\s*=\s*"((?:[^"\\]|\\.)*)"\s*$')


class RedirectError(CscdError):
    """A folder could not be redirected or brought back; nothing was lost (see the message)."""


# -- user-dirs.dirs ----------------------------------------------------------------------------


def parse_user_dirs(text: str, home: Path) -> dict[str, Path]:
    """XDG key → path of each well-formed line (``$HOME/…`` or absolute); others are ignored."""
    out = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            value = re.sub(r"\\(.)", r"\1", m.group(2))
            if value == "$HOME" or value.startswith("$HOME/"):
                out[m.group(1)] = Path(home, value[6:]) if len(value) > 6 else Path(home)
            elif value.startswith("/"):
                out[m.group(1)] = Path(value)
    return out


def _quote(path: Path, home: Path) -> str:
    try:
        rel = path.relative_to(home)
        value = "$HOME/" + ("" if str(rel) == "." else str(rel))
    except ValueError:
        value = str(path)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_user_dirs(existing: str | None, home: Path, points: Mapping[str, Path]) -> str:
    """``existing`` with the keys in ``points`` set (in place, others kept), missing ones added."""
    lines = (existing or "# XDG user directories; cscd points redirected folders into its "
                         "mount.\n").splitlines()
    done = set()
    for i, line in enumerate(lines):
        m = _LINE.match(line)
        if m and m.group(1) in points:
            lines[i] = f"{m.group(1)}={_quote(points[m.group(1)], home)}"
            done.add(m.group(1))
    lines += [f"{k}={_quote(p, home)}" for k, p in points.items() if k not in done]
    return "\n".join(lines) + "\n"


# -- the record of applied redirections --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Applied:
    """A folder this machine has redirected: where it was locally, where it points, and the
    removal action in force when it was applied."""

    local: Path
    target: UncTarget
    removal_action: RemovalAction


def load_record(path: Path) -> dict[str, Applied]:
    """The record, or {} if there is none. A damaged record raises RedirectError (guessing
    would risk applying the wrong removal action)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return {name: Applied(Path(v["local"]), parse_unc(v["target"]),
                              RemovalAction(v["removal_action"])) for name, v in data.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, CscdError) as exc:
        raise RedirectError(f"{path}: the record of redirected folders is damaged ({exc}); "
                            f"fix or remove it") from None


def save_record(path: Path, record: Mapping[str, Applied]) -> None:
    data = {n: {"local": str(a.local), "target": str(a.target),
                "removal_action": a.removal_action.value} for n, a in sorted(record.items())}
    _write_atomic(Path(path), json.dumps(data, indent=1) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.cscd-tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# -- the plan (pure) ----------------------------------------------------------------------------


class StepKind(enum.Enum):
    REDIRECT = "redirect"  # point the folder into the mount, moving content in if asked
    KEEP = "keep"  # already redirected to the same target
    MOVE_TARGET = "move_target"  # redirected, the target changed: see ``move``
    REMOVE_LEAVE = "remove_leave"  # no longer redirected; data stays on the server
    REMOVE_BACK = "remove_redirect_back"  # no longer redirected; content copied home first


@dataclass(frozen=True, slots=True)
class FolderStep:
    name: str
    kind: StepKind
    local: Path  # the folder's place in the home directory
    mounted: Path  # MOUNT/NAME
    target: UncTarget | None = None  # the target after this step (None for removals)
    move_contents: bool = True
    removal_action: RemovalAction = RemovalAction.LEAVE
    move: TargetMove | None = None
    note: str = ""  # MOVE_TARGET: why the move was not carried out (set by the daemon) …
    moved: str = ""  # … or what moved the content to the new target (then it is recorded)


@dataclass(frozen=True)
class RedirectPlan:
    is_primary: bool
    steps: tuple[FolderStep, ...]
    user_dirs: str  # the user-dirs.dirs the plan leads to, if every step succeeds
    home: Path
    host: str


def local_place(name: str, home: Path, mount: Path, *, custom_path: str | None,
                user_dirs: Mapping[str, Path], record: Mapping[str, Applied]) -> Path:
    """Where a folder lives locally: the record's place, else the user's XDG setting (unless it
    already points into the mount), else ``~/NAME``."""
    if name in record:
        return record[name].local
    if custom_path is not None:
        return home / custom_path
    xdg = user_dirs.get(XDG_KEYS.get(name, ""))
    if xdg is not None and not xdg.is_relative_to(mount) and xdg != home:
        return xdg
    return home / name


def plan_redirection(policy: Policy, home: Path, mount: Path, *, record: Mapping[str, Applied],
                     user_dirs_text: str | None) -> RedirectPlan:
    """What a logon should do. Pure: reads nothing, changes nothing.

    On a machine that is not one of the user's primary computers nothing is redirected, and
    folders redirected earlier are removed by the removal action recorded with them.
    """
    is_primary = policy.is_primary_computer()
    dirs = parse_user_dirs(user_dirs_text or "", home)
    wanted = {f.name: f for f in policy.folders if f.is_redirected} if is_primary else {}
    steps = []
    for name, f in wanted.items():
        assert f.target is not None
        local = local_place(name, home, mount, custom_path=f.local_path, user_dirs=dirs,
                            record=record)
        step = FolderStep(name, StepKind.REDIRECT, local, mount / name, f.target,
                          f.move_contents, f.removal_action)
        if name in record:
            move = plan_target_move(record[name].target, f.target)
            kind = StepKind.KEEP if move.kind is MoveKind.NONE else StepKind.MOVE_TARGET
            step = replace(step, kind=kind, move=None if kind is StepKind.KEEP else move)
        steps.append(step)
    for name, was in sorted(record.items()):
        if name not in wanted:
            kind = (StepKind.REMOVE_BACK if was.removal_action is RemovalAction.REDIRECT_BACK
                    else StepKind.REMOVE_LEAVE)
            steps.append(FolderStep(name, kind, was.local, mount / name, None, False,
                                    was.removal_action))
    return RedirectPlan(is_primary, tuple(steps), _user_dirs_for(steps, home, user_dirs_text),
                        home, policy.subject.short_host or "localhost")


def _user_dirs_for(steps: list[FolderStep] | tuple[FolderStep, ...], home: Path,
                   existing: str | None) -> str:
    points = {XDG_KEYS[s.name]: (s.local if s.kind in (StepKind.REMOVE_LEAVE, StepKind.REMOVE_BACK)
                                 else s.mounted)
              for s in steps if s.name in XDG_KEYS}
    return render_user_dirs(existing, home, points)


# -- moving content -----------------------------------------------------------------------------


@dataclass
class MoveReport:
    """What a move or copy did so far (also attached to a failure)."""

    files: int = 0
    bytes: int = 0
    identical: int = 0  # already in the destination with the same content: local copy dropped
    renamed: list[str] = field(default_factory=list)  # kept under a conflict name
    skipped: list[str] = field(default_factory=list)  # symlinks and special files, left in place


class MoveError(RedirectError):
    """A move stopped midway. ``report`` says what was done; the rest is still in the source."""

    def __init__(self, message: str, report: MoveReport) -> None:
        super().__init__(message)
        self.report = report


def conflict_name(name: str, host: str, when: float | None = None) -> str:
    """``name (conflict HOST YYYY-MM-DD HHMMSS).ext``, the naming of ``sync/conflicts.py``."""
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    stamp = time.strftime("%Y-%m-%d %H%M%S", time.localtime(when))
    return f"{stem} (conflict {host.replace('/', '_')} {stamp})" + (f".{ext}" if ext else "")


def file_hash(path: Path) -> bytes:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.digest()


def copy_verified(src: Path, dst: Path) -> int:
    """Copy one file to a new name ``dst`` (never overwrites), fsync it, read it back and
    compare hashes; keep the write time. On any failure ``dst`` is removed and OSError or
    RedirectError raised; ``src`` is never touched. Returns the size."""
    h = xxhash.xxh3_128()
    size = 0
    try:
        with open(src, "rb") as fin, open(dst, "xb") as fout:
            while chunk := fin.read(_CHUNK):
                h.update(chunk)
                fout.write(chunk)
                size += len(chunk)
            fout.flush()
            os.fsync(fout.fileno())
            st = os.fstat(fin.fileno())
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        if file_hash(dst) != h.digest():
            raise RedirectError(f"{dst}: the copy reads back different from {src}; "
                                f"the original is kept")
    except FileExistsError:
        raise
    except BaseException:
        try:
            dst.unlink()
        except OSError:
            pass
        raise
    return size


def _free_name(directory: Path, name: str, host: str) -> Path:
    candidate = directory / conflict_name(name, host)
    n = 2
    while os.path.lexists(candidate):
        candidate = directory / f"{conflict_name(name, host)} {n}"
        n += 1
    return candidate


def transfer_tree(src: Path, dst: Path, *, delete_source: bool, host: str,
                  report: MoveReport | None = None, prefix: str = "") -> MoveReport:
    """Copy everything under ``src`` into ``dst`` with ``copy_verified``; with
    ``delete_source``, each local file goes once its copy is verified (a move).

    A name taken in ``dst`` by different content keeps both: the incoming file gets a conflict
    name. Identical content is not copied again. Stops at the first error with MoveError;
    everything not yet verified is still in ``src``. ``report`` and ``prefix`` (the relative
    path shown in the report) are for the recursion.
    """
    report = report if report is not None else MoveReport()
    dst.mkdir(exist_ok=True)
    with os.scandir(src) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        rel = f"{prefix}{e.name}"
        s, d = Path(e.path), dst / e.name
        try:
            if e.is_dir(follow_symlinks=False):
                if os.path.lexists(d) and not d.is_dir():
                    d = _free_name(dst, e.name, host)
                    report.renamed.append(rel)
                transfer_tree(s, d, delete_source=delete_source, host=host, report=report,
                              prefix=rel + "/")
                if delete_source:
                    try:
                        s.rmdir()
                    except OSError as exc:
                        if exc.errno != errno.ENOTEMPTY:
                            raise
                continue
            if not e.is_file(follow_symlinks=False):
                report.skipped.append(rel)
                continue
            if os.path.lexists(d):
                if d.is_file() and file_hash(d) == file_hash(s):
                    report.identical += 1
                    if delete_source:
                        s.unlink()
                    continue
                d = _free_name(dst, e.name, host)
                report.renamed.append(rel)
            report.bytes += copy_verified(s, d)
            report.files += 1
            if delete_source:
                s.unlink()
        except MoveError:
            raise
        except (OSError, RedirectError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise MoveError(f"{s} → {d}: {reason}; {report.files} file(s) were done before "
                            f"this one; nothing unverified was deleted", report) from exc
    return report


def move_in(src: Path, dst: Path, *, host: str) -> MoveReport:
    """Move a local folder's content into ``dst`` (the mounted folder): copy, verify, delete."""
    return transfer_tree(src, dst, delete_source=True, host=host)


def same_filesystem(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def move_in_by_rename(src: Path, dst: Path, *, host: str) -> MoveReport | None:
    """The fast path where ``src`` and ``dst`` share a filesystem: rename each top-level entry
    (content is not copied, inode numbers are kept); an entry whose name is taken in ``dst``
    goes through ``transfer_tree``. Returns None, doing nothing, across filesystems.

    In the daemon the rename target is the cache's content store, which is the cache layer's
    business; this is the same idea on plain paths. Not atomic against another process
    creating the same name in ``dst`` between the check and the rename.
    """
    if not same_filesystem(src, dst):
        return None
    report = MoveReport()
    for entry in sorted(os.listdir(src)):
        s, d = src / entry, dst / entry
        if os.path.lexists(d):
            if s.is_dir() and not s.is_symlink():
                transfer_tree(s, d, delete_source=True, host=host, report=report,
                              prefix=entry + "/")
                s.rmdir()
                continue
            d = _free_name(dst, entry, host)
            report.renamed.append(entry)
        os.rename(s, d)
        report.files += 1
    return report


# -- carrying out a plan -------------------------------------------------------------------------


@dataclass(frozen=True)
class StepResult:
    step: FolderStep
    done: bool
    message: str = ""
    report: MoveReport | None = None


def _redirect(step: FolderStep, host: str) -> MoveReport | None:
    if not step.mounted.is_dir():
        raise RedirectError(f"{step.mounted} is not there; is the cscd mount running?")
    local = step.local
    if local.is_symlink():
        if local.resolve() == step.mounted.resolve():
            return None
        raise RedirectError(f"{local} is a symlink to {os.readlink(local)}, not a folder; "
                            f"move it away to let cscd redirect it")
    report = None
    if local.is_dir():
        if step.move_contents:
            # Always copy + verify here: the mount is another filesystem. The rename fast
            # path (``move_in_by_rename``) needs the cache's content store, not the mount.
            report = move_in(local, step.mounted, host=host)
        if any(local.iterdir()):
            return report  # content left behind (not moved, or skipped): keep the folder
        local.rmdir()
    elif os.path.lexists(local):
        raise RedirectError(f"{local} is a file, not a folder; move it away first")
    local.parent.mkdir(parents=True, exist_ok=True)
    local.symlink_to(step.mounted)
    return report


def _unlink_our_link(step: FolderStep) -> None:
    if step.local.is_symlink() and step.local.resolve() == step.mounted.resolve():
        step.local.unlink()


def _remove_leave(step: FolderStep) -> None:
    _unlink_our_link(step)
    step.local.mkdir(parents=True, exist_ok=True)


def _remove_back(step: FolderStep, host: str) -> MoveReport:
    """Copy the content home (verified) into a staging folder, then swap it in. The server
    copy stays. A failure removes the staging copy and leaves the redirection in place."""
    if not step.mounted.is_dir():
        raise RedirectError(f"{step.mounted} is not there; the content cannot be copied home "
                            f"without the cscd mount")
    local = step.local
    if local.is_dir() and not local.is_symlink() and any(local.iterdir()):
        return transfer_tree(step.mounted, local, delete_source=False, host=host)
    staging = local.with_name(f".{local.name}.cscd-back")
    if staging.exists():
        _rmtree(staging)
    try:
        report = transfer_tree(step.mounted, staging, delete_source=False, host=host)
    except BaseException:
        _rmtree(staging)
        raise
    _unlink_our_link(step)
    if local.is_dir() and not local.is_symlink():
        local.rmdir()
    os.rename(staging, local)
    return report


def _rmtree(path: Path) -> None:
    for root, dirs, files in os.walk(path, topdown=False):
        for n in files:
            os.unlink(os.path.join(root, n))
        for n in dirs:
            p = os.path.join(root, n)
            if os.path.islink(p):
                os.unlink(p)
            else:
                os.rmdir(p)
    if path.exists():
        path.rmdir()


def apply_plan(plan: RedirectPlan, *, record_path: Path | None = None,
               user_dirs_path: Path | None = None) -> tuple[StepResult, ...]:
    """Carry out ``plan`` step by step, then write user-dirs.dirs and the record for the steps
    that succeeded. A failed step is reported (``done=False``, with the reason) and changes
    neither file for its folder; the next logon plans it again.

    ``MOVE_TARGET`` moves no content here (that needs the upstreams: ``move.move_target``, run
    by the daemon before mounting): a step with ``moved`` set is recorded with its new target,
    one without keeps its old target recorded and the result gives ``note`` as the reason.
    """
    home = plan.home
    record_path = record_path or home / RECORD
    user_dirs_path = user_dirs_path or home / USER_DIRS
    record = load_record(record_path)
    results, done_steps = [], []
    for step in plan.steps:
        try:
            report = None
            if step.kind is StepKind.REDIRECT:
                report = _redirect(step, plan.host)
            elif step.kind is StepKind.KEEP:
                _redirect(replace(step, move_contents=False), plan.host)
            elif step.kind is StepKind.MOVE_TARGET:
                assert step.move is not None
                if not step.moved:
                    results.append(StepResult(step, False, step.note or f"target change not carried "
                                              f"out ({step.move.kind.value}: {step.move.reason})"))
                    continue
                _redirect(replace(step, move_contents=False), plan.host)
            elif step.kind is StepKind.REMOVE_LEAVE:
                _remove_leave(step)
            else:
                report = _remove_back(step, plan.host)
        except (OSError, RedirectError) as exc:
            report = exc.report if isinstance(exc, MoveError) else None
            results.append(StepResult(step, False, str(exc), report))
            continue
        results.append(StepResult(step, True, "", report))
        done_steps.append(step)
        if step.target is not None:
            record[step.name] = Applied(step.local, step.target, step.removal_action)
        else:
            record.pop(step.name, None)
    try:
        existing = user_dirs_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        existing = None
    if any(s.name in XDG_KEYS for s in done_steps):
        _write_atomic(user_dirs_path, _user_dirs_for(done_steps, home, existing))
    save_record(record_path, record)
    return tuple(results)

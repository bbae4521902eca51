r"""Folder redirection on real directories: user-dirs.dirs, plans, move-in with verification,
nothing lost when the target fills up (a real 1 MiB tmpfs), both removal actions, primary
computers, the rename fast path and the target-move plans.

The "mount" is a plain directory (or the tmpfs) standing in for the cscd mount: this module
only does file operations through whatever path it is given.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from cscd.policy.machine import load_policy
from cscd.policy.model import Policy, RemovalAction, Subject
from cscd.redirect import (
    RECORD,
    USER_DIRS,
    Applied,
    MoveKind,
    RedirectError,
    StepKind,
    apply_plan,
    conflict_name,
    copy_verified,
    load_record,
    move_in_by_rename,
    parse_user_dirs,
    plan_redirection,
    plan_target_move,
    render_user_dirs,
    save_record,
)
from cscd.types import UncTarget
from tests.helpers.policy_env import fill, tree

KiB = 1 << 10
ALICE = Subject("alice", ("staff",), "ws1", "0123456789abcdef0123456789abcdef", "EX", "")


def policy(tmp_path: Path, text: str, subject: Subject = ALICE) -> Policy:
    root = tmp_path / "etc"
    root.mkdir(exist_ok=True)
    (root / "policy.yaml").write_text(textwrap.dedent(text))
    return load_policy(subject, root)


DOCS = r"""
- folders:
    Documents:
      target: '\\fs\home\%USERNAME%\Documents'
      removal_action: {action}
"""
NOTHING = "- offline_files: {always_offline: false}\n"


class Home:
    """A home directory and a stand-in mount with one folder per redirected name."""

    def __init__(self, tmp_path: Path, mount: Path | None = None) -> None:
        self.tmp = tmp_path
        self.home = tmp_path / "home"
        self.home.mkdir(exist_ok=True)
        self.mount = mount or tmp_path / "mnt"
        (self.mount / "Documents").mkdir(parents=True, exist_ok=True)

    def plan(self, pol: Policy):  # noqa: ANN201 - RedirectPlan
        try:
            text = (self.home / USER_DIRS).read_text()
        except FileNotFoundError:
            text = None
        return plan_redirection(pol, self.home, self.mount, record=self.record(),
                                user_dirs_text=text)

    def apply(self, pol: Policy):  # noqa: ANN201 - tuple[StepResult, ...]
        return apply_plan(self.plan(pol))

    def record(self) -> dict[str, Applied]:
        return load_record(self.home / RECORD)

    def user_dirs(self) -> dict[str, Path]:
        return parse_user_dirs((self.home / USER_DIRS).read_text(), self.home)




@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs: the target that fills up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


# -- user-dirs.dirs -------------------------------------------------------------------------------

EXISTING = """\
# This file is written by xdg-user-dirs-update
# If you want to change or add directories, just edit the line you're
XDG_DESKTOP_DIR="$HOME/Desktop"
XDG_DOCUMENTS_DIR="$HOME/Dokumente"
XDG_PROJECTS_DIR="$HOME/src"
XDG_MUSIC_DIR="/srv/music"
this line is not valid but is kept
"""


def test_user_dirs_round_trip_keeps_unknown_lines(tmp_path: Path) -> None:
    home = tmp_path
    out = render_user_dirs(EXISTING, home, {"XDG_DOCUMENTS_DIR": Path("/run/cscd/mnt/Documents"),
                                            "XDG_PICTURES_DIR": home / "mnt" / "Pictures"})
    lines = out.splitlines()
    assert lines[:3] == EXISTING.splitlines()[:3]
    assert lines[3] == 'XDG_DOCUMENTS_DIR="/run/cscd/mnt/Documents"'
    assert lines[4:7] == EXISTING.splitlines()[4:7]
    assert lines[7] == 'XDG_PICTURES_DIR="$HOME/mnt/Pictures"'
    parsed = parse_user_dirs(out, home)
    assert parsed["XDG_PROJECTS_DIR"] == home / "src"
    assert parsed["XDG_MUSIC_DIR"] == Path("/srv/music")
    assert render_user_dirs(out, home, {}) == out


def test_user_dirs_quotes_awkward_names(tmp_path: Path) -> None:
    odd = tmp_path / 'my "docs" \\ here'
    out = render_user_dirs(None, tmp_path, {"XDG_DOCUMENTS_DIR": odd})
    assert out.startswith("#")
    assert parse_user_dirs(out, tmp_path) == {"XDG_DOCUMENTS_DIR": odd}


# -- plans ----------------------------------------------------------------------------------------


def test_plan_redirects_into_the_mount_from_the_users_xdg_folder(tmp_path: Path) -> None:
    h = Home(tmp_path)
    (h.home / USER_DIRS).parent.mkdir(parents=True)
    (h.home / USER_DIRS).write_text(EXISTING)
    plan = h.plan(policy(tmp_path, DOCS.format(action="leave")))
    (step,) = plan.steps
    assert step.kind is StepKind.REDIRECT and step.local == h.home / "Dokumente"
    assert step.mounted == h.mount / "Documents"
    assert step.target == UncTarget("fs", "home", ("alice", "Documents"))
    assert parse_user_dirs(plan.user_dirs, h.home)["XDG_DOCUMENTS_DIR"] == h.mount / "Documents"
    assert "XDG_PROJECTS_DIR" in plan.user_dirs


# -- applying a redirection -----------------------------------------------------------------------


def test_redirect_moves_everything_in_and_verifies(tmp_path: Path) -> None:
    h = Home(tmp_path)
    local = h.home / "Documents"
    want = fill(local, {"a.txt": b"alpha", "sub/deep/b.bin": os.urandom(300 * KiB),
                        "empty": b"", "sub/c.txt": b"gamma"})
    os.utime(local / "a.txt", ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    (result,) = h.apply(policy(tmp_path, DOCS.format(action="leave")))
    assert result.done, result.message
    assert result.report.files == 4 and result.report.bytes == 300 * KiB + 10
    assert tree(h.mount / "Documents") == want
    assert (h.mount / "Documents" / "a.txt").stat().st_mtime_ns == 1_600_000_000_123_456_789
    assert local.is_symlink() and local.resolve() == (h.mount / "Documents").resolve()
    assert h.user_dirs()["XDG_DOCUMENTS_DIR"] == h.mount / "Documents"
    assert h.record()["Documents"] == Applied(
        local, UncTarget("fs", "home", ("alice", "Documents")), RemovalAction.LEAVE)
    # A second logon changes nothing.
    (again,) = h.apply(policy(tmp_path, DOCS.format(action="leave")))
    assert again.done and again.step.kind is StepKind.KEEP and tree(h.mount / "Documents") == want


def test_names_taken_on_the_server_keep_both(tmp_path: Path) -> None:
    h = Home(tmp_path)
    fill(h.mount / "Documents", {"same.txt": b"same", "clash.txt": b"server version"})
    fill(h.home / "Documents", {"same.txt": b"same", "clash.txt": b"local version"})
    (result,) = h.apply(policy(tmp_path, DOCS.format(action="leave")))
    assert result.done and result.report.identical == 1 and result.report.renamed == ["clash.txt"]
    names = sorted(os.listdir(h.mount / "Documents"))
    assert names[0].startswith("clash (conflict ws1 ") and names[0].endswith(").txt")
    assert (h.mount / "Documents" / "clash.txt").read_bytes() == b"server version"
    assert (h.mount / "Documents" / names[0]).read_bytes() == b"local version"
    assert (h.mount / "Documents" / "same.txt").read_bytes() == b"same"


def test_move_contents_off_leaves_local_files(tmp_path: Path) -> None:
    h = Home(tmp_path)
    fill(h.home / "Documents", {"keep.txt": b"stays"})
    pol = policy(tmp_path, DOCS.format(action="leave") + "      move_contents: false\n")
    (result,) = h.apply(pol)
    assert result.done and (h.home / "Documents" / "keep.txt").read_bytes() == b"stays"
    assert os.listdir(h.mount / "Documents") == []
    assert h.user_dirs()["XDG_DOCUMENTS_DIR"] == h.mount / "Documents"


def test_custom_folder_is_redirected_from_its_path(tmp_path: Path) -> None:
    h = Home(tmp_path)
    (h.mount / "Projects").mkdir()
    want = fill(h.home / "work" / "Projects", {"x.c": b"int main;"})
    pol = policy(tmp_path, "- folders:\n    Projects:\n      path: ~/work/Projects\n"
                           "      target: '\\\\fs\\proj\\%USERNAME%'\n")
    (result,) = h.apply(pol)
    assert result.done and tree(h.mount / "Projects") == want
    assert (h.home / "work" / "Projects").is_symlink()
    assert not (h.home / USER_DIRS).exists()  # no XDG entry for a custom folder


def test_a_foreign_symlink_is_not_touched(tmp_path: Path) -> None:
    h = Home(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (h.home / "Documents").symlink_to(tmp_path / "elsewhere")
    (result,) = h.apply(policy(tmp_path, DOCS.format(action="leave")))
    assert not result.done and "is a symlink to" in result.message
    assert os.readlink(h.home / "Documents") == str(tmp_path / "elsewhere")
    assert h.record() == {} and not (h.home / USER_DIRS).exists()


def test_nothing_is_lost_when_the_target_fills_up(tmp_path: Path, small_fs: Path) -> None:
    h = Home(tmp_path, mount=small_fs)
    local = h.home / "Documents"
    want = fill(local, {"a.bin": os.urandom(300 * KiB), "b.bin": os.urandom(300 * KiB),
                        "c.bin": os.urandom(600 * KiB), "d.txt": b"small"})
    pol = policy(tmp_path, DOCS.format(action="leave"))
    (result,) = h.apply(pol)
    assert not result.done and "No space left on device" in result.message
    moved, left = tree(small_fs / "Documents"), tree(local)
    assert set(moved) == {"a.bin", "b.bin"} and set(left) == {"c.bin", "d.txt"}
    assert {**moved, **left} == want  # every file complete, in exactly one place
    assert not local.is_symlink() and h.record() == {} and not (h.home / USER_DIRS).exists()

    # With room again the next logon finishes the job.
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_fs)], check=True)
    (result,) = h.apply(pol)
    assert result.done, result.message
    assert tree(small_fs / "Documents") == want and local.is_symlink()


def test_copy_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"new")
    (tmp_path / "dst").write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        copy_verified(tmp_path / "src", tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == b"precious"


def test_rename_fast_path_keeps_inodes_on_one_filesystem(tmp_path: Path, small_fs: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    fill(src, {"a.txt": b"a", "d/b.txt": b"b"})
    fill(dst, {"d/c.txt": b"c"})
    inode = (src / "a.txt").stat().st_ino
    report = move_in_by_rename(src, dst, host="ws1")
    assert report is not None and (dst / "a.txt").stat().st_ino == inode
    assert tree(dst) == {"a.txt": hashlib.sha256(b"a").hexdigest(),
                         "d/b.txt": hashlib.sha256(b"b").hexdigest(),
                         "d/c.txt": hashlib.sha256(b"c").hexdigest()}
    assert os.listdir(src) == []
    fill(src, {"x": b"x"})
    assert move_in_by_rename(src, small_fs, host="ws1") is None  # another filesystem
    assert (src / "x").exists()


# -- removal ------------------------------------------------------------------------------------


def redirected(tmp_path: Path, action: str) -> tuple[Home, dict[str, str]]:
    h = Home(tmp_path)
    want = fill(h.home / "Documents", {"a.txt": b"alpha", "sub/b.txt": b"beta"})
    (result,) = h.apply(policy(tmp_path, DOCS.format(action=action)))
    assert result.done
    return h, want


def test_removal_leave_gives_an_empty_local_folder(tmp_path: Path) -> None:
    h, want = redirected(tmp_path, "leave")
    (result,) = h.apply(policy(tmp_path, NOTHING))
    assert result.done and result.step.kind is StepKind.REMOVE_LEAVE
    local = h.home / "Documents"
    assert local.is_dir() and not local.is_symlink() and os.listdir(local) == []
    assert tree(h.mount / "Documents") == want  # the data stays on the server
    assert h.user_dirs()["XDG_DOCUMENTS_DIR"] == local and h.record() == {}


def test_removal_redirect_back_copies_home_first(tmp_path: Path) -> None:
    h, want = redirected(tmp_path, "redirect_back")
    (result,) = h.apply(policy(tmp_path, NOTHING))
    assert result.done and result.step.kind is StepKind.REMOVE_BACK
    local = h.home / "Documents"
    assert not local.is_symlink() and tree(local) == want
    assert tree(h.mount / "Documents") == want
    assert h.user_dirs()["XDG_DOCUMENTS_DIR"] == local and h.record() == {}
    assert not any(p.name.endswith(".cscd-back") for p in h.home.iterdir())


def test_the_removal_action_recorded_at_redirection_is_used(tmp_path: Path) -> None:
    """The admin removes the whole folder policy: the action in force when it applied counts."""
    h, want = redirected(tmp_path, "redirect_back")
    assert h.record()["Documents"].removal_action is RemovalAction.REDIRECT_BACK
    (step,) = h.plan(policy(tmp_path, NOTHING)).steps
    assert step.kind is StepKind.REMOVE_BACK


def test_redirect_back_that_runs_out_of_space_keeps_the_redirection(tmp_path: Path,
                                                                     small_fs: Path) -> None:
    h = Home(tmp_path)
    fill(h.mount / "Documents", {"big.bin": os.urandom(2 << 20)})
    local = small_fs / "Documents"
    save_record(h.home / RECORD, {"Documents": Applied(
        local, UncTarget("fs", "home", ("alice",)), RemovalAction.REDIRECT_BACK)})
    local.symlink_to(h.mount / "Documents")
    (result,) = h.apply(policy(tmp_path, NOTHING))
    assert not result.done and "No space left" in result.message
    assert local.is_symlink() and "Documents" in h.record()
    assert os.listdir(small_fs) == ["Documents"]  # the staging copy was cleaned up
    assert (h.mount / "Documents" / "big.bin").stat().st_size == 2 << 20


# -- primary computers -----------------------------------------------------------------------------


def test_non_primary_host_redirects_nothing(tmp_path: Path) -> None:
    h = Home(tmp_path)
    want = fill(h.home / "Documents", {"a.txt": b"alpha"})
    pol = policy(tmp_path, DOCS.format(action="leave") + "  primary_computers: [ws2]\n")
    plan = h.plan(pol)
    assert not plan.is_primary and plan.steps == ()
    assert apply_plan(plan) == ()
    assert tree(h.home / "Documents") == want and os.listdir(h.mount / "Documents") == []
    assert not (h.home / USER_DIRS).exists()


def test_non_primary_host_removes_earlier_redirections(tmp_path: Path) -> None:
    h, want = redirected(tmp_path, "redirect_back")
    pol = policy(tmp_path, DOCS.format(action="redirect_back") + "  primary_computers: [ws2]\n")
    (result,) = h.apply(pol)
    assert result.done and result.step.kind is StepKind.REMOVE_BACK
    assert tree(h.home / "Documents") == want and h.record() == {}


# -- target changes --------------------------------------------------------------------------------


@pytest.mark.parametrize(("old", "new", "kind"), [
    (r"\\fs\home\alice\Docs", r"\\fs\home\alice\Docs", MoveKind.NONE),
    (r"\\fs\home\alice\Docs", r"\\FS\Home\alice\docs", MoveKind.SERVER_RENAME),
    (r"\\fs\home\alice\Docs", r"\\fs\home\users\alice\Documents", MoveKind.SERVER_RENAME),
    (r"\\fs\home\alice\Docs", r"\\fs\home\alice\Docs\inner", MoveKind.SERVER_COPY),
    (r"\\fs\home\alice\Docs", r"\\fs\home\alice", MoveKind.SERVER_COPY),
    (r"\\fs\home\alice\Docs", r"\\fs\archive\alice\Docs", MoveKind.SERVER_COPY),
    (r"\\fs\home\alice\Docs", r"\\fs2\home\alice\Docs", MoveKind.CLIENT_COPY),
])
def test_target_move_plans(old: str, new: str, kind: MoveKind) -> None:
    from cscd.policy.unc import parse_unc

    move = plan_target_move(parse_unc(old), parse_unc(new))
    assert move.kind is kind and move.reason


def test_changed_target_is_planned_but_not_carried_out_yet(tmp_path: Path) -> None:
    h, want = redirected(tmp_path, "leave")
    pol = policy(tmp_path, "- folders:\n    Documents:\n      target: '\\\\fs\\home2\\alice'\n")
    (result,) = h.apply(pol)
    assert result.step.kind is StepKind.MOVE_TARGET and not result.done
    assert result.step.move.kind is MoveKind.SERVER_COPY and "not carried out" in result.message
    assert h.record()["Documents"].target == UncTarget("fs", "home", ("alice", "Documents"))


def test_a_damaged_record_is_an_error_not_a_guess(tmp_path: Path) -> None:
    h = Home(tmp_path)
    (h.home / RECORD).parent.mkdir(parents=True)
    (h.home / RECORD).write_text("{not json")
    with pytest.raises(RedirectError, match="record of redirected folders is damaged"):
        h.record()


def test_conflict_name_shape() -> None:
    assert conflict_name("report.final.docx", "ws1", 0).startswith("report.final (conflict ws1 ")
    assert conflict_name("report.final.docx", "ws1", 0).endswith(").docx")
    assert conflict_name(".bashrc", "ws1", 0).startswith(".bashrc (conflict ws1 ")

r"""Optimized move: when the policy changes a redirected folder's target, the content moves on
the server and the cache stays — nothing is downloaded again.

Real parts only: the session smbd with its second share ``other`` (a move across shares is a
server-side copy; within one share it is one rename), the daemon in a subprocess behind the
``MountEnv``'s TCP proxy, a policy directory and a home (``penv``). "Nothing downloaded again" is measured twice: the
daemon's ``bytes_downloaded`` counter (``cscd status``) after every file was read through the mount, and the
bytes the proxy carried from the server to this machine over the whole restart (the move's
own connections included), which must stay far below the content's size.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from cscd.redirect.move import MoveKind, TargetMoveError, move_target, plan_target_move
from cscd.types import UncTarget
from cscd.upstream.local import LocalUpstream
from tests.helpers.policy_env import FILES, PolicyEnv, fill, redirect_documents, tree
from tests.helpers.wait import wait_for

CONTENT_BYTES = sum(len(v) for v in FILES.values())


def other_share(env: PolicyEnv) -> tuple[str, Path]:
    """UNC and on-disk place of the user's Documents on the second share."""
    s = env.smbd
    return (f"\\\\{s.host}\\other\\{env.env.user_dir}\\Documents",
            s.extra_share_dir("other") / env.env.user_dir / "Documents")


def retarget(env: PolicyEnv, unc: str) -> None:
    env.write_policy(f"- folders:\n    Documents: {{target: '{unc}', removal_action: leave}}\n")


def downloaded(env: PolicyEnv) -> int:
    """Payload bytes the daemon read from the server (``cscd status``'s per-folder counter)."""
    return sum(f["bytes_downloaded"] for f in env.status()["folders"].values())


def assert_moved_without_download(env: PolicyEnv, want: dict[str, str], new_dir: Path) -> None:
    result = env.wait_redirection()
    step = result["folders"]["Documents"]
    assert step["step"] == "move_target" and step["done"], result
    assert tree(env.mount / "Documents") == want  # every byte read through the mount
    assert downloaded(env) == 0
    assert env.env.proxy.bytes_to_client < CONTENT_BYTES / 10, env.env.proxy.bytes_to_client
    assert tree(new_dir) == want
    assert not env.server_dir().exists()


# ---------------------------------------------------------------- the two server-side moves


def test_same_share_target_change_renames_on_the_server(penv):
    want = redirect_documents(penv, "leave")
    new_unc, new_dir = penv.unc("Moved\\Documents"), penv.server_dir("Moved/Documents")
    ids = {p.name: p.stat().st_ino for p in penv.server_dir().iterdir()}
    retarget(penv, new_unc)
    penv.env.proxy.reset_counters()
    penv.start()
    assert_moved_without_download(penv, want, new_dir)
    assert {p.name: p.stat().st_ino for p in new_dir.iterdir()} == ids  # renamed, not copied
    assert penv.record()["Documents"]["target"] == new_unc
    (penv.mount / "Documents" / "after.txt").write_text("to the new target")
    wait_for(lambda: (new_dir / "after.txt").exists(), 15, "a new file did not reach the new target")
    assert "renamed: one rename on the server" in penv.daemon.log_text()


def test_other_share_target_change_copies_on_the_server(penv):
    want = redirect_documents(penv, "leave")
    new_unc, new_dir = other_share(penv)
    retarget(penv, new_unc)
    penv.env.proxy.reset_counters()
    penv.start()
    assert_moved_without_download(penv, want, new_dir)
    assert penv.record()["Documents"]["target"] == new_unc
    assert f"{len(want)} files, {CONTENT_BYTES} bytes copied on the server" in penv.daemon.log_text()
    # The cache follows the new target: a change on the server shows up, an edit goes there.
    (penv.mount / "Documents" / "report.txt").write_bytes(b"edited after the move\n")
    wait_for(lambda: (new_dir / "report.txt").read_bytes() == b"edited after the move\n", 15,
             "an edit did not reach the new target")


# ---------------------------------------------------------------- failures and pending changes


@pytest.mark.log_allows(r"Documents: not moved from .* tried again at the next start",
                        r"starts offline from its cache")
def test_unreachable_server_keeps_the_old_target_and_moves_at_the_next_start(penv):
    want = redirect_documents(penv, "leave")
    new_unc, new_dir = penv.unc("Moved\\Documents"), penv.server_dir("Moved/Documents")
    old_unc = penv.record()["Documents"]["target"]
    retarget(penv, new_unc)
    penv.env.proxy.stop_listening()
    penv.start()
    result = penv.wait_redirection()
    assert result["folders"]["Documents"]["step"] == "move_target"
    assert not result["folders"]["Documents"]["done"]
    assert tree(penv.mount / "Documents") == want  # served from the cache, nothing lost
    assert penv.record()["Documents"]["target"] == old_unc
    assert tree(penv.server_dir()) == want and not new_dir.exists()
    penv.daemon.stop()

    penv.env.proxy.resume_listening()
    penv.env.proxy.reset_counters()
    penv.start()
    assert_moved_without_download(penv, want, new_dir)
    assert penv.record()["Documents"]["target"] == new_unc


@pytest.mark.log_allows(r"starts offline from its cache")
def test_changes_waiting_to_upload_follow_the_copy(penv):
    want = redirect_documents(penv, "leave")
    penv.env.proxy.stop_listening()  # offline edits: they wait in the dirty set
    penv.start()
    assert penv.status()["folders"]["Documents"]["mode"] == "offline"
    (penv.mount / "Documents" / "report.txt").write_bytes(b"edited offline\n")
    (penv.mount / "Documents" / "new.txt").write_bytes(b"created offline\n")
    os.unlink(penv.mount / "Documents" / "empty.txt")
    assert penv.status()["folders"]["Documents"]["pending_changes"] >= 3
    penv.daemon.stop()

    new_unc, new_dir = other_share(penv)
    retarget(penv, new_unc)
    penv.env.proxy.resume_listening()
    penv.start()
    expected = dict(want)
    expected.update({n: hashlib.sha256(b).hexdigest() for n, b in
                     {"report.txt": b"edited offline\n", "new.txt": b"created offline\n"}.items()})
    del expected["empty.txt"]
    wait_for(lambda: tree(new_dir) == expected, 30, "the waiting changes did not reach the new target")
    assert penv.status()["folders"]["Documents"]["pending_changes"] == 0
    assert not penv.server_dir().exists()
    assert downloaded(penv) == 0
    assert not [p for p in new_dir.iterdir() if "conflict" in p.name]


# ---------------------------------------------------------------- the mover on plain folders


async def test_a_name_taken_at_the_new_target_stops_the_copy_before_any_delete(tmp_path):
    old_dir, new_dir = tmp_path / "a" / "Documents", tmp_path / "b" / "Documents"
    want = fill(old_dir, {"x.txt": b"old", "sub/y.txt": b"yy"})
    fill(new_dir, {"sub/y.txt": b"something else"})
    move = plan_target_move(UncTarget("fs", "a", ("Documents",)), UncTarget("fs", "b", ("Documents",)))
    assert move.kind is MoveKind.SERVER_COPY
    with pytest.raises(TargetMoveError, match="already exists with other content"):
        await move_target(move, LocalUpstream(old_dir), LocalUpstream(new_dir))
    assert tree(old_dir) == want


async def test_a_copy_stopped_midway_is_picked_up_again(tmp_path):
    old_dir, new_dir = tmp_path / "a" / "Documents", tmp_path / "b" / "Documents"
    want = fill(old_dir, {"x.txt": b"old", "sub/y.txt": b"yy"})
    (new_dir / "sub").mkdir(parents=True)
    os.link(old_dir / "sub" / "y.txt", new_dir / "sub" / "y.txt")  # same size and write time
    move = plan_target_move(UncTarget("fs", "a", ("Documents",)), UncTarget("fs", "b", ("Documents",)))
    result = await move_target(move, LocalUpstream(old_dir), LocalUpstream(new_dir))
    assert result.how == "copied" and tree(new_dir) == want and not old_dir.exists()
    assert set(result.entries) == {b"x.txt", b"sub", b"sub/y.txt"}


async def test_after_the_old_folder_is_gone_the_move_counts_as_done(tmp_path):
    new_dir = tmp_path / "b" / "Documents"
    fill(new_dir, {"x.txt": b"old"})
    move = plan_target_move(UncTarget("fs", "a", ("Documents",)), UncTarget("fs", "a", ("B", "Documents")))
    result = await move_target(move, LocalUpstream(tmp_path / "a" / "Documents"), LocalUpstream(new_dir))
    assert result.how == "already moved" and set(result.entries) == {b"x.txt"}


async def test_another_server_is_not_moved(tmp_path):
    move = plan_target_move(UncTarget("fs1", "a", ("D",)), UncTarget("fs2", "a", ("D",)))
    with pytest.raises(TargetMoveError, match="not supported"):
        await move_target(move, LocalUpstream(tmp_path / "x"), LocalUpstream(tmp_path / "y"))

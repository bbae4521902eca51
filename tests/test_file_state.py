"""Each file's offline state, as scripts and file managers read it (issue 19, part 1).

``user.cscd.state`` and ``user.cscd.pinned`` read with plain getxattr(2) through the real
mount, and ``cscd info`` through the real control socket: a server file never read is a
placeholder, one read in part is partial, read whole it is cached, pinned it says so; a file
written while the server is away is dirty with its content waiting; a conflict's both sides
say conflict; an excluded name (``*.tmp``) stays here only. The attributes are not listed
(``cp -a`` and ``rsync -X`` would copy them) and cannot be set.
"""

from __future__ import annotations

import errno
import os

import pytest

from tests.helpers.ops import cli_json, folder_mode, make_conflict
from tests.helpers.wait import eventually

MiB = 1 << 20


def cli(env, *args):
    return cli_json(env.daemon, *args)


def mode(env):
    return folder_mode(env)


def state(path) -> str:
    return os.getxattr(path, "user.cscd.state").decode()


def test_placeholder_partial_cached_pinned_follow_the_bytes_that_are_here(make_env):
    env = make_env()
    (env.server / "big.bin").write_bytes(os.urandom(4 * MiB))
    (env.server / "sub").mkdir()
    (env.server / "sub" / "small.txt").write_bytes(b"hello")
    big = env.docs / "big.bin"
    assert state(big) == "placeholder"
    assert os.getxattr(big, "user.cscd.pinned") == b"0"
    with open(big, "rb", buffering=0) as f:
        f.seek(2 * MiB)
        assert len(f.read(1)) == 1
    assert state(big) == "partial"
    info = cli(env, "info", str(big))
    assert info["state"] == "partial" and 0 < info["bytes_cached"] < 4 * MiB and info["size"] == 4 * MiB
    assert info["on_server"] and info["server_path"].endswith("\\Documents\\big.bin")
    shown = env.daemon.run_cli("info", str(big), timeout_s=60)
    assert shown.returncode == 0 and shown.stdout.startswith(f"{big}: partial\n"), shown
    assert "of 4,194,304 bytes here" in shown.stdout, shown.stdout
    big.read_bytes()
    assert state(big) == "cached"
    assert state(env.docs / "sub") == "placeholder"  # a folder never listed here
    os.listdir(env.docs / "sub")
    assert state(env.docs / "sub") == "cached"
    shown = env.daemon.run_cli("ls", str(env.docs), timeout_s=60)
    assert shown.returncode == 0, shown
    assert [line.split() for line in shown.stdout.splitlines()] == [
        ["cached", "4.0", "MiB", "big.bin"], ["cached", "sub/"]], shown.stdout
    cli(env, "pin", str(env.docs / "sub"))
    assert state(env.docs / "sub" / "small.txt") == "pinned"
    assert os.getxattr(env.docs / "sub" / "small.txt", "user.cscd.pinned") == b"1"


@pytest.mark.log_allows(r"folder Documents is now offline: ")
def test_a_change_made_offline_is_dirty_until_it_is_on_the_server(make_env):
    env = make_env()
    assert os.listdir(env.docs) == []  # listed while online: then it works offline
    env.proxy.stop_listening()
    env.proxy.reset()
    eventually(lambda: mode(env) == "offline", 10, "offline not noticed")
    new = env.docs / "new.txt"
    new.write_text("written away from the office")
    assert state(new) == "dirty"
    info = cli(env, "info", str(new))
    assert info["pending"] == ["content", "name"] and not info["on_server"]
    env.proxy.resume_listening()
    eventually(lambda: state(new) == "cached", 15, "the upload never made the file cached")
    assert (env.server / "new.txt").read_text() == "written away from the office"
    assert cli(env, "info", str(new))["pending"] == []


@pytest.mark.log_allows(r"folder Documents is now offline: ",
                        r"conflict: b'doc\.txt' changed on the server and here; the local version is kept",
                        r"\[4000\] conflict in Documents: 1 file changed on both sides")
def test_both_sides_of_a_conflict_say_so_until_it_is_resolved(make_env):
    env = make_env()
    copy = make_conflict(env)
    assert state(env.docs / copy) == "conflict"
    assert state(env.docs / "doc.txt") == "conflict"
    assert cli(env, "info", str(env.docs / copy))["conflict_with"] == "doc.txt"
    assert cli(env, "info", str(env.docs / "doc.txt"))["conflict_with"] == copy
    cli(env, "conflicts", "resolve", str(env.docs / copy), "--keep", "both")
    eventually(lambda: state(env.docs / copy) == "cached", 15, "the resolved copy never settled")
    assert state(env.docs / "doc.txt") in ("cached", "placeholder")


def test_an_excluded_name_stays_here_and_the_state_attributes_are_read_only(make_env):
    env = make_env()
    scratch = env.docs / "draft.tmp"
    scratch.write_text("never uploaded")
    eventually(lambda: state(scratch) == "excluded", 10, "an excluded file not shown as such")
    assert not (env.server / "draft.tmp").exists()
    kept = env.docs / "kept.txt"
    kept.write_text("x")
    os.setxattr(kept, "user.colour", b"blue")
    assert os.listxattr(kept) == ["user.colour"]  # the state is not listed, the user's own is
    with pytest.raises(OSError) as exc:
        os.setxattr(kept, "user.cscd.state", b"cached")
    assert exc.value.errno in (errno.EPERM, errno.ENOTSUP, errno.EACCES, errno.EINVAL)
    with pytest.raises(OSError):
        os.getxattr(kept, "user.cscd.nonsense")
    gone = env.docs / "no such folder"
    missing = env.daemon.run_cli("ls", str(gone), timeout_s=60)
    assert missing.returncode == 2 and missing.stderr == f"cscd: {gone}: No such file or directory\n", missing

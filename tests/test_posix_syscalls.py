"""Syscall-level POSIX semantics on the real mount (issue 15, item 5: our own pjdfstest-like
checks, since pjdfstest is not packaged). Each answer is compared with what a local file
system gives for the same call; the differences cscd keeps on purpose (hard links, device
files) are asserted too, so a change in them is seen. Real smbd, real mount."""

from __future__ import annotations

import errno
import os
import stat
import subprocess

import pytest

from tests.helpers import churn
from tests.helpers.wait import eventually


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _errno_of(fn, *args) -> int:
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno
    return 0


def test_open_flags(mount_env, umask_022):
    env = mount_env()
    p = env.docs / "f"
    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    os.write(fd, b"first")
    os.close(fd)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o640
    assert _errno_of(os.open, p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644) == errno.EEXIST
    fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o600)  # exists: the mode argument is ignored
    os.close(fd)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o640 and p.read_bytes() == b"first"
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert os.stat(p).st_size == 0
    eventually(lambda: (env.server / "f").stat().st_size == 0, 30, "O_TRUNC never reached the server")
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"ab")
    os.write(fd, b"cd")
    os.close(fd)
    assert p.read_bytes() == b"abcd"
    assert _errno_of(os.open, env.docs / "missing", os.O_RDONLY) == errno.ENOENT
    assert _errno_of(os.open, env.docs, os.O_WRONLY) == errno.EISDIR


def test_chmod_and_fchmod(mount_env):
    env = mount_env()
    p = env.docs / "f"
    p.write_text("x")
    os.chmod(p, 0o700)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o700
    fd = os.open(p, os.O_RDONLY)
    os.fchmod(fd, 0o604)
    os.close(fd)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o604
    os.chmod(p, 0o4755)  # set-uid survives here; only the permission bits are kept
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o4755


def test_rename_semantics(mount_env):
    env = mount_env()
    d = env.docs
    (d / "a").write_text("A")
    (d / "b").write_text("B")
    os.rename(d / "a", d / "b")  # over an existing file: replaced in one step
    assert (d / "b").read_text() == "A" and not (d / "a").exists()
    (d / "dir").mkdir()
    (d / "empty").mkdir()
    assert _errno_of(os.rename, d / "b", d / "dir") == errno.EISDIR
    assert _errno_of(os.rename, d / "dir", d / "b") == errno.ENOTDIR
    (d / "dir" / "inner").write_text("i")
    os.rename(d / "dir", d / "empty")  # a directory over an empty one
    assert (d / "empty" / "inner").read_text() == "i"
    (d / "full").mkdir()
    (d / "full" / "x").write_text("x")
    assert _errno_of(os.rename, d / "empty", d / "full") == errno.ENOTEMPTY
    assert _errno_of(os.rename, d / "empty", d / "empty" / "sub") == errno.EINVAL
    eventually(lambda: (env.server / "empty" / "inner").read_text() == "i"
               and (env.server / "b").read_text() == "A" and not (env.server / "dir").exists(), 30,
               "the renames never reached the server")


def test_unlink_and_rmdir(mount_env):
    env = mount_env()
    d = env.docs
    p = d / "open-then-unlinked"
    p.write_text("still readable")
    eventually(lambda: (env.server / p.name).exists(), 30, "not uploaded")
    fd = os.open(p, os.O_RDONLY)
    os.unlink(p)
    assert not p.exists()
    assert os.pread(fd, 100, 0) == b"still readable"  # an open file outlives its name
    os.close(fd)
    eventually(lambda: not (env.server / p.name).exists(), 30, "the unlink never reached the server")
    (d / "sub").mkdir()
    (d / "sub" / "f").write_text("x")
    assert _errno_of(os.rmdir, d / "sub") == errno.ENOTEMPTY
    assert _errno_of(os.mkdir, d / "sub") == errno.EEXIST
    assert _errno_of(os.unlink, d / "sub") == errno.EISDIR
    assert _errno_of(os.rmdir, d / "sub" / "f") == errno.ENOTDIR


def test_what_cscd_refuses_on_purpose(mount_env):
    """Hard links and device files have no place in the cache's one-name-per-node model nor
    on an SMB share: EPERM, as documented in the README."""
    env = mount_env()
    (env.docs / "f").write_text("x")
    assert _errno_of(os.link, env.docs / "f", env.docs / "hard") == errno.EPERM
    assert _errno_of(os.mkfifo, env.docs / "fifo") == errno.EPERM
    assert not (env.docs / "hard").exists()


def test_git_keeps_exec_bits_links_and_a_colon_name_across_a_fresh_cache(mount_env, tmp_path):
    """git compares the exec bit and link targets with its index: ``git status`` is clean
    after the clone, and again on a cold cache filled from the server alone."""
    env = mount_env()
    src = tmp_path / "src"
    src.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    churn.git(src, "init", "-q", home=home)
    (src / "build.sh").write_text("#!/bin/sh\necho built\n")
    os.chmod(src / "build.sh", 0o755)
    (src / "notes 09:30.txt").write_text("morning")
    os.symlink("build.sh", src / "make")
    churn.git(src, "add", "-A", home=home)
    churn.git(src, "commit", "-qm", "posix", home=home)
    repo = env.docs / "repo"
    churn.git(tmp_path, "clone", "-q", str(src), str(repo), home=home)

    def status() -> str:
        return churn.git(repo, "status", "--porcelain", home=home)

    assert status() == ""
    assert os.access(repo / "build.sh", os.X_OK) and os.readlink(repo / "make") == "build.sh"
    server = env.server / "repo"
    eventually(lambda: os.getxattr(server / "build.sh", "user.cscd.mode") == b"0755"
               and (server / "make").stat().st_size == 1067
               and (server / "notes 09\uf02230.txt").exists(), 60, "the clone never reached the server")
    churn.wait_settled(env)  # .git's own files too, before the cache is thrown away
    env.daemon.stop()
    env.wipe_cache()
    env.start_daemon()
    assert status() == ""
    out = subprocess.run([str(repo / "make")], check=True, capture_output=True, text=True, timeout=30).stdout
    assert out == "built\n"

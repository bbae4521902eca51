"""Symbolic links through the mount, stored as Minshall-French symlinks (issue 15, item 1).

The on-server form is what ``mount.cifs -o mfsymlinks`` and macOS write: a regular file of
1067 bytes, ``XSym``, the target's length, its MD5, the target, spaces. Checked here with our
own reading of that format (``_xsym``), not with cscd's. Real smbd, real mount, syscalls.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess

from tests.helpers.wait import eventually


def _xsym(target: str) -> bytes:
    t = target.encode()
    body = b"XSym\n%04d\n%s\n%s\n" % (len(t), hashlib.md5(t).hexdigest().encode(), t)
    return body + b" " * (1067 - len(body))


def test_links_of_every_kind_read_back_and_reach_the_server_as_xsym(mount_env):
    env = mount_env()
    (env.docs / "real.txt").write_text("the target")
    (env.docs / "sub").mkdir()
    links = {"rel": "real.txt", "up": "../Documents/real.txt", "abs": "/etc/hostname",
             "dangling": "no/such/file", "sub/back": "../real.txt", "dir": "sub"}
    for name, target in links.items():
        os.symlink(target, env.docs / name)
    for name, target in links.items():
        path = env.docs / name
        assert os.readlink(path) == target
        st = os.lstat(path)
        assert stat.S_ISLNK(st.st_mode) and st.st_size == len(target.encode())
    assert (env.docs / "rel").read_text() == "the target"  # the kernel follows it
    assert (env.docs / "sub" / "back").read_text() == "the target"
    assert os.path.isdir(env.docs / "dir") and not os.path.exists(env.docs / "dangling")
    assert sorted(os.listdir(env.docs / "dir")) == ["back"]
    for name, target in links.items():
        eventually(lambda n=name, t=target: (env.server / n).read_bytes() == _xsym(t), 20,
                   f"{name}: not on the server as a Minshall-French link")
    os.rename(env.docs / "rel", env.docs / "renamed")
    os.unlink(env.docs / "dangling")
    assert os.readlink(env.docs / "renamed") == "real.txt"
    eventually(lambda: (env.server / "renamed").read_bytes() == _xsym("real.txt")
               and not (env.server / "dangling").exists(), 20, "rename or unlink of a link not on the server")


def test_a_link_another_client_made_on_the_server_is_a_link_here(mount_env):
    env = mount_env()
    (env.server / "target.txt").write_text("reached")
    (env.server / "from-mac").write_bytes(_xsym("target.txt"))
    damaged = bytearray(_xsym("target.txt"))
    damaged[10] ^= 1  # one hex digit of the MD5 changed: a plain 1067-byte file
    (env.server / "not-a-link").write_bytes(bytes(damaged))
    eventually(lambda: "from-mac" in os.listdir(env.docs), 20, "the server's files never listed")
    assert os.readlink(env.docs / "from-mac") == "target.txt"
    assert (env.docs / "from-mac").read_text() == "reached"
    assert stat.S_ISREG(os.lstat(env.docs / "not-a-link").st_mode)
    assert (env.docs / "not-a-link").read_bytes() == bytes(damaged)


def test_links_survive_a_fresh_cache(mount_env):
    env = mount_env()
    os.symlink("elsewhere/file", env.docs / "link")
    eventually(lambda: (env.server / "link").read_bytes() == _xsym("elsewhere/file"), 20, "not uploaded")
    env.daemon.stop()
    env.wipe_cache()
    env.start_daemon()
    assert os.readlink(env.docs / "link") == "elsewhere/file"


def test_tar_of_a_tree_with_links_and_exec_files_extracts_into_the_mount(mount_env, tmp_path):
    env = mount_env()
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "tool").write_text("#!/bin/sh\necho hi\n")
    (src / "lib").mkdir()
    (src / "lib" / "libx.so.1.2").write_bytes(os.urandom(5000))
    os.symlink("libx.so.1.2", src / "lib" / "libx.so.1")
    os.symlink("libx.so.1", src / "lib" / "libx.so")
    os.symlink("../lib", src / "bin" / "lib")
    archive = tmp_path / "t.tar"
    subprocess.run(["tar", "-C", str(src), "-cf", str(archive), "."], check=True)
    subprocess.run(["tar", "-C", str(env.docs), "-xf", str(archive)], check=True)
    for rel in ("lib/libx.so.1", "lib/libx.so", "bin/lib"):
        assert os.readlink(env.docs / rel) == os.readlink(src / rel)
    assert (env.docs / "lib" / "libx.so").read_bytes() == (src / "lib" / "libx.so.1.2").read_bytes()
    listing = subprocess.run(["tar", "-C", str(env.docs), "-cf", "-", "lib"], check=True, capture_output=True).stdout
    assert b"libx.so.1.2" in listing


def test_python_venv_in_the_mount_runs_its_interpreter(mount_env):
    """``python -m venv`` makes symbolic links (bin/python → python3 → the system's) and an
    executable script (bin/activate's peers); the interpreter then runs from the mount."""
    env = mount_env()
    venv = env.docs / "venv"
    subprocess.run(["python3", "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    assert os.path.islink(venv / "bin" / "python")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import sys; print(sys.prefix)"],
                         check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    assert out == str(venv)
    eventually(lambda: (env.server / "venv" / "bin" / "python").stat().st_size == 1067, 30,
               "the venv's links never reached the server")

"""The mode and user.* extended attributes roam as SMB EAs (issue 15, item 2).

On the server, ``user.NAME`` is the EA ``NAME`` (what ``mount.cifs -o user_xattr`` reads) and a
mode other than 0644/0755 is the EA ``cscd.mode`` in octal. Samba keeps an EA ``NAME`` as the
xattr ``user.NAME`` of the share's file: the tests read that (``_server_eas``) and, as a second
SMB client, smbprotocol's own ``smbclient``. Real smbd, real mount, syscalls.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess

import pytest
import smbclient

from tests.helpers.wait import eventually


def _server_eas(path) -> dict[str, bytes]:
    """The EAs Samba serves for a share file: its ``user.`` xattrs on disk, prefix dropped."""
    return {n[5:]: os.getxattr(path, n) for n in os.listxattr(path) if n.startswith("user.")}


def _unc(env, rel: str) -> str:
    return rf"\\{env.smbd.host}\share\{env.user_dir}\Documents\{rel}"


@pytest.fixture
def second_client(smbd):
    """smbprotocol's ``smbclient``: another SMB client of the same share, not cscd's code."""
    smbclient.register_session(smbd.host, username=smbd.username, password=smbd.password, port=smbd.port)
    yield {"port": smbd.port}
    smbclient.reset_connection_cache()


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_modes_and_attributes_reach_the_server_and_a_fresh_cache(mount_env, second_client):
    env = mount_env()
    d = env.docs
    (d / "run.sh").write_text("#!/bin/sh\necho ran\n")
    os.chmod(d / "run.sh", 0o755)
    (d / "id_key").write_text("secret")
    os.chmod(d / "id_key", 0o600)
    (d / "private").mkdir()
    os.chmod(d / "private", 0o700)
    (d / "page.html").write_text("<p>saved</p>")
    os.setxattr(d / "page.html", "user.xdg.origin.url", b"https://example.com/page")
    os.setxattr(d / "page.html", "user.xdg.tags", b"work,2026")
    (d / "plain.txt").write_text("nothing special")
    eventually(lambda: _server_eas(env.server / "run.sh") == {"cscd.mode": b"0755"}
               and _server_eas(env.server / "id_key") == {"cscd.mode": b"0600"}
               and _server_eas(env.server / "private") == {"cscd.mode": b"0700"}
               and _server_eas(env.server / "page.html") == {"xdg.origin.url": b"https://example.com/page",
                                                             "xdg.tags": b"work,2026"},
               30, "the modes and attributes never reached the server as EAs")
    assert _server_eas(env.server / "plain.txt") == {}  # a default mode costs no EA
    # Another SMB client reads the same EAs.
    assert smbclient.getxattr(_unc(env, "run.sh"), b"cscd.mode", **second_client) == b"0755"
    assert smbclient.getxattr(_unc(env, "page.html"), b"xdg.tags", **second_client) == b"work,2026"

    env.daemon.stop()
    env.wipe_cache()
    env.start_daemon()
    assert _mode(d / "run.sh") == 0o755 and _mode(d / "id_key") == 0o600
    assert _mode(d / "private") == 0o700 and _mode(d / "plain.txt") == 0o644
    assert sorted(os.listxattr(d / "page.html")) == ["user.xdg.origin.url", "user.xdg.tags"]
    assert os.getxattr(d / "page.html", "user.xdg.origin.url") == b"https://example.com/page"
    assert os.listxattr(d / "plain.txt") == []
    out = subprocess.run([str(d / "run.sh")], check=True, capture_output=True, text=True, timeout=30).stdout
    assert out == "ran\n"


def test_a_new_version_of_a_file_keeps_its_mode_and_attributes_on_the_server(mount_env):
    """An upload is a temporary renamed over the old file: the EAs are set on the new one."""
    env = mount_env()
    script = env.docs / "tool"
    script.write_text("#!/bin/sh\necho 1\n")
    os.chmod(script, 0o750)
    os.setxattr(script, "user.comment", b"v1")
    eventually(lambda: _server_eas(env.server / "tool") == {"cscd.mode": b"0750", "comment": b"v1"}, 30,
               "first version's EAs never on the server")
    script.write_text("#!/bin/sh\necho 2\n")
    eventually(lambda: (env.server / "tool").read_text() == "#!/bin/sh\necho 2\n", 30, "v2 not uploaded")
    eventually(lambda: _server_eas(env.server / "tool") == {"cscd.mode": b"0750", "comment": b"v1"}, 30,
               "the new version lost its EAs")
    os.chmod(script, 0o644)
    os.removexattr(script, "user.comment")
    eventually(lambda: _server_eas(env.server / "tool") == {}, 30, "back to defaults: the EAs stayed")


def test_modes_and_attributes_another_client_sets_show_in_the_mount(mount_env, second_client):
    env = mount_env()
    (env.server / "from-mac.sh").write_text("#!/bin/sh\n")
    (env.server / "tagged.txt").write_text("x")
    eventually(lambda: "tagged.txt" in os.listdir(env.docs), 20, "the server's files never listed")
    assert _mode(env.docs / "from-mac.sh") == 0o644
    smbclient.setxattr(_unc(env, "from-mac.sh"), b"cscd.mode", b"0755", **second_client)
    smbclient.setxattr(_unc(env, "tagged.txt"), b"xdg.tags", b"red", **second_client)
    eventually(lambda: _mode(env.docs / "from-mac.sh") == 0o755, 30, "the server's mode never showed")
    eventually(lambda: os.listxattr(env.docs / "tagged.txt") == ["user.xdg.tags"], 30,
               "the server's attribute never showed")
    assert os.getxattr(env.docs / "tagged.txt", "user.xdg.tags") == b"red"
    smbclient.removexattr(_unc(env, "tagged.txt"), b"xdg.tags", **second_client)
    eventually(lambda: os.listxattr(env.docs / "tagged.txt") == [], 30, "a removed attribute stayed here")


@pytest.mark.parametrize(("name", "code"), [
    ("security.selinux", errno.ENOTSUP), ("trusted.overlay", errno.ENOTSUP),
    ("user.cscd.state", errno.EPERM),
])
def test_attributes_the_server_cannot_hold_are_refused(mount_env, name, code):
    env = mount_env()
    f = env.docs / "f"
    f.write_text("x")
    with pytest.raises(OSError) as info:
        os.setxattr(f, name, b"v")
    assert info.value.errno == code
    assert os.listxattr(f) == []


def test_other_namespaces_read_as_not_supported_so_ls_stops_asking(mount_env):
    """``security.*``, ``system.*`` and ``trusted.*`` do not exist here, and reading one says so.

    GNU ``ls -l`` asks every entry for its SELinux label and its POSIX ACL, and stops asking on
    a device that answered ENOTSUP once. Answered "no such attribute", a warm ``ls -lR`` of
    10,100 entries made 30,000 round trips to the daemon (1.65 s against 0.06 s on ext4).
    """
    env = mount_env()
    for d in range(3):
        (env.docs / f"d{d}").mkdir()
        for f in range(50):
            (env.docs / f"d{d}" / f"f{f}").write_bytes(b"x")
    for path in (env.docs / "d0", env.docs / "d0" / "f0"):
        for name in ("security.selinux", "system.posix_acl_access", "trusted.overlay"):
            with pytest.raises(OSError) as info:
                os.getxattr(path, name)
            assert info.value.errno == errno.ENOTSUP, name
    trace = env.workdir / "ls.strace"
    listing = subprocess.run(["strace", "-f", "-e", "trace=getxattr,lgetxattr", "-o", str(trace),
                              "ls", "-lR", str(env.docs)], capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert sum(1 for line in listing.stdout.splitlines() if line.startswith(("-", "d"))) == 153
    calls = [line for line in trace.read_text().splitlines() if "getxattr(" in line]
    assert len(calls) <= 4, calls[:10]


def test_xattr_calls_answer_as_on_a_local_file_system(mount_env):
    env = mount_env()
    f = env.docs / "f"
    f.write_text("x")
    with pytest.raises(OSError) as info:
        os.getxattr(f, "user.missing")
    assert info.value.errno == errno.ENODATA
    with pytest.raises(OSError) as info:
        os.removexattr(f, "user.missing")
    assert info.value.errno == errno.ENODATA
    os.setxattr(f, "user.a", b"1")
    os.setxattr(f, "user.a", b"2")  # replaces
    os.setxattr(f, "user.b", b"")
    assert os.getxattr(f, "user.a") == b"2" and os.getxattr(f, "user.b") == b""
    assert sorted(os.listxattr(f)) == ["user.a", "user.b"]
    with pytest.raises(OSError) as info:
        os.setxattr(f, "user.big", b"x" * 65536)
    assert info.value.errno == errno.E2BIG
    os.rename(f, env.docs / "g")
    assert os.getxattr(env.docs / "g", "user.a") == b"2"  # attributes follow the file


@pytest.mark.log_allows(r"refused the mode and extended attributes", r"\[2010\]")
def test_attributes_the_server_has_no_room_for_lose_nothing(mount_env):
    """ext4 under Samba keeps about 4 KiB of xattrs per file: a larger set is refused there.
    The content still syncs, the attributes stay here (a listing does not take the server's
    empty set over them), and the daemon carries on."""
    env = mount_env()
    f = env.docs / "many-tags"
    f.write_text("content")
    big = {f"user.tag{i:03d}": b"v" * 2000 for i in range(30)}  # ~60 KiB
    for name, value in big.items():
        os.setxattr(f, name, value)
    eventually(lambda: (env.server / "many-tags").read_text() == "content", 30, "the content never synced")
    first_upload = (env.server / "many-tags").stat().st_ino
    eventually(lambda: "[2010]" in env.daemon.log_path.read_text(), 30, "the refusal was never retried")
    # The retries send the attributes only: the content's upload was recorded (an upload is
    # a temporary renamed over, so another one would be another inode).
    assert (env.server / "many-tags").stat().st_ino == first_upload
    (env.docs / "after").write_text("later files still sync")
    eventually(lambda: (env.server / "after").exists(), 30, "sync stopped after the refusal")
    os.listdir(env.docs)  # a listing of the folder
    assert {n: os.getxattr(f, n) for n in os.listxattr(f)} == big

"""Every name a Linux program makes, through the mount (issue 15, item 3).

``\\ : * ? " < > |`` and a trailing dot or space cannot be stored on an SMB server; cscd stores
them mapped into U+F020-U+F029 (the Services-for-Mac forms that ``mount.cifs -o mapposix``,
Samba's ``vfs_catia``/``vfs_fruit`` and macOS use) and shows the original names. Real smbd
(its share seen directly on disk: what a second client lists), real mount, plain syscalls.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from tests.helpers.wait import eventually

MAPPED = {
    "notes: 2026.txt": "notes\uf022 2026.txt",
    "what?": "what\uf025",
    'say "hi"': "say \uf020hi\uf020",
    "a<b>c|d*e": "a\uf023b\uf024c\uf027d\uf021e",
    "back\\slash": "back\uf026slash",
    "ends with a dot.": "ends with a dot\uf029",
    "ends with a space ": "ends with a space\uf028",
}


def test_names_smb_cannot_store_are_kept_and_stored_mapped(mount_env):
    env = mount_env()
    (env.docs / "dir:x").mkdir()
    for name in MAPPED:
        (env.docs / "dir:x" / name).write_text(name)
    assert sorted(os.listdir(env.docs / "dir:x")) == sorted(MAPPED)
    server = env.server / "dir\uf022x"
    eventually(lambda: sorted(os.listdir(server)) == sorted(MAPPED.values()), 20,
               "the mapped names never reached the server")
    for name, stored in MAPPED.items():
        assert (server / stored).read_text() == name
    os.rename(env.docs / "dir:x" / "what?", env.docs / "dir:x" / "why?")
    eventually(lambda: (server / "why\uf025").exists() and not (server / "what\uf025").exists(), 20,
               "the rename of a mapped name never reached the server")


def test_a_tree_made_on_the_server_in_mapped_forms_shows_its_linux_names(mount_env):
    env = mount_env()
    (env.server / "from\uf022server").mkdir()
    for name, stored in MAPPED.items():
        (env.server / "from\uf022server" / stored).write_text(name)
    shown = env.docs / "from:server"
    eventually(lambda: sorted(os.listdir(shown)) == sorted(MAPPED), 20, "the server's mapped names not shown")
    for name in MAPPED:
        assert (shown / name).read_text() == name


@pytest.mark.parametrize("name", ["CON", "nul.txt", "com1", "tab\there"])
def test_names_no_server_can_take_are_refused_with_einval(mount_env, name):
    env = mount_env()
    with pytest.raises(OSError) as info:
        (env.docs / name).write_text("x")
    assert info.value.errno == errno.EINVAL


def test_git_keeps_a_file_named_with_a_colon(mount_env, tmp_path):
    """git's own files and a tracked 'a:b' name, through clone, commit and checkout."""
    env = mount_env()
    src = tmp_path / "src"
    src.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(src)], check=True)
    (src / "time 12:00.txt").write_text("noon")
    (src / "why?.md").write_text("because")
    subprocess.run([*git, "-C", str(src), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(src), "commit", "-qm", "names"], check=True)
    repo = env.docs / "repo"
    subprocess.run([*git, "clone", "-q", str(src), str(repo)], check=True)
    assert (repo / "time 12:00.txt").read_text() == "noon"
    status = subprocess.run([*git, "-C", str(repo), "status", "--porcelain"], check=True,
                            capture_output=True, text=True).stdout
    assert status == ""
    eventually(lambda: (env.server / "repo" / "time 12\uf02200.txt").read_text() == "noon", 30,
               "the colon name never reached the server")


@pytest.mark.log_allows(r"conflict: ")
def test_names_differing_only_in_case_lose_nothing(mount_env):
    """Samba's share is case-insensitive for SMB clients: 'Report.txt' beside 'report.txt'
    cannot have its own server name. Both stay here and nothing is lost on the server: the
    second is kept there as a conflict copy."""
    env = mount_env()
    (env.docs / "report.txt").write_text("lower")
    eventually(lambda: (env.server / "report.txt").read_text() == "lower", 20, "first not uploaded")
    (env.docs / "Report.txt").write_text("upper")
    assert (env.docs / "report.txt").read_text() == "lower"
    assert (env.docs / "Report.txt").read_text() == "upper"

    def both_on_server() -> bool:
        contents = sorted(p.read_text() for p in env.server.iterdir()
                          if p.is_file() and not p.name.startswith(".cscd-upload-"))
        return contents == ["lower", "upper"]

    eventually(both_on_server, 20, "one of the two versions is missing on the server")

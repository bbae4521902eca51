"""``offline_files.exclude_patterns`` and ``max_file_size`` on a real mount and a real smbd.

Excluded names (defaults ``*.tmp``, ``~$*``, ``.~lock.*#``) live only on this machine: never
uploaded, server entries with such names not shown, and renames across the boundary do what
an editor's save expects. Files are limited to ``max_file_size``: growing past it is EFBIG,
a larger server file is shown and read through from the server without being cached.
"""

from __future__ import annotations

import errno
import json
import os

import pytest

from cscd.cache.store import ContentStore
from cscd.operations.policy_in_force import PolicyKeeper
from cscd.policy.config import DEFAULT_EXCLUDE_PATTERNS, DEFAULT_MAX_FILE_BYTES, DaemonConfig, load_config
from cscd.policy.machine import daemon_config, load_policy
from cscd.policy.model import OfflineFilesPolicy, Subject
from cscd.sync.exclusions import ExclusionMatcher
from tests.helpers.wait import eventually

MiB = 1 << 20


def sync_wait(env) -> dict:
    result = env.daemon.run_cli("sync", "--wait", "--json", timeout_s=60)
    assert result.returncode == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


@pytest.fixture
def env(mount_env):
    return mount_env(extra={"max_file_size": "1M"})


def test_the_matcher_compares_names_case_insensitively_and_never_excludes_directories():
    m = ExclusionMatcher(DEFAULT_EXCLUDE_PATTERNS)
    assert m.is_excluded(b"x.tmp") and m.is_excluded(b"X.TMP") and m.is_excluded(b"~$doc.docx")
    assert m.is_excluded(b".~lock.doc.odt#")
    assert not m.is_excluded(b"doc.odt") and not m.is_excluded(b"tmp") and not m.is_excluded(b"a.tmp.odt")
    assert not m.is_excluded(b"build.tmp", is_dir=True)
    assert not ExclusionMatcher([]).is_excluded(b"x.tmp")


def test_config_defaults_are_the_policy_defaults():
    assert DEFAULT_EXCLUDE_PATTERNS == OfflineFilesPolicy().exclude_patterns
    assert DEFAULT_MAX_FILE_BYTES == OfflineFilesPolicy().max_file_size_bytes


POLICY = r"""
- folders:
    Scans: {path: ~/Scans, target: '\\files.example.com\scans\%USERNAME%', offline: false}
    Documents: {target: '\\files.example.com\home\%USERNAME%\Documents'}
  offline_files:
    exclude_patterns: ['*.part']
    max_file_size: 1 MiB
"""


def test_the_policy_reaches_the_daemon_config(tmp_path):
    base = DaemonConfig(tmp_path / "c.yaml", tmp_path / "m", tmp_path / "c", None)
    (tmp_path / "policy.yaml").write_text(POLICY)
    cfg = daemon_config(base, load_policy(Subject("alice", host="ws1"), tmp_path))
    assert {f.name: f.offline for f in cfg.folders} == {"Documents": True, "Scans": False}
    assert cfg.exclude_patterns == ("*.part",) and cfg.max_file_size_bytes == MiB
    (tmp_path / "empty").mkdir()
    assert daemon_config(base, load_policy(Subject("alice"), tmp_path / "empty")) == base


def test_the_daemon_yaml_takes_the_same_keys(tmp_path):
    path = tmp_path / "cscd.yaml"
    path.write_text("mount: /m\ncache: /c\nmax_file_size: 2M\nexclude_patterns: ['*.bak']\n"
                    "folders:\n  Scans: {target: '\\\\srv\\s\\x', offline: false}\n  Docs: '\\\\srv\\s\\d'\n")
    cfg = load_config(path)
    assert cfg.max_file_size_bytes == 2 * MiB and cfg.exclude_patterns == ("*.bak",)
    assert [(f.name, f.offline) for f in cfg.folders] == [("Scans", False), ("Docs", True)]


async def test_a_reload_applies_max_file_size_and_asks_a_restart_for_patterns(tmp_path):
    base = DaemonConfig(tmp_path / "c.yaml", tmp_path / "m", tmp_path / "c", None, policy_dir=tmp_path)
    keeper = await PolicyKeeper.open(base)
    (tmp_path / "policy.yaml").write_text("- offline_files: {exclude_patterns: ['*.part'], max_file_size: 1 MiB}\n")
    answer = await keeper.reload("test")
    assert answer["applied"] == ["offline_files.max_file_size"]
    assert answer["restart_needed"] == ["offline_files.exclude_patterns"]
    assert answer["not_enforced"] == []


def test_excluded_files_live_only_here(env):
    for name in ("~$doc.docx", "x.tmp", ".~lock.doc.odt#", "normal.txt"):
        (env.docs / name).write_text(f"content of {name}")
    eventually(lambda: (env.server / "normal.txt").read_text() == "content of normal.txt", 10,
               "normal.txt not uploaded")
    answer = sync_wait(env)
    assert answer["pending"] == 0, answer
    assert sorted(os.listdir(env.server)) == ["normal.txt"]
    assert (env.docs / "x.tmp").read_text() == "content of x.tmp"
    assert sorted(os.listdir(env.docs)) == [".~lock.doc.odt#", "normal.txt", "x.tmp", "~$doc.docx"]


def test_server_entries_with_excluded_names_are_not_shown(env):
    (env.server / "seen.txt").write_text("s")
    (env.server / "hidden.tmp").write_text("h")
    (env.server / "~$hidden.docx").write_text("h")
    assert os.listdir(env.docs) == ["seen.txt"]
    (env.server / "later.tmp").write_text("l")
    (env.server / "later.txt").write_text("l")
    eventually(lambda: "later.txt" in os.listdir(env.docs), 10, "later.txt not seen")
    assert sorted(os.listdir(env.docs)) == ["later.txt", "seen.txt"]


def test_a_temporary_file_renamed_to_a_real_name_is_uploaded(env):
    (env.docs / "doc.tmp").write_text("saved by the editor")
    os.rename(env.docs / "doc.tmp", env.docs / "doc.odt")
    eventually(lambda: (env.server / "doc.odt").read_text() == "saved by the editor", 10, "doc.odt not uploaded")
    assert sync_wait(env)["pending"] == 0
    assert sorted(os.listdir(env.server)) == ["doc.odt"]


def test_the_save_pattern_replaces_a_synced_file_without_a_conflict(env):
    (env.server / "doc.odt").write_text("version 1")
    assert (env.docs / "doc.odt").read_text() == "version 1"
    (env.docs / "lu123.tmp").write_text("version 2")
    os.rename(env.docs / "lu123.tmp", env.docs / "doc.odt")
    eventually(lambda: (env.server / "doc.odt").read_text() == "version 2", 10, "doc.odt not replaced")
    assert sync_wait(env)["pending"] == 0
    assert sorted(os.listdir(env.server)) == ["doc.odt"], "a conflict copy or the temporary reached the server"


def test_the_word_save_pattern_keeps_one_file_on_the_server(env):
    (env.server / "r.docx").write_text("old")
    assert (env.docs / "r.docx").read_text() == "old"
    (env.docs / "~WRL0001.tmp").write_text("new")
    os.rename(env.docs / "r.docx", env.docs / "~WRL0002.tmp")
    os.rename(env.docs / "~WRL0001.tmp", env.docs / "r.docx")
    os.unlink(env.docs / "~WRL0002.tmp")
    eventually(lambda: (env.server / "r.docx").read_text() == "new", 10, "r.docx not saved")
    assert sync_wait(env)["pending"] == 0
    assert sorted(os.listdir(env.server)) == ["r.docx"]


def test_a_synced_file_renamed_to_an_excluded_name_leaves_the_server(env):
    (env.docs / "doc.odt").write_text("synced")
    eventually(lambda: (env.server / "doc.odt").exists(), 10, "doc.odt not uploaded")
    os.rename(env.docs / "doc.odt", env.docs / "doc.odt.tmp")
    eventually(lambda: not (env.server / "doc.odt").exists(), 10, "doc.odt still on the server")
    assert sync_wait(env)["pending"] == 0
    assert os.listdir(env.server) == []
    assert (env.docs / "doc.odt.tmp").read_text() == "synced"


def test_growing_a_file_past_max_file_size_is_efbig_and_loses_nothing(env):
    # As with RLIMIT_FSIZE: a write is cut at the limit (a short count), the next one fails.
    path = env.docs / "grow.bin"
    data = os.urandom(MiB + 4096)
    written = 0
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        with pytest.raises(OSError) as info:
            while written < len(data):
                written += os.write(fd, data[written:])
        assert info.value.errno == errno.EFBIG
        assert MiB - 128 * 1024 <= written <= MiB
        with pytest.raises(OSError) as info:
            os.ftruncate(fd, 2 * MiB)
        assert info.value.errno == errno.EFBIG
    finally:
        os.close(fd)
    assert path.read_bytes() == data[:written]
    eventually(lambda: (env.server / "grow.bin").read_bytes() == data[:written], 10, "grow.bin not uploaded")
    events = env.daemon.run_cli("events", "--json")
    assert "offline_files.max_file_size" in events.stdout


def test_a_server_file_over_the_limit_is_read_through_and_not_cached(env):
    data = os.urandom(3 * MiB + 5)
    (env.server / "large.bin").write_bytes(data)
    path = env.docs / "large.bin"
    assert os.stat(path).st_size == len(data)
    assert path.read_bytes() == data
    with open(path, "rb") as f:
        f.seek(2 * MiB)
        assert f.read(10) == data[2 * MiB: 2 * MiB + 10]
    assert not ContentStore(env.daemon.cache / "content").exists(os.stat(path).st_ino)
    with pytest.raises(OSError) as info, open(path, "r+b") as f:
        f.write(b"change")
        f.flush()
    assert info.value.errno == errno.EFBIG
    assert (env.server / "large.bin").read_bytes() == data

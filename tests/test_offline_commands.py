"""The user's Offline Files commands against a live daemon: work offline / online, pin,
free-space, the cache limit and conflict resolution (real smbd, real mount, the CLI)."""

from __future__ import annotations

import errno
import json
import os
import time

import pytest

from tests.helpers.ops import make_conflict, wait_control
from tests.helpers.wait import eventually

MiB = 1 << 20


def cli(env, *args, code=0):
    result = env.daemon.run_cli(*args, "--json", timeout_s=60)
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout)


def mode(env, folder="Documents"):
    status = cli(env, "status")
    return status["folders"][folder]["mode"]


def read_fails_offline(path) -> bool:
    try:
        path.read_bytes()
    except OSError as exc:
        return exc.errno == errno.EHOSTDOWN
    return False


def test_work_offline_survives_restart_and_online_uploads(make_env):
    env = make_env()
    (env.server / "remote-only.txt").write_text("not cached")
    assert os.listdir(env.docs) == ["remote-only.txt"]
    cli(env, "offline", "Documents")
    assert mode(env) == "working_offline"
    assert read_fails_offline(env.docs / "remote-only.txt")
    (env.docs / "mine.txt").write_text("written while working offline")
    env.daemon.stop()
    env.start_daemon()
    wait_control(env.daemon)
    assert mode(env) == "working_offline"
    time.sleep(1.0)  # push rounds run every second: none may upload
    assert not (env.server / "mine.txt").exists()
    cli(env, "online", "Documents")
    eventually(lambda: (env.server / "mine.txt").read_text() == "written while working offline", 10,
               "not uploaded after 'cscd online'")
    assert mode(env) == "online"


@pytest.mark.log_allows(r"folder Documents is now offline: ")  # the proxy refuses: expected
def test_pin_makes_a_folder_available_offline(make_env):
    env = make_env()
    (env.server / "P").mkdir()
    (env.server / "P" / "deep").mkdir()
    (env.server / "P" / "one.bin").write_bytes(os.urandom(3 * MiB))
    (env.server / "P" / "deep" / "two.txt").write_text("two")
    (env.server / "other.txt").write_text("not pinned")
    assert sorted(os.listdir(env.docs)) == ["P", "other.txt"]
    answer = cli(env, "pin", str(env.docs / "P"))
    assert answer["files_missing"] == 0
    expected = (env.server / "P" / "one.bin").read_bytes()
    assert cached_bytes(env) >= 3 * MiB, "pinned content not fetched"
    env.proxy.stop_listening()
    env.proxy.reset()
    eventually(lambda: mode(env) == "offline", 10, "offline not noticed")
    assert (env.docs / "P" / "one.bin").read_bytes() == expected
    assert (env.docs / "P" / "deep" / "two.txt").read_text() == "two"
    assert read_fails_offline(env.docs / "other.txt")
    env.proxy.resume_listening()


def cached_bytes(env) -> int:
    total = 0
    for root, _dirs, files in os.walk(env.daemon.cache / "content"):
        for f in files:
            total += os.stat(os.path.join(root, f)).st_blocks * 512
    return total


def test_free_space_turns_a_cached_file_back_into_a_placeholder(make_env):
    env = make_env()
    data = os.urandom(2 * MiB)
    (env.server / "f.bin").write_bytes(data)
    assert (env.docs / "f.bin").read_bytes() == data
    answer = cli(env, "free-space", str(env.docs / "f.bin"))
    assert answer["files"] == 1 and answer["bytes"] >= 2 * MiB
    env.proxy.reset_counters()
    assert (env.docs / "f.bin").read_bytes() == data
    assert env.proxy.bytes_to_client >= 2 * MiB, "content was not fetched again"


@pytest.mark.log_allows(r"folder Documents is now offline: ")  # the proxy refuses: expected
def test_cache_limit_evicts_unpinned_and_keeps_pinned(make_env):
    env = make_env(extra={"cache_limit": "8M"})
    (env.server / "keep").mkdir()
    keep = os.urandom(4 * MiB)
    (env.server / "keep" / "k.bin").write_bytes(keep)
    blobs = {f"u{i}.bin": os.urandom(2 * MiB) for i in range(6)}
    for name, data in blobs.items():
        (env.server / name).write_bytes(data)
    os.listdir(env.docs)
    cli(env, "pin", str(env.docs / "keep"))
    assert (env.docs / "keep" / "k.bin").read_bytes() == keep
    for name, data in blobs.items():
        assert (env.docs / name).read_bytes() == data
    eventually(lambda: cached_bytes(env) <= 8 * MiB, 20, "cache not brought under its limit")
    env.proxy.stop_listening()
    env.proxy.reset()
    eventually(lambda: mode(env) == "offline", 10, "offline not noticed")
    assert (env.docs / "keep" / "k.bin").read_bytes() == keep, "pinned file was evicted"
    env.proxy.resume_listening()
    eventually(lambda: mode(env) == "online", 10, "not back online")
    for name, data in blobs.items():
        assert (env.docs / name).read_bytes() == data


@pytest.mark.log_allows(r"folder Documents is now offline: ",
                        r"conflict: b'doc\.txt' changed on the server and here; the local version is kept",
                        r"\[4000\] conflict in Documents: 1 file changed on both sides")
@pytest.mark.parametrize("keep", ["local", "remote", "both"])
def test_conflict_listed_and_resolved(make_env, keep):
    env = make_env()
    copy = make_conflict(env)
    listed = cli(env, "conflicts")["conflicts"]
    assert [(c["copy"], c["original"]) for c in listed] == [
        (str(env.docs / copy), str(env.docs / "doc.txt"))]
    cli(env, "conflicts", "resolve", str(env.docs / copy), "--keep", keep)
    assert cli(env, "conflicts")["conflicts"] == []
    if keep == "local":
        expect_server = {"doc.txt": "mine"}
    elif keep == "remote":
        expect_server = {"doc.txt": "theirs"}
    else:
        expect_server = {"doc.txt": "theirs", copy: "mine"}

    def server_state():
        return {n: (env.server / n).read_text() for n in os.listdir(env.server)} == expect_server

    eventually(server_state, 10, f"server not as 'keep {keep}' promises")
    assert {n: (env.docs / n).read_text() for n in os.listdir(env.docs)} == expect_server

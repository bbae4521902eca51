"""Long work followed to its end (issue 19, part 3): ``cscd pin`` and ``cscd sync --wait``.

The CLI runs as a subprocess with its output on pipes (not a terminal), so it prints plain
progress lines; the link goes through the test proxy, delayed so that a pin of 300 files
takes several seconds. ``--timeout`` is the stall limit: shorter than the whole pin, which
must still finish, because its counts keep moving; a hung link stops them, and then the
command says so and exits while the pin goes on in the daemon.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from tests.helpers.ops import wait_control
from tests.helpers.wait import eventually

FILES = 300
LINE = re.compile(r"^pin: (listing|fetching): (\d+)%: (\d+)/(\d+) files")


@pytest.fixture
def slow_env(mount_env):
    env = mount_env()
    wait_control(env.daemon)
    folder = env.server / "project"
    folder.mkdir()
    for i in range(FILES):
        (folder / f"f{i:03d}.txt").write_bytes(b"x" * 2000)
    env.proxy.delay_s = 0.012  # each fetch waits ~25 ms (a slow link starts at 35 ms)
    return env


def test_a_pin_longer_than_the_stall_limit_is_followed_to_its_end(slow_env):
    env = slow_env
    result = env.daemon.run_cli("pin", str(env.docs / "project"), "--timeout", "3", timeout_s=120)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stdout.strip() == f"pin: {env.docs / 'project'} pinned, all of it here"
    lines = [LINE.match(line) for line in result.stderr.splitlines()]
    progress = [(int(m.group(3)), int(m.group(4))) for m in lines if m]
    assert len(progress) >= 2, result.stderr  # a line at the start, one every 5 s after
    assert all(total == FILES for _, total in progress[1:]), result.stderr
    assert [done for done, _ in progress] == sorted(done for done, _ in progress), result.stderr
    assert all((env.docs / "project" / f"f{i:03d}.txt").read_bytes() == b"x" * 2000 for i in range(FILES))


@pytest.mark.log_allows(r"folder Documents is now offline: ", r"pinned file \d+ not fetched: ")
def test_a_pin_that_stops_moving_ends_the_command_not_the_pin(slow_env):
    env = slow_env
    env.proxy.delay_s = 0.0
    (env.server / "project" / "big.bin").write_bytes(b"y" * (64 << 20))
    assert len(os.listdir(env.docs / "project")) == FILES + 1  # listed: the pin starts at once
    env.proxy.hang()
    try:
        result = env.daemon.run_cli("pin", str(env.docs / "project"), "--timeout", "2", timeout_s=60)
    finally:
        env.proxy.unhang()
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "pin: no progress for 2 s; it goes on in the daemon" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    jobs = json.loads(env.daemon.run_cli("status", "--json").stdout)
    assert jobs["folders"]["Documents"]  # the daemon still answers
    eventually(lambda: (env.docs / "project" / "big.bin").stat().st_size == 64 << 20
               and json.loads(env.daemon.run_cli("info", str(env.docs / "project" / "big.bin"),
                                                 "--json").stdout)["state"] == "pinned",
               60, "the pin did not go on after the command gave up")


def test_sync_wait_reports_what_it_uploaded(mount_env):
    env = mount_env()
    wait_control(env.daemon)
    for i in range(20):
        (env.docs / f"n{i}.txt").write_text(f"note {i}")
    result = env.daemon.run_cli("sync", "--wait", timeout_s=120)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stdout.startswith("sync: started\n"), result.stdout
    assert re.search(r"sync: finished in [\d.]+ s: \d+ files, .* uploaded; 0 changes pending", result.stdout)
    assert sorted(p.name for p in env.server.iterdir()) == sorted(f"n{i}.txt" for i in range(20))

"""``cscd doctor`` (issue 19, part 6): one line per check, against the real thing.

A daemon of ``mount_env`` on the session smbd: every check passes, the server one by a real
logon through the test proxy. Then each fault a support call meets, made for real: the link
gone (the proxy refuses), a password file others can read, a clock an hour off (libfaketime
in the doctor's process only: the server's time comes with its NEGOTIATE reply).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers.daemon import run_cscd
from tests.helpers.ops import wait_control

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def doctor(env, env_extra=None):
    result = run_cscd("doctor", "--config", str(env.daemon.config_path), timeout_s=60, env_extra=env_extra)
    assert "Traceback" not in result.stderr, result.stderr
    lines = {m.group(2): (m.group(1), m.group(3)) for m in
             (re.match(r"^(ok|warn|FAIL)\s+([^:]+): (.*)$", line) for line in result.stdout.splitlines()) if m}
    return result.returncode, lines


def test_a_working_setup_passes_every_check(mount_env):
    env = mount_env()
    wait_control(env.daemon)
    code, lines = doctor(env)
    assert code == 0, lines
    assert {k: v[0] for k, v in lines.items()} == {
        "FUSE": "ok", "configuration": "ok", "policy": "ok", "credentials": "ok",
        "server of Documents": "ok", "clock against Documents's server": "ok", "cache": "ok", "daemon": "ok"}
    assert "logged on to \\\\127.0.0.1\\share\\" in lines["server of Documents"][1]
    clock = lines["clock against Documents's server"][1]
    assert re.match(r"the server is \d+\.\d s (ahead of|behind) this machine", clock), clock
    assert lines["daemon"][1].startswith(f"pid {env.daemon.pid} serves {env.mount}")
    as_json = json.loads(run_cscd("doctor", "--json", "--config", str(env.daemon.config_path), timeout_s=60).stdout)
    assert [c["check"] for c in as_json] == list(lines)


@pytest.mark.log_allows(r"folder Documents is now offline: ")
def test_a_server_that_is_gone_and_a_readable_password_file_fail(mount_env):
    env = mount_env()
    wait_control(env.daemon)
    env.proxy.stop_listening()
    env.proxy.reset()
    code, lines = doctor(env)
    assert code == 1
    status, detail = lines["server of Documents"]
    assert status == "FAIL" and detail.endswith("(cached files still work)"), detail
    assert lines["daemon"][0] == "ok"  # it still serves the cache
    env.credentials.chmod(0o644)
    code, lines = doctor(env)
    assert lines["credentials"] == ("FAIL", f"{env.credentials} is readable by others (mode 0644): chmod 600 it")


@pytest.mark.skipif(not LIBFAKETIME.exists(), reason="needs libfaketime (Debian faketime)")
def test_a_clock_an_hour_off_fails_the_clock_check(mount_env):
    env = mount_env()
    wait_control(env.daemon)
    code, lines = doctor(env, env_extra={"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": "+1h"})
    assert code == 1, lines
    status, detail = lines["clock against Documents's server"]
    assert status == "FAIL", detail
    assert re.match(r"the server is 3\d{3}\.\d s behind this machine: Kerberos refuses that", detail), detail

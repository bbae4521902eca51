"""systemd: the units pass ``systemd-analyze verify``, and the daemon speaks the notify protocol.

The notify tests give the real daemon a datagram socket of ours as ``$NOTIFY_SOCKET`` (what
systemd does for ``Type=notify``) and check what arrives and when: ``READY=1`` only once the
mount answers, ``STATUS=`` with the modes and again on a mode change, ``WATCHDOG=1`` at half
of ``$WATCHDOG_USEC``, ``STOPPING=1`` on SIGTERM, then a clean exit without a mount.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.ops import NotifySocket

UNITS = Path(__file__).resolve().parents[1] / "systemd"


def analyze(unit_dir: Path, unit: str, scope: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime))
    return subprocess.run(["systemd-analyze", "verify", f"--{scope}", str(unit_dir / unit)],
                          capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.fixture
def unit_dir(tmp_path):
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing (Debian package systemd)"
    d = tmp_path / "units"
    d.mkdir()
    for unit in [*UNITS.glob("*.service"), *UNITS.glob("*.timer")]:
        shutil.copy(unit, d / unit.name)
    return d


@pytest.mark.parametrize(("unit", "scope"), [("cscd.service", "user"), ("cscd@alice.service", "system"),
                                             ("cscd-logon.service", "user"), ("cscd-metrics.service", "system"),
                                             ("cscd-metrics.timer", "system")])
def test_unit_verifies_cleanly(unit_dir, tmp_path, unit, scope):
    result = analyze(unit_dir, unit, scope, tmp_path)
    assert result.returncode == 0, result.stderr
    # It exits 0 with only a warning for an unknown key or a bad value (FACTS.md).
    assert result.stderr == "", result.stderr


def test_verify_would_catch_a_bad_key(unit_dir, tmp_path):
    """Guard: the check above is not vacuous."""
    text = (unit_dir / "cscd.service").read_text().replace("[Service]\n", "[Service]\nWatchdogSecs=30\n")
    (unit_dir / "cscd.service").write_text(text)
    assert "Unknown key" in analyze(unit_dir, "cscd.service", "user", tmp_path).stderr


def unit_settings(name: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.mark.parametrize("name", ["cscd.service", "cscd@.service"])
def test_units_keep_fuse_working(name):
    """No option that would break the setuid fusermount3 or hide the mount from the host."""
    s = unit_settings(name)
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["Restart"] == ["on-failure"] and s["WatchdogSec"]
    assert s["NoNewPrivileges"] == ["no"]
    breaking = {"PrivateTmp", "ProtectSystem", "ProtectHome", "ReadWritePaths", "ReadOnlyPaths",
                "PrivateMounts", "PrivateDevices", "SystemCallFilter", "RestrictAddressFamilies",
                "LockPersonality", "MemoryDenyWriteExecute", "RestrictNamespaces", "RestrictSUIDSGID",
                "ProtectKernelTunables", "ProtectKernelModules", "ProtectHostname", "ProtectClock",
                "DynamicUser", "MountFlags"}
    assert not breaking & set(s), breaking & set(s)
    if name == "cscd@.service":
        assert s["User"] == ["%i"] and s["CapabilityBoundingSet"] == ["CAP_SYS_ADMIN"]


@pytest.mark.parametrize("name", ["cscd.service", "cscd@.service"])
def test_reload_asks_the_daemon_and_waits_for_its_answer(name):
    """``systemctl reload`` runs ``cscd reload``, which exits non-zero when the daemon refuses
    the new policy (tests/test_policy_daemon.py); a bare SIGHUP could not report that."""
    assert unit_settings(name)["ExecReload"] == ["/usr/bin/env cscd reload"]


def test_the_logon_unit_holds_the_desktop_until_the_profile_is_pulled():
    """Ordered between the daemon and the graphical session; never fails the session."""
    s = unit_settings("cscd-logon.service")
    assert s["Type"] == ["oneshot"] and s["RemainAfterExit"] == ["yes"]
    assert s["After"] == ["cscd.service"] and s["Requires"] == ["cscd.service"]
    assert s["Before"] == ["graphical-session-pre.target xdg-user-dirs.service"]
    assert s["WantedBy"] == ["graphical-session-pre.target"]
    limit = float(s["ExecStart"][0].split("--limit ")[1])
    assert s["ExecStart"][0].startswith("-/usr/bin/env cscd profile wait-logon")
    assert float(s["TimeoutStartSec"][0]) > limit  # the wait ends, by itself, before systemd's


# ---------------------------------------------------------------- the notify protocol


@pytest.fixture
def notify():
    sock = NotifySocket()
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture
def env(mount_env):
    return mount_env(start=False)


def test_ready_only_once_the_mount_answers(env, notify):
    env.daemon.env["NOTIFY_SOCKET"] = notify.address
    env.daemon.start(wait=False)
    _, message = notify.wait_for("READY=1", 20)
    # At the moment READY=1 arrives the mount already serves requests.
    assert os.path.ismount(env.mount)
    assert os.listdir(env.mount) == ["Documents"]
    assert "STATUS=Documents: online" in message.split("\n")
    assert [m for _, m in notify.messages].count("READY=1\nSTATUS=Documents: online") == 1
    assert not env.daemon.warnings()


@pytest.mark.log_allows(r"is now offline")
def test_status_follows_the_mode(env, notify):
    env.daemon.env["NOTIFY_SOCKET"] = notify.address
    env.daemon.start(wait=False)
    notify.wait_for("READY=1", 20)
    env.proxy.stop_listening()
    env.proxy.reset()
    notify.wait_for("STATUS=Documents: offline", 15)
    env.proxy.resume_listening()
    notify.wait_for("STATUS=Documents: online", 15)


def test_watchdog_pings_at_half_the_interval(env, notify):
    env.daemon.env.update(NOTIFY_SOCKET=notify.address, WATCHDOG_USEC="400000")
    env.daemon.start(wait=False)
    notify.wait_for("READY=1", 20)
    pings = [t for t, m in notify.drain(3.0) if m == "WATCHDOG=1"]
    assert 12 <= len(pings) <= 17, f"{len(pings)} pings in 3 s, expected one per 0.2 s"
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    assert max(gaps) < 0.4, f"a gap of {max(gaps):.3f} s would let systemd kill the daemon"


def test_no_watchdog_for_another_pid(env, notify):
    """WATCHDOG_PID names the process systemd watches; a child that inherited it stays quiet."""
    env.daemon.env.update(NOTIFY_SOCKET=notify.address, WATCHDOG_USEC="200000", WATCHDOG_PID="1")
    env.daemon.start(wait=False)
    notify.wait_for("READY=1", 20)
    assert [m for _, m in notify.drain(0.6) if m == "WATCHDOG=1"] == []


def test_stopping_on_sigterm_then_clean_unmount(env, notify):
    env.daemon.env["NOTIFY_SOCKET"] = notify.address
    env.daemon.start(wait=False)
    notify.wait_for("READY=1", 20)
    env.daemon.stop()  # SIGTERM; asserts exit code 0 and no mount left
    notify.wait_for("STOPPING=1", 5)
    assert not env.daemon.is_mounted()
    order = [m.split("\n")[0] for _, m in notify.messages]
    assert order.index("READY=1") < order.index("STOPPING=1")

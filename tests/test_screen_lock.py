"""The lock-screen requirement (issue 21 part 3): ``device.require_screen_lock``.

cscd asks logind and AccountsService on the system bus and the desktop's settings portal on
the session bus (``cscd/screenlock.py``). No desktop runs in CI, so those answer through
stand-ins on private buses (``tests/helpers/fake_screenlock.py``) with the real names, paths
and signatures; everything else is real: the daemon, the mount, smbd, and the server taken
away through the proxy. A session that does not comply is reported (status, event, metric);
with ``offline_when_noncompliant: false`` its cached files are not served offline until it
complies, and are again once it does.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from cscd.screenlock import SCREENSAVER, SESSION, check
from tests.helpers.fake_screenlock import FakeSessionManager, FakeSettingsPortal
from tests.helpers.mount_env import MountEnv
from tests.helpers.ops import cli_json
from tests.helpers.wait import eventually

pytestmark = pytest.mark.log_allows(r"\[7020\]", r"is now offline")

GOOD = {(SCREENSAVER, "lock-enabled"): True, (SESSION, "idle-delay"): 300, (SCREENSAVER, "lock-delay"): 0}


@pytest.fixture
def system(tmp_path: Path):
    bus = FakeSessionManager(tmp_path / "system-bus", uid=os.getuid())
    yield bus
    bus.close()


@pytest.fixture
def portal(tmp_path: Path):
    bus = FakeSettingsPortal(tmp_path / "session-bus", dict(GOOD))
    yield bus
    bus.close()


def verdict(system, portal, max_idle_s: int = 900):
    return check(os.getuid(), system_bus=system.address, session_bus=portal.address, max_idle_s=max_idle_s)


def test_what_makes_a_session_comply(system, portal) -> None:
    v = verdict(system, portal)
    assert v.compliant and "locks after 5 min idle" in v.reason, v
    portal.settings[(SCREENSAVER, "lock-delay")] = 720
    v = verdict(system, portal)
    assert not v.compliant and "locks after 17 min idle; the policy allows at most 15 min" in v.reason, v
    portal.settings[(SCREENSAVER, "lock-delay")] = 0
    portal.settings[(SCREENSAVER, "lock-enabled")] = False
    assert not verdict(system, portal).compliant
    portal.settings[(SCREENSAVER, "lock-enabled")] = True
    portal.settings[(SESSION, "idle-delay")] = 0
    assert "never blanks" in verdict(system, portal).reason
    portal.settings[(SESSION, "idle-delay")] = 300
    system.password_mode = 2
    v = verdict(system, portal)
    assert not v.compliant and "no password" in v.reason, v
    system.password_mode = 0
    system.session_type = "tty"
    v = verdict(system, portal)
    assert v.compliant and "no graphical session" in v.reason, v


def test_a_desktop_that_does_not_say_cannot_comply(system, portal, tmp_path: Path) -> None:
    del portal.settings[(SCREENSAVER, "lock-enabled")]
    v = verdict(system, portal)
    assert not v.compliant and "the desktop does not say whether the screen locks" in v.reason, v
    old = FakeSettingsPortal(tmp_path / "old-portal", dict(GOOD), version=1)
    try:
        assert check(os.getuid(), system_bus=system.address, session_bus=old.address, max_idle_s=900).compliant, \
            "a version-1 portal (Read only) answers too"
    finally:
        old.close()
    v = check(os.getuid(), system_bus=system.address, session_bus=f"unix:path={tmp_path}/nobody",
              max_idle_s=900)
    assert not v.compliant and "no desktop settings portal answers" in v.reason, v


def lock_env(mount_env, system, portal, *, refuse_offline: bool) -> MountEnv:
    env = mount_env(start=False, extra={"logind_dbus": system.address, "settings_dbus": portal.address})
    policy_dir = env.daemon.workdir / "cscd-policy"
    policy_dir.mkdir(exist_ok=True)
    (policy_dir / "policy.yaml").write_text(
        "device:\n  require_screen_lock: true\n  screen_lock_max_idle_min: 10\n"
        f"  offline_when_noncompliant: {'false' if refuse_offline else 'true'}\n")
    return env


def screen_lock(env: MountEnv) -> dict:
    return cli_json(env.daemon, "status")["device"]["screen_lock"]


def stats_gauge(env: MountEnv, name: str) -> float | None:
    for family in cli_json(env.daemon, "stats")["metrics"]:
        if family["name"] == name:
            return family["samples"][0]["value"]
    return None


def test_a_session_without_a_screen_lock_gets_no_offline_cache_until_it_has_one(mount_env, system, portal) -> None:
    portal.settings[(SCREENSAVER, "lock-enabled")] = False
    env = lock_env(mount_env, system, portal, refuse_offline=True)
    (env.server / "report.txt").write_text("numbers")
    env.start_daemon()
    eventually(lambda: screen_lock(env)["compliant"] is False, 10, "the session was not found out of compliance")
    assert "[7020]" in env.daemon.log_text()
    assert stats_gauge(env, "device_compliant") == 0.0
    assert "does NOT comply" in env.daemon.run_cli("status").stdout
    assert (env.docs / "report.txt").read_text() == "numbers", "online, the folder is served as always"

    env.proxy.stop_listening()
    env.proxy.reset()
    eventually(lambda: cli_json(env.daemon, "status")["folders"]["Documents"]["mode"] != "online", 20,
               "the folder did not go offline")
    with pytest.raises(OSError) as exc:
        (env.docs / "report.txt").read_text()
    assert exc.value.errno == errno.EHOSTDOWN, exc.value
    with pytest.raises(OSError):
        (env.docs / "new.txt").write_text("not while the cache is shut")

    portal.settings[(SCREENSAVER, "lock-enabled")] = True  # the user turns the lock on
    eventually(lambda: screen_lock(env)["compliant"] is True, 10, "compliance was not seen again")
    assert (env.docs / "report.txt").read_text() == "numbers", "the cache serves offline again"
    assert "[7021]" in env.daemon.log_text()
    assert stats_gauge(env, "device_compliant") == 1.0
    env.proxy.resume_listening()


def test_a_policy_that_only_reports_leaves_the_offline_cache_open(mount_env, system, portal) -> None:
    system.password_mode = 2
    env = lock_env(mount_env, system, portal, refuse_offline=False)
    (env.server / "report.txt").write_text("numbers")
    env.start_daemon()
    assert (env.docs / "report.txt").read_text() == "numbers"
    eventually(lambda: screen_lock(env)["compliant"] is False, 10, "the session was not found out of compliance")
    assert screen_lock(env)["offline_refused"] is False
    env.proxy.stop_listening()
    env.proxy.reset()
    eventually(lambda: cli_json(env.daemon, "status")["folders"]["Documents"]["mode"] != "online", 20,
               "the folder did not go offline")
    assert (env.docs / "report.txt").read_text() == "numbers"
    env.proxy.resume_listening()


def test_without_the_policy_nothing_is_asked(make_env) -> None:
    env = make_env()
    status = cli_json(env.daemon, "status")
    assert status["device"]["screen_lock"]["required"] is False
    assert stats_gauge(env, "device_compliant") is None
    assert "screen lock" not in env.daemon.run_cli("status").stdout

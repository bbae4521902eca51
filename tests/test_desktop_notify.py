"""Desktop notifications (issue 19, part 2), shown by a real notification server.

``dunst`` on an ``Xvfb`` display and a private session bus (``tests/helpers/desktop.py``); the
daemon's ``notify_dbus`` names that bus. A conflict made as in ``test_offline_commands``
(the server and this machine change one file while the link is down) must reach dunst with
both names; a screenshot of it is kept under ``$CSCD_TEST_ARTIFACTS``. The offline note is
told too; with the policy key ``offline_files.notifications: false`` nothing is; and with
no notification server on the bus the daemon stays quiet (no warning) and works on.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.helpers import desktop
from tests.helpers.ops import make_conflict, wait_control
from tests.helpers.private_bus import start_bus
from tests.helpers.wait import eventually

CONFLICT_LOGS = (r"folder Documents is now offline: ",
                 r"conflict: b'doc\.txt' changed on the server and here; the local version is kept",
                 r"\[4000\] conflict in Documents: 1 file changed on both sides")

pytestmark = pytest.mark.skipif(desktop.available() is not None,
                                reason=f"needs {desktop.available()} (bash .ci/setup installs them)")


@pytest.fixture
def session(tmp_path):
    s = desktop.DesktopSession(tmp_path / "desktop")
    yield s
    s.close()


@pytest.mark.log_allows(*CONFLICT_LOGS)
def test_a_conflict_and_going_offline_reach_the_notification_server(session, mount_env):
    env = mount_env(extra={"notify_dbus": session.address})
    wait_control(env.daemon)
    copy = make_conflict(env)
    eventually(lambda: session.displayed() >= 2, 15, "the offline and conflict notifications did not show")
    time.sleep(0.5)  # dunst draws after it counts: let the picture catch up
    shot = session.screenshot("conflict-notification")
    assert shot.stat().st_size > 0
    notes = session.history()
    offline = [n for n in notes if n["summary"] == "Documents is offline"]
    conflict = [n for n in notes if n["summary"] == "Sync conflict in Documents"]
    assert len(offline) == 1 and len(conflict) == 1, notes  # once each: spaced, not repeated
    assert all(n["appname"] == "cscd" for n in notes)
    assert "doc.txt changed here and on the server" in conflict[0]["body"], conflict
    assert copy in conflict[0]["body"], (copy, conflict)


@pytest.mark.log_allows(*CONFLICT_LOGS)
def test_the_policy_can_turn_them_off(session, mount_env):
    env = mount_env(extra={"notify_dbus": session.address}, start=False)
    policy = env.daemon.workdir / f"{env.daemon.name}-policy"
    policy.mkdir(parents=True, exist_ok=True)
    (policy / "policy.yaml").write_text("offline_files:\n  notifications: false\n")
    env.start_daemon()
    wait_control(env.daemon)
    make_conflict(env)
    eventually(lambda: "[4000] conflict in Documents" in env.daemon.log_text(), 15, "no conflict event")
    assert session.history() == []


@pytest.mark.log_allows(*CONFLICT_LOGS)
def test_without_a_notification_server_the_daemon_stays_quiet(tmp_path, mount_env):
    address, pid = start_bus(tmp_path / "bare-bus")  # a session bus nobody serves notifications on
    try:
        env = mount_env(extra={"notify_dbus": address})
        wait_control(env.daemon)
        make_conflict(env)
        eventually(lambda: "desktop notifications not shown" in env.daemon.log_text(), 15,
                   "the daemon did not notice that nobody shows notifications")
        (env.docs / "after.txt").write_text("still working")
        eventually(lambda: (env.server / "after.txt").exists(), 15, "sync stopped")
    finally:
        os.kill(pid, 15)


# ------------------------------------------------ what each event tells, and how often (no bus)


def _event(event_id, folder="Documents", **fields):
    from cscd.events import Event

    return Event(1, 0.0, int(event_id), event_id.name, "INFO", folder, "", fields)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _notifier(**kw):
    from cscd.operations.desktop import DesktopNotifier

    clock = _Clock()
    return DesktopNotifier(enabled=lambda folder: True, clock=clock, **kw), clock


def test_each_kind_of_news_and_its_spacing():
    from cscd.events import EventId
    from cscd.operations.desktop import BURST, LONG_OUTAGE_S, SAME_NOTE_S

    n, clock = _notifier(cache_usage=lambda: (95, 100))
    problem = n.note_of(_event(EventId.SYNC_PROBLEM, path="Documents/a.odt", reason="access denied"))
    assert problem.summary == "A file in Documents keeps failing to sync" and "a.odt: access denied" in problem.body
    down = n.note_of(_event(EventId.MODE_CHANGED, mode="offline", previous="online", reason="no route", cause="error"))
    assert down.summary == "Documents is offline"
    clock.now += 30  # a short outage: back online without a note
    assert n.note_of(_event(EventId.MODE_CHANGED, mode="online", previous="offline", reason="", cause="error")) is None
    n.note_of(_event(EventId.MODE_CHANGED, mode="offline", previous="online", reason="", cause="error"))
    clock.now += LONG_OUTAGE_S + 1
    back = n.note_of(_event(EventId.MODE_CHANGED, mode="online", previous="offline", reason="", cause="error"))
    assert back.summary == "Documents is back online" and "5 minutes offline" in back.body
    assert n.note_of(_event(EventId.SYNC_FINISHED, trigger="change")) is None  # routine news is not told
    n._check_cache()  # noqa: SLF001 - the periodic look at the cache, run once here
    assert [p.summary for p in n._pending] == ["Offline Files cache nearly full"]  # noqa: SLF001
    n.profile_pull_timed_out("still loading")
    # spacing: one note of a kind per folder a minute, BURST a minute in all
    assert n._may_send(problem) and not n._may_send(problem)  # noqa: SLF001
    clock.now += SAME_NOTE_S
    assert n._may_send(problem)  # noqa: SLF001
    fresh, _ = _notifier()
    others = [fresh.note_of(_event(EventId.SYNC_PROBLEM, folder=f"F{i}", path="x", reason="r"))
              for i in range(BURST + 1)]
    assert [fresh._may_send(o) for o in others] == [True] * BURST + [False]  # noqa: SLF001

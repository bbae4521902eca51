"""Shared fixtures: one private smbd on loopback for the whole test session.

The server is real (``cscd.samba.EmbeddedSamba``) and serves ``share`` and a second share
``other`` (for target moves across shares): tests that need to kill or pause a server take
``own_smbd`` so that this one stays undisturbed. Teardown fails the run if a server's log shows
a PANIC. ``mount_env`` is the one fixture that gives a test a mounted daemon, and fails the
test on anything unexpected in the daemon's log (``log_allows``); ``penv`` is one built on it
with a policy directory and a home (``tests/helpers/policy_env.py``); ``mode_env`` runs a
module's tests once per mode (cached, uncached, offline) on one daemon per mode.
Also registers the ``churn`` mark and the ``--soak`` option of ``tests/test_churn.py``, and
``overlaps_the_run(fixture)``: a test that mostly waits (a real ticket running out) has its
session fixture set up with the run's first test, plays in a thread beside the others, and
runs last to judge what it recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cscd.samba import EmbeddedSamba
from tests.helpers.dfs import DfsNamespace
from tests.helpers.keyring import Keyring
from tests.helpers.mount_env import MountEnv, unexpected_warnings
from tests.helpers.ops import wait_control
from tests.helpers.policy_env import PolicyEnv
from tests.helpers.ticket_expiry import TicketExpiryScenario


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", default=False,
                     help="repeat the churn workloads (tests/test_churn.py) for about an hour in all")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "churn: real programs (sqlite3, git, tar, rsync, stress-ng, fio, editors' save "
        "patterns) drive the real mount; judged by outcome")
    config.addinivalue_line(
        "markers", "log_allows(*patterns): daemon log lines at WARNING or worse that this test "
        "expects (regular expressions searched in each line); any other fails it (``mount_env``)")
    config.addinivalue_line(
        "markers", "overlaps_the_run(fixture): set the session fixture up with the run's first test; "
        "the test itself runs last")


@pytest.hookimpl(trylast=True)  # after pytest's own reordering by fixture scope
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    late = [item for item in items if item.get_closest_marker("overlaps_the_run")]
    early = [item for item in items if not item.get_closest_marker("overlaps_the_run")]
    if not late or not early:
        return
    for item in late:
        fixture = item.get_closest_marker("overlaps_the_run").args[0]
        if fixture not in early[0].fixturenames:
            early[0].fixturenames.append(fixture)
    items[:] = early + late


@pytest.fixture(scope="session")
def ticket_expiry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TicketExpiryScenario]:
    """``tests/helpers/ticket_expiry.py``, started now and played in a thread."""
    scenario = TicketExpiryScenario(tmp_path_factory.mktemp("ticket-expiry")).start()
    yield scenario
    scenario.cancel()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Keep each phase's report on the item: ``mount_env`` skips its log check after a
    failure (the failure says more than the warnings it caused)."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def _serve(server: EmbeddedSamba) -> Iterator[EmbeddedSamba]:
    server.start()
    try:
        yield server
    finally:
        server.stop()
    if "PANIC" in server.log_text():
        pytest.fail(f"smbd logged a PANIC; its log ends:\n{server.log_tail()}")


@pytest.fixture(scope="session")
def smbd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedSamba]:
    """A running private smbd shared by the session; its share is ``smbd.share_dir`` on disk,
    its second share ``other`` is ``smbd.extra_share_dir("other")``."""
    yield from _serve(EmbeddedSamba(tmp_path_factory.mktemp("smbd"), extra_shares=["other"]))


@pytest.fixture
def own_smbd(tmp_path: Path) -> Iterator[EmbeddedSamba]:
    """A private smbd for one test, which the test may kill, pause and start again."""
    yield from _serve(EmbeddedSamba(tmp_path / "own-smbd"))


@pytest.fixture
def quiet_smbd(tmp_path: Path) -> Iterator[EmbeddedSamba]:
    """A private smbd for one test that sends no change notifications (``change notify = no``)."""
    yield from _serve(EmbeddedSamba(tmp_path / "quiet-smbd", extra_options={"change notify": "no"}))


@pytest.fixture
def dfs_namespace(tmp_path: Path) -> Iterator[DfsNamespace]:
    r"""A standalone DFS namespace (``\\127.0.0.1\dfs``) and two file servers on 127.0.0.2 and
    127.0.0.3 serving one directory (``tests/helpers/dfs.py``); the test adds its links."""
    ns = DfsNamespace(tmp_path / "dfs")
    try:
        ns.start()
        yield ns
    finally:
        ns.stop()
    if ns.panics():
        pytest.fail(f"smbd logged a PANIC: {', '.join(ns.panics())}")


@pytest.fixture
def keyring(tmp_path: Path) -> Iterator[Keyring]:
    """A real Secret Service (gnome-keyring) on a private bus, its login keyring unlocked."""
    ring = Keyring(tmp_path / "keyring")
    try:
        yield ring
    finally:
        ring.close()


@pytest.fixture
def mount_env(request: pytest.FixtureRequest, smbd: EmbeddedSamba, tmp_path: Path
              ) -> Iterator[Callable[..., MountEnv]]:
    """The one way a test gets a mounted daemon: ``mount_env(**MountEnv options)``.

    Returns a factory: ``server=`` (default the session's smbd; pass ``own_smbd`` to kill it),
    ``start=False`` to start the daemon yourself, ``subdir=`` for a second client, and
    ``MountEnv``'s own options (``timings``, ``offline``, ``extra``). At teardown every daemon
    it made is stopped and its cache checked (``MountEnv.close``), and its log is read: a
    traceback, or a line at WARNING or worse that no ``log_allows`` mark of the test, class
    or module allows, fails the test.
    """
    made: list[MountEnv] = []

    def make(*, server: EmbeddedSamba | None = None, start: bool = True, subdir: str = "client",
             **options: Any) -> MountEnv:
        env = MountEnv(server or smbd, tmp_path / (subdir if len(made) == 0 else f"{subdir}{len(made)}"),
                       **options)
        made.append(env)
        if start:
            env.start_daemon()
        return env

    try:
        yield make
    finally:
        problems: list[str] = []
        passed = getattr(request.node, "report_call", None) is not None and request.node.report_call.passed
        for env in made:
            lines = env.daemon.warnings()
            try:
                env.close()
            finally:
                if passed:
                    problems += [f"{env.daemon.log_path}: {line}"
                                 for line in unexpected_warnings(lines, request.node)]
        if problems:
            pytest.fail("the daemon logged what this test does not expect (add a log_allows mark "
                        "if it should):\n" + "\n".join(problems[:20]), pytrace=False)


#: The modes ``mode_env`` runs a module's tests in.
MODES = ("cached", "uncached", "offline")


@pytest.fixture(scope="module", params=MODES)
def mode_env(request: pytest.FixtureRequest, smbd: EmbeddedSamba,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, MountEnv]]:
    """``(mode, env)``: one daemon per mode for all of a module's tests, in each of ``MODES``
    (a folder that is cached, one that is not cached, and — the test cuts the link itself —
    offline); stopped (exit code 0) and its cache checked at the end (``MountEnv.close``).
    Module-scoped, so a test judges the daemon's log itself for the lines it caused (see
    ``tests/test_behaviour.py``'s ``case``), as rclone's vfstest runs one suite per cache mode."""
    mode = request.param
    env = MountEnv(smbd, tmp_path_factory.mktemp(f"behaviour-{mode}"))
    if mode == "uncached":
        env.daemon.folders["Documents"] = {"target": env.daemon.folders["Documents"], "offline": False}
    try:
        env.start_daemon()
        yield mode, env
    finally:
        env.close()


@pytest.fixture
def make_env(mount_env: Callable[..., MountEnv]) -> Callable[..., MountEnv]:
    """``mount_env`` whose daemon's control socket already answers."""

    def make(**kw: Any) -> MountEnv:
        env = mount_env(**kw)
        wait_control(env.daemon)
        return env

    return make


@pytest.fixture
def penv(mount_env: Callable[..., MountEnv], tmp_path: Path) -> PolicyEnv:
    """A ``PolicyEnv`` (a ``mount_env`` with ``policy_dir`` and ``home``); not started yet."""
    return PolicyEnv(mount_env, tmp_path)

"""Shared fixtures: one private smbd on loopback for the whole test session.

The server is real (``cscd.samba.EmbeddedSamba``): tests that need to kill or pause a server
start their own instance so that this one stays undisturbed. Teardown fails the run if the
server's log shows a PANIC. Also registers the ``churn`` mark and the ``--soak`` option of
``tests/test_churn.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cscd.samba import EmbeddedSamba


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", default=False,
                     help="repeat the churn workloads (tests/test_churn.py) for about an hour in all")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "churn: real programs (sqlite3, git, tar, rsync, stress-ng, fio, editors' save "
        "patterns) drive the real mount; judged by outcome")


@pytest.fixture(scope="session")
def smbd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedSamba]:
    """A running private smbd shared by the session; its share is ``smbd.share_dir`` on disk."""
    server = EmbeddedSamba(tmp_path_factory.mktemp("smbd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
    log_text = server.log_text()
    if "PANIC" in log_text:
        pytest.fail(f"smbd logged a PANIC; its log ends:\n{server.log_tail()}")


@pytest.fixture
def own_smbd(tmp_path: Path) -> Iterator[EmbeddedSamba]:
    """A private smbd for one test, which the test may kill and start again."""
    server = EmbeddedSamba(tmp_path / "own-smbd")
    server.start()
    try:
        yield server
    finally:
        server.stop()

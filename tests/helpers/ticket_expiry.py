"""A Kerberos ticket that expires under a running mount, played beside the rest of the suite.

The shortest ticket the test domain's KDC gives a service ticket from lives 125 s (it refuses
with 2 minutes or less left), and the scenario has to wait it out. Played inside its test it
was the longest test of the suite; here a thread plays it from the session's first test on,
with a domain controller of its own, and ``tests/test_kerberos.py`` (moved to the end of the
run by ``tests/conftest.py``) only joins it and judges what it recorded. Run alone, the test
waits the whole scenario, as before.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tests.helpers.ad_dc import EmbeddedDomain
from tests.helpers.daemon import DaemonProcess
from tests.helpers.mount_env import FAST_TIMINGS
from tests.helpers.wait import eventually

PASSWORD = "Al1ce-Pass.word"

#: the shortest ticket this KDC issues a service ticket from (it refuses with 2 minutes left)
SHORT_TICKET_S = 125

#: the whole scenario: domain start, the ticket's life, the checks; the test waits this long
SCENARIO_TIMEOUT_S = 420
#: How long the change made after the expiry may take to go up. Generous: the scenario runs
#: beside the rest of the suite, and on a loaded machine the DC's tree connect after the new
#: logon has answered STATUS_INTERNAL_ERROR for ~30 s (winbindd slow to map the user); cscd
#: retries, and the wait costs the suite nothing.
AFTER_EXPIRY_S = 120


def short_ticket(dc: EmbeddedDomain, ccache: Path) -> tuple[Path, float]:
    """A ``SHORT_TICKET_S`` ticket and its cifs service ticket in ``ccache``; (ccache, its end
    on the monotonic clock)."""
    dc.kinit("alice", PASSWORD, ccache, lifetime=f"{SHORT_TICKET_S}s")
    expires = time.monotonic() + SHORT_TICKET_S
    dc.service_ticket(ccache)
    return ccache, expires


class TicketExpiryScenario:
    """The scenario in a thread; ``result()`` waits for it and returns the daemon's log, or
    raises what went wrong in it (with the step it was at)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.step = "not started"
        self._log: str | None = None
        self._error: BaseException | None = None
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ticket-expiry", daemon=True)

    def start(self) -> TicketExpiryScenario:
        self._thread.start()
        return self

    def cancel(self) -> None:
        """End the wait early (the session ends before the test joined), and wait for the
        domain controller and the daemon to stop."""
        self._cancelled.set()
        self._thread.join(SCENARIO_TIMEOUT_S)

    def result(self) -> str:
        self._thread.join(SCENARIO_TIMEOUT_S)
        if self._thread.is_alive():
            raise AssertionError(f"the ticket-expiry scenario did not end in {SCENARIO_TIMEOUT_S} s "
                                 f"(at: {self.step})")
        if self._error is not None:
            raise AssertionError(f"the ticket-expiry scenario failed at: {self.step}") from self._error
        assert self._log is not None
        return self._log

    def _run(self) -> None:
        try:
            self._log = self._play()
        except BaseException as exc:  # noqa: BLE001 - handed to the test that joins
            self._error = exc

    def _play(self) -> str:
        self.step = "starting the domain controller"
        with EmbeddedDomain(self.base / "ad-dc") as domain:
            domain.add_user("alice", PASSWORD)
            disk = domain.share_dir / "expiry"
            disk.mkdir()
            disk.chmod(0o1777)
            (disk / "note.txt").write_text("from the DC")
            self.step = "taking the short ticket"
            ccache, expires = short_ticket(domain, self.base / "ccache")
            env = domain.env(ccache)
            daemon = DaemonProcess(self.base / "client", folders={"Documents": domain.unc("expiry")},
                                   credentials=self.base / "never-read", port=domain.smb_port,
                                   extra={"credentials": "kerberos", "timings": FAST_TIMINGS},
                                   env={k: env[k] for k in ("KRB5_CONFIG", "KRB5CCNAME")})
            with daemon:
                self.step = "mounting with the short ticket"
                daemon.start()
                docs = daemon.mount / "Documents"
                assert (docs / "note.txt").read_text() == "from the DC"
                (docs / "before.txt").write_text("before")
                eventually(lambda: (disk / "before.txt").exists(), 30, "the first change did not go up")
                self.step = "waiting for the first ticket to end"
                domain.kinit("alice", PASSWORD, ccache)  # a new ticket (10 h) into the same cache
                if self._cancelled.wait(max(0.0, expires - time.monotonic()) + 3):
                    raise RuntimeError("cancelled: the session ended first")
                self.step = "writing after the session expired"
                (docs / "after.txt").write_text("after the session expired")
                eventually(lambda: (disk / "after.txt").exists()
                           and (disk / "after.txt").read_text() == "after the session expired", AFTER_EXPIRY_S,
                           "the change made after the session expired did not go up")
                self.step = "done"
                return daemon.log_text()

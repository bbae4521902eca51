"""``DesktopSession``: a real notification server on a private session bus and X display.

Owns what a desktop gives a user's daemon for notifications, started from Debian's packages
and never the tester's own desktop: a private ``dbus-daemon`` (``private_bus.start_bus``), an
``Xvfb`` display, and ``dunst`` on both, which owns ``org.freedesktop.Notifications``.
``displayed()`` and ``history()`` read dunst's own view through ``dunstctl``; ``screenshot``
keeps what the screen shows (ImageMagick's ``import``) as a test artifact.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.helpers.private_bus import start_bus

#: where screenshots go, kept after the run (CI collects the directory)
ARTIFACTS = Path(os.environ.get("CSCD_TEST_ARTIFACTS", "/tmp/cscd-test-artifacts"))

DUNSTRC = """\
[global]
    font = Monospace 9
    geometry = "600x5-10+10"
    width = 600
    origin = top-right
    offset = 10x10
    format = "<b>%a</b>: %s\\n%b"
    show_indicators = no
    idle_threshold = 0
[urgency_low]
    timeout = 0
[urgency_normal]
    timeout = 0
[urgency_critical]
    timeout = 0
"""


def available() -> str | None:
    """None if everything is installed, else what is missing."""
    missing = [p for p in ("dbus-daemon", "Xvfb", "dunst", "dunstctl", "import") if shutil.which(p) is None]
    return ", ".join(missing) or None


def _free_display() -> int:
    for n in range(90, 200):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            return n
    raise RuntimeError("no free X display number between :90 and :199")


class DesktopSession:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.address, self._bus_pid = start_bus(workdir / "bus")
        self.display = f":{_free_display()}"
        self._xvfb = subprocess.Popen(["Xvfb", self.display, "-screen", "0", "1024x600x24", "-nolisten", "tcp"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait(lambda: Path(f"/tmp/.X11-unix/X{self.display[1:]}").exists(), "Xvfb")
        (workdir / "dunstrc").write_text(DUNSTRC)
        self._dunst_log = open(workdir / "dunst.log", "wb")  # noqa: SIM115 - closed in close()
        self._dunst = subprocess.Popen(["dunst", "-config", str(workdir / "dunstrc")], env=self.env(),
                                       stdout=self._dunst_log, stderr=subprocess.STDOUT)
        self._wait(lambda: self._ctl("is-paused").returncode == 0, "dunst")

    def env(self) -> dict[str, str]:
        return {**os.environ, "DBUS_SESSION_BUS_ADDRESS": self.address, "DISPLAY": self.display}

    def _ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["dunstctl", *args], env=self.env(), capture_output=True, text=True, timeout=10)

    def _wait(self, ready, what: str, timeout_s: float = 15.0) -> None:
        end = time.monotonic() + timeout_s
        while not ready():
            if time.monotonic() > end:
                raise RuntimeError(f"{what} did not start within {timeout_s:g} s")
            time.sleep(0.05)

    def displayed(self) -> int:
        return int(self._ctl("count", "displayed").stdout.strip() or 0)

    def history(self) -> list[dict[str, str]]:
        """Every notification dunst closed: appname, summary and body of each, oldest first."""
        self._ctl("close-all")
        data = json.loads(self._ctl("history").stdout)["data"][0]
        return [{k: n[k]["data"] for k in ("appname", "summary", "body")} for n in reversed(data)]

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        subprocess.run(["import", "-window", "root", str(path)], env=self.env(), check=True, timeout=30,
                       capture_output=True)
        return path

    def close(self) -> None:
        for proc in (self._dunst, self._xvfb):
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._dunst_log.close()
        try:
            os.kill(self._bus_pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

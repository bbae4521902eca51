"""``cscd demo`` and the CLI that finds it (issue 19, part 5).

The demo runs as a user would start it (``python -m cscd demo``, its own Samba on loopback)
with ``$XDG_STATE_HOME`` and ``$XDG_RUNTIME_DIR`` of the test: plain ``cscd status`` finds it
without ``--socket`` or ``--config``, the ``demo.yaml`` it names exists and works with
``--config``, and once it stopped the CLI says that nothing answers, naming where it looked.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.daemon import _env, run_cscd
from tests.helpers.wait import eventually


@pytest.fixture
def xdg(tmp_path: Path) -> dict[str, str]:
    env = {"XDG_STATE_HOME": str(tmp_path / "state"), "XDG_RUNTIME_DIR": str(tmp_path / "run"),
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    for d in env.values():
        Path(d).mkdir(mode=0o700)
    return env


def test_plain_status_finds_the_demo_and_says_when_it_is_gone(xdg, tmp_path):
    log = open(tmp_path / "demo.out", "w+")  # noqa: SIM115 - read back below
    demo = subprocess.Popen([sys.executable, "-m", "cscd", "demo"], stdout=log, stderr=subprocess.STDOUT,
                            env=_env(xdg), start_new_session=True)
    state = Path(xdg["XDG_STATE_HOME"]) / "cscd-demo"
    try:
        eventually(lambda: "look at it with: cscd status\n" in (tmp_path / "demo.out").read_text()
                   or demo.poll() is not None, 60, "the demo did not start")
        assert demo.poll() is None, (tmp_path / "demo.out").read_text()
        status = run_cscd("status", "--json", env_extra=xdg)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["folders"]["Documents"]["mode"] == "online"
        config = state / "demo.yaml"
        assert config.is_file() and "Documents" in config.read_text()
        by_config = run_cscd("status", "--json", "--config", str(config), env_extra=xdg)
        assert by_config.returncode == 0, by_config.stderr
        assert json.loads(by_config.stdout)["mount"] == str(state / "mnt")
        assert (state / "mnt" / "Documents" / "Welcome.txt").read_text().startswith("This file lives")
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(30)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
    gone = run_cscd("status", env_extra=xdg)
    assert gone.returncode == 4, (gone.stdout, gone.stderr)
    assert gone.stderr.startswith("cscd is not running ("), gone.stderr
    assert str(Path(xdg["XDG_RUNTIME_DIR"]) / "cscd") in gone.stderr, gone.stderr
    assert "Traceback" not in gone.stderr

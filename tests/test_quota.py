"""``df`` on the mount shows the share while online, the cache disk offline (issue 19, part 4).

The share's size and free space come from smbd's ``dfree command`` (a script that reports a
2 GiB share with 512 MiB left, as a quota would), read by the daemon through SMB's
FileFsFullSizeInformation; the test reads them back with plain statvfs(2) on the mount and
with ``cscd status``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cscd.samba import EmbeddedSamba
from tests.conftest import _serve
from tests.helpers.ops import wait_control
from tests.helpers.wait import eventually

GiB, MiB = 1 << 30, 1 << 20


def _report(script: Path, total_kib: int, free_kib: int) -> None:
    script.write_text(f"#!/bin/sh\necho {total_kib} {free_kib} 1024\n")
    script.chmod(0o755)


@pytest.fixture
def dfree(tmp_path: Path) -> Path:
    script = tmp_path / "dfree.sh"
    _report(script, 2 * GiB // 1024, 512 * MiB // 1024)
    return script


@pytest.fixture
def quota_smbd(tmp_path: Path, dfree: Path):
    yield from _serve(EmbeddedSamba(tmp_path / "quota-smbd",
                                    extra_options={"dfree command": str(dfree), "dfree cache time": "0"}))


def _df(path: Path) -> tuple[int, int]:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


@pytest.mark.log_allows(r"folder Documents is now offline: ")
def test_df_shows_the_share_online_and_the_cache_disk_offline(quota_smbd, dfree, mount_env):
    env = mount_env(server=quota_smbd, timings={"space_interval_s": 0.5})
    wait_control(env.daemon)
    eventually(lambda: _df(env.docs) == (2 * GiB, 512 * MiB), 10, "df does not show the share's quota")
    assert _df(env.mount) == (2 * GiB, 512 * MiB)  # one filesystem: the mount's root says the same
    status = json.loads(env.daemon.run_cli("status", "--json").stdout)
    assert status["folders"]["Documents"]["space"]["available_bytes"] == 512 * MiB
    disk = os.statvfs(env.daemon.cache)
    assert status["cache"]["disk"]["total_bytes"] == disk.f_blocks * disk.f_frsize
    shown = env.daemon.run_cli("status").stdout
    assert "space      512.0 MiB free of 2.0 GiB on the share" in shown, shown

    _report(dfree, 2 * GiB // 1024, 100 * MiB // 1024)  # the user filled the quota elsewhere
    eventually(lambda: _df(env.docs) == (2 * GiB, 100 * MiB), 10, "df kept an old free space")

    env.proxy.stop_listening()
    env.proxy.reset()
    eventually(lambda: json.loads(env.daemon.run_cli("status", "--json").stdout)
               ["folders"]["Documents"]["mode"] == "offline", 10, "offline not noticed")
    local = _df(env.daemon.cache)
    assert _df(env.docs)[0] == local[0]  # offline: the cache disk is what fills
    assert json.loads(env.daemon.run_cli("status", "--json").stdout)["folders"]["Documents"]["space"] is None

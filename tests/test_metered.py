"""Cost-aware sync: a metered network (the stand-in NetworkManager on a private bus) stops
background uploads; the per-user override keeps them; the state is followed live."""

from __future__ import annotations

import time

import pytest

from tests.helpers.fake_nm import METERED_GUESS_YES, METERED_NO, METERED_YES, FakeNetworkManager
from tests.helpers.ops import wait_control
from tests.helpers.wait import wait_for


@pytest.fixture
def nm(tmp_path):
    """A stand-in NetworkManager saying metered; tests take it before ``mount_env``, so the
    daemon is stopped before its bus goes away."""
    fake = FakeNetworkManager(tmp_path / "bus", metered=METERED_YES)
    try:
        yield fake
    finally:
        fake.close()


def modes(env):
    return [line.split("is now ", 1)[1] for line in env.daemon.log_text().splitlines() if "is now " in line]


def test_metered_network_holds_uploads_until_it_is_not(nm, mount_env):
    env = mount_env(extra={"metered_dbus": nm.address})
    wait_for(lambda: any(m.startswith("metered") for m in modes(env)), 10, "metered mode not entered")
    (env.docs / "held.txt").write_text("wait for a free network")
    time.sleep(2.0)  # several push rounds (upload delay 0.1 s): none may upload
    assert not (env.server / "held.txt").exists(), "uploaded on a metered network"
    nm.set_metered(METERED_NO)
    wait_for(lambda: (env.server / "held.txt").exists(), 10, "not uploaded once the network is free")
    assert modes(env)[-1].startswith("online")


def test_override_keeps_syncing_on_metered(nm, mount_env):
    env = mount_env(extra={"metered_dbus": nm.address}, offline={"sync_on_metered": True})
    (env.docs / "exec.txt").write_text("the executive's laptop syncs anyway")
    wait_for(lambda: (env.server / "exec.txt").exists(), 10, "override did not upload")
    assert not any(m.startswith("metered") for m in modes(env))


def test_file_source_for_machines_without_networkmanager(mount_env, tmp_path):
    flag = tmp_path / "metered"
    flag.write_text("yes\n")
    env = mount_env(extra={"metered_file": str(flag), "metered_dbus": "none"})
    wait_for(lambda: any(m.startswith("metered") for m in modes(env)), 10, "metered mode not entered")
    flag.write_text("no\n")
    wait_for(lambda: modes(env)[-1].startswith("online"), 10, "did not return online")


def test_manual_sync_uploads_on_a_metered_network(nm, mount_env):
    env = mount_env(extra={"metered_dbus": nm.address})
    wait_control(env.daemon)
    wait_for(lambda: any(m.startswith("metered") for m in modes(env)), 10, "metered mode not entered")
    (env.docs / "now.txt").write_text("the user asked for it")
    time.sleep(1.5)
    assert not (env.server / "now.txt").exists(), "uploaded on a metered network without being asked"
    result = env.daemon.run_cli("sync", "--wait")
    assert result.returncode == 0, result.stderr
    assert (env.server / "now.txt").read_text() == "the user asked for it"


@pytest.fixture
def guessed(tmp_path):
    """NetworkManager guessing "metered" (a phone's hotspot), with a modem at home."""
    fake = FakeNetworkManager(tmp_path / "bus", metered=METERED_GUESS_YES, modem=True)
    try:
        yield fake
    finally:
        fake.close()


def test_a_guessed_metered_network_syncs_until_the_modem_roams(guessed, mount_env):
    """Windows stops background sync on a metered connection only when roaming or near its
    limit: NetworkManager's guess-yes (no limit known) syncs on; ModemManager reporting
    roaming stops it; home again, it goes on."""
    env = mount_env(extra={"metered_dbus": guessed.address})
    (env.docs / "hotspot.txt").write_text("synced on a phone's hotspot")
    wait_for(lambda: (env.server / "hotspot.txt").exists(), 10, "not uploaded on a guessed-metered network")
    assert not any(m.startswith("metered") for m in modes(env))
    guessed.set_roaming(True)
    wait_for(lambda: any(m.startswith("metered") for m in modes(env)), 10, "roaming did not stop sync")
    (env.docs / "abroad.txt").write_text("wait until home")
    time.sleep(2.0)  # several push rounds: none may upload while roaming
    assert not (env.server / "abroad.txt").exists(), "uploaded while roaming"
    guessed.set_roaming(False)
    wait_for(lambda: (env.server / "abroad.txt").exists(), 10, "not uploaded once home again")
    assert "ModemManager says the modem is roaming" in env.daemon.log_text()

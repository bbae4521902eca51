"""``credentials: secret-service`` (issue 17): the NTLM password comes from the desktop's
Secret Service, here a real gnome-keyring-daemon on a private bus with the item libsecret's
``secret-tool`` stores. No password in a file, none in the daemon's log; a locked keyring or
a missing item is one line saying what to do.
"""

from __future__ import annotations

import shutil

import pytest

from tests.helpers.daemon import run_cscd
from tests.helpers.keyring import Keyring

pytestmark = pytest.mark.skipif(shutil.which("gnome-keyring-daemon") is None or shutil.which("secret-tool") is None,
                                reason="needs gnome-keyring and libsecret-tools")


def test_the_password_comes_from_the_keyring(mount_env, keyring: Keyring) -> None:
    env = mount_env(start=False, extra={"credentials": "secret-service"})
    env.credentials.unlink()  # no file anywhere
    keyring.store(env.smbd.password, application="cscd", user=env.smbd.username)
    env.daemon.env["DBUS_SESSION_BUS_ADDRESS"] = keyring.address
    (env.server / "note.txt").write_text("logged on with the keyring's password")
    env.start_daemon()
    assert (env.docs / "note.txt").read_text() == "logged on with the keyring's password"
    assert env.smbd.password not in env.daemon.log_text()


@pytest.mark.parametrize("case, needle", [
    ("locked", "the keyring holding cscd's password is locked: unlock the session"),
    ("empty", "no cscd password is stored; store one with: secret-tool store --label=cscd application cscd"),
])
def test_a_locked_or_empty_keyring_is_one_clear_line(mount_env, keyring: Keyring, case: str, needle: str) -> None:
    env = mount_env(start=False, extra={"credentials": "secret-service"})
    if case == "locked":
        keyring.store(env.smbd.password, application="cscd", user=env.smbd.username)
        keyring.lock()
    result = run_cscd("daemon", "--config", str(env.daemon.write_config()),
                      env_extra={"DBUS_SESSION_BUS_ADDRESS": keyring.address})
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("cscd: ") and needle in last, result.stderr
    assert env.smbd.password not in result.stderr

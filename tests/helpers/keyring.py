"""``Keyring``: a real Secret Service (gnome-keyring-daemon) on a private session bus.

The bus is a ``dbus-daemon`` in a temp dir (never the machine's); the keyring daemon runs
with a home of its own, its ``login`` keyring created and unlocked with a password on stdin,
as a PAM logon would. Items are stored and locked with ``secret-tool`` (libsecret's own
client), so what cscd reads is what the desktop's tools write.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.helpers.private_bus import start_bus
from tests.helpers.wait import wait_for


class Keyring:
    def __init__(self, workdir: Path, *, start: bool = True) -> None:
        """``start=False``: the bus only; ``start()`` brings the keyring later (a logon that
        unlocks it after the user's services started)."""
        self.address, self._bus_pid = start_bus(workdir, activation=False)
        self.env = {"DBUS_SESSION_BUS_ADDRESS": self.address, "HOME": str(workdir),
                    "XDG_DATA_HOME": str(workdir / "data"), "XDG_RUNTIME_DIR": str(workdir),
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        (workdir / "data").mkdir(exist_ok=True)
        self._daemon: subprocess.Popen[bytes] | None = None
        if start:
            self.start()

    def start(self) -> None:
        self._daemon = subprocess.Popen(
            ["gnome-keyring-daemon", "--unlock", "--components=secrets", "--foreground"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=self.env, start_new_session=True)
        assert self._daemon.stdin is not None
        self._daemon.stdin.write(b"keyring-password")
        self._daemon.stdin.close()
        wait_for(self._answers, 10, "gnome-keyring-daemon does not answer on the private bus")
        # It answers on the bus before it has read the password and made the login keyring
        # the default one; a client in between (cscd storing its key) would be asked for a
        # new keyring through a prompt nobody answers. A PAM logon has the same order, but
        # the desktop starts long after.
        wait_for(self._login_keyring_unlocked, 10, "gnome-keyring-daemon did not unlock the login keyring")

    def _answers(self) -> bool:
        res = subprocess.run(["secret-tool", "search", "application", "nothing-here"], env=self.env,
                             capture_output=True, timeout=10)
        return res.returncode in (0, 1) and b"not provided" not in res.stderr

    def _login_keyring_unlocked(self) -> bool:
        import secretstorage
        from jeepney.io.blocking import open_dbus_connection
        from secretstorage.exceptions import SecretStorageException

        with open_dbus_connection(bus=self.address) as conn:
            try:
                default = secretstorage.Collection(conn, "/org/freedesktop/secrets/aliases/default")
                return not default.is_locked()
            except SecretStorageException:
                return False

    def store(self, password: str, **attributes: str) -> None:
        args = [a for kv in attributes.items() for a in kv]
        subprocess.run(["secret-tool", "store", "--label=cscd", *args], input=password.encode(),
                       env=self.env, check=True, timeout=10)

    def lock(self) -> None:
        """Lock the login keyring, as a screen lock with "lock the keyring" does."""
        # secret-tool's own `lock` hangs on this libsecret (0.20.5); the Service.Lock call is
        # the same request, made through secretstorage.
        import secretstorage
        from jeepney.io.blocking import open_dbus_connection

        with open_dbus_connection(bus=self.address) as conn:
            collection = secretstorage.Collection(conn, "/org/freedesktop/secrets/collection/login")
            collection.lock()
            assert collection.is_locked()

    def close(self) -> None:
        if self._daemon is not None:
            self._daemon.terminate()
            try:
                self._daemon.wait(5)
            except subprocess.TimeoutExpired:
                self._daemon.kill()
        try:
            os.kill(self._bus_pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

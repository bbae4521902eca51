"""A private D-Bus session bus with a stand-in NetworkManager that answers for ``Metered``.

Owns ``FakeNetworkManager``: starts ``dbus-daemon`` in a temp dir (never the system bus),
owns ``org.freedesktop.NetworkManager`` on it from a thread, answers Properties.Get/GetAll
for ``Metered`` (u) and emits PropertiesChanged when a test flips it. With ``modem=True`` it
also owns ``org.freedesktop.ModemManager1`` with one modem, whose 3GPP registration state
(home or roaming) ``set_roaming`` changes; ObjectManager.GetManagedObjects reports it.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
from pathlib import Path

from jeepney import DBusAddress, MessageType, message_bus, new_method_return, new_signal
from jeepney.io.blocking import open_dbus_connection

NM_NAME = "org.freedesktop.NetworkManager"
NM_PATH = "/org/freedesktop/NetworkManager"
PROPS = "org.freedesktop.DBus.Properties"
METERED_YES, METERED_NO, METERED_GUESS_YES = 1, 2, 3
MM_NAME = "org.freedesktop.ModemManager1"
MM_MODEM = "/org/freedesktop/ModemManager1/Modem/0"
MM_3GPP = "org.freedesktop.ModemManager1.Modem.Modem3gpp"
REGISTERED_HOME, REGISTERED_ROAMING = 1, 5


class FakeNetworkManager:
    def __init__(self, workdir: Path, metered: int = METERED_NO, *, modem: bool = False) -> None:
        self.modem = modem
        self.registration = REGISTERED_HOME
        workdir.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(
            ["dbus-daemon", "--session", "--print-address=1", "--print-pid=1", "--fork",
             f"--address=unix:dir={workdir}"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.split()
        self.address, self.pid = out[0], int(out[1])
        self.value = metered
        self._changes: queue.Queue[int] = queue.Queue()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-nm", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the stand-in NetworkManager did not start")

    def set_metered(self, value: int) -> None:
        self._changes.put(value)

    def set_roaming(self, roaming: bool) -> None:
        self.registration = REGISTERED_ROAMING if roaming else REGISTERED_HOME

    def _serve(self) -> None:
        conn = open_dbus_connection(self.address)
        reply = conn.send_and_get_reply(message_bus.RequestName(NM_NAME))
        assert reply.body[0] == 1, reply.body
        if self.modem:
            reply = conn.send_and_get_reply(message_bus.RequestName(MM_NAME))
            assert reply.body[0] == 1, reply.body
        self._ready.set()
        try:
            while not self._stop.is_set():
                try:
                    value = self._changes.get_nowait()
                    self.value = value
                    sig = new_signal(DBusAddress(NM_PATH, interface=PROPS), "PropertiesChanged", "sa{sv}as",
                                     (NM_NAME, {"Metered": ("u", value)}, []))
                    conn.send(sig)
                except queue.Empty:
                    pass
                try:
                    msg = conn.receive(timeout=0.05)
                except TimeoutError:
                    continue
                if msg.header.message_type != MessageType.method_call:
                    continue
                member = msg.header.fields.get(3)  # HeaderFields.member
                if member == "Get":
                    conn.send(new_method_return(msg, "v", (("u", self.value),)))
                elif member == "GetAll":
                    conn.send(new_method_return(msg, "a{sv}", ({"Metered": ("u", self.value)},)))
                elif member == "GetManagedObjects" and self.modem:
                    objects = {MM_MODEM: {MM_3GPP: {"RegistrationState": ("u", self.registration)}}}
                    conn.send(new_method_return(msg, "a{oa{sa{sv}}}", (objects,)))
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

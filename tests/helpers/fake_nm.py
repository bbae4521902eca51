"""A stand-in NetworkManager (and ModemManager) on a private bus that answers for ``Metered``.

Owns ``FakeNetworkManager``: starts ``dbus-daemon`` in a temp dir (never the system bus),
owns ``org.freedesktop.NetworkManager`` on it from a thread, answers Properties.Get/GetAll
for ``Metered`` (u) and emits PropertiesChanged when a test flips it. With ``modem=True`` it
also owns ``org.freedesktop.ModemManager1`` with one modem, whose 3GPP registration state
(home or roaming) ``set_roaming`` changes; ObjectManager.GetManagedObjects reports it.
"""

from __future__ import annotations

import queue
from pathlib import Path

from jeepney import DBusAddress, Message, new_method_return, new_signal
from jeepney.io.blocking import DBusConnection

from tests.helpers.private_bus import BusService

NM_NAME = "org.freedesktop.NetworkManager"
NM_PATH = "/org/freedesktop/NetworkManager"
PROPS = "org.freedesktop.DBus.Properties"
METERED_YES, METERED_NO, METERED_GUESS_YES = 1, 2, 3
MM_NAME = "org.freedesktop.ModemManager1"
MM_MODEM = "/org/freedesktop/ModemManager1/Modem/0"
MM_3GPP = "org.freedesktop.ModemManager1.Modem.Modem3gpp"
REGISTERED_HOME, REGISTERED_ROAMING = 1, 5


class FakeNetworkManager(BusService):
    def __init__(self, workdir: Path, metered: int = METERED_NO, *, modem: bool = False) -> None:
        self.modem = modem
        self.names = (NM_NAME, MM_NAME) if modem else (NM_NAME,)
        self.registration = REGISTERED_HOME
        self.value = metered
        self._changes: queue.Queue[int] = queue.Queue()
        super().__init__(workdir)

    def set_metered(self, value: int) -> None:
        self._changes.put(value)

    def set_roaming(self, roaming: bool) -> None:
        self.registration = REGISTERED_ROAMING if roaming else REGISTERED_HOME

    def tick(self, conn: DBusConnection) -> None:
        try:
            value = self._changes.get_nowait()
        except queue.Empty:
            return
        self.value = value
        conn.send(new_signal(DBusAddress(NM_PATH, interface=PROPS), "PropertiesChanged", "sa{sv}as",
                             (NM_NAME, {"Metered": ("u", value)}, [])))

    def answer(self, conn: DBusConnection, msg: Message, member: str) -> None:
        if member == "Get":
            conn.send(new_method_return(msg, "v", (("u", self.value),)))
        elif member == "GetAll":
            conn.send(new_method_return(msg, "a{sv}", ({"Metered": ("u", self.value)},)))
        elif member == "GetManagedObjects" and self.modem:
            objects = {MM_MODEM: {MM_3GPP: {"RegistrationState": ("u", self.registration)}}}
            conn.send(new_method_return(msg, "a{oa{sa{sv}}}", (objects,)))

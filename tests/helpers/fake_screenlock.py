"""Stand-ins for what ``cscd.screenlock`` asks, each on a private bus of its own.

``FakeSessionManager`` plays the system bus's logind (``ListSessions``, a session's ``Type``)
and AccountsService (``FindUserById``, a user's ``PasswordMode``); ``FakeSettingsPortal``
plays xdg-desktop-portal's ``org.freedesktop.portal.Settings`` on the session bus
(``ReadOne``, and ``Read`` as portals before version 2 answer it), serving the GNOME keys a
test sets in ``settings`` and changes while the daemon runs. No real desktop runs in CI: these
answer as the real services do, with the same names, paths and signatures.
"""

from __future__ import annotations

from pathlib import Path

from jeepney import Message, new_error, new_method_return
from jeepney.io.blocking import DBusConnection

from tests.helpers.private_bus import BusService

SETTING_TYPES = {bool: "b", int: "u", str: "s"}


class FakeSessionManager(BusService):
    names = ("org.freedesktop.login1", "org.freedesktop.Accounts")

    def __init__(self, workdir: Path, *, uid: int, session_type: str = "wayland", password_mode: int = 0) -> None:
        self.uid = uid
        self.session_type = session_type
        self.password_mode = password_mode
        super().__init__(workdir)

    def answer(self, conn: DBusConnection, msg: Message, member: str) -> None:
        path = msg.header.fields.get(1)  # HeaderFields.path
        if member == "ListSessions":
            sessions = [("3", self.uid, "alice", "seat0", "/org/freedesktop/login1/session/_33")]
            conn.send(new_method_return(msg, "a(susso)", (sessions,)))
        elif member == "FindUserById":
            conn.send(new_method_return(msg, "o", (f"/org/freedesktop/Accounts/User{msg.body[0]}",)))
        elif member == "Get" and path.startswith("/org/freedesktop/login1/session/") and msg.body[1] == "Type":
            conn.send(new_method_return(msg, "v", (("s", self.session_type),)))
        elif member == "Get" and path.startswith("/org/freedesktop/Accounts/User") and msg.body[1] == "PasswordMode":
            conn.send(new_method_return(msg, "v", (("i", self.password_mode),)))
        else:
            conn.send(new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod"))


class FakeSettingsPortal(BusService):
    names = ("org.freedesktop.portal.Desktop",)

    def __init__(self, workdir: Path, settings: dict[tuple[str, str], object], *, version: int = 2) -> None:
        self.settings = settings
        self.version = version
        super().__init__(workdir)

    def answer(self, conn: DBusConnection, msg: Message, member: str) -> None:
        key = tuple(msg.body) if member in ("Read", "ReadOne") else None
        if member == "ReadOne" and self.version < 2:
            conn.send(new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod"))
        elif key is not None and key in self.settings:
            value = self.settings[key]
            inner = (SETTING_TYPES[type(value)], value)
            conn.send(new_method_return(msg, "v", (inner if member == "ReadOne" else ("v", inner),)))
        elif key is not None:
            conn.send(new_error(msg, "org.freedesktop.portal.Error.NotFound", "s", ("Requested setting not found",)))
        else:
            conn.send(new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod"))

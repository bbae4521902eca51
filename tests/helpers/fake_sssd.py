"""A stand-in SSSD InfoPipe on a private bus that answers ``GetUserAttr``.

Owns ``FakeInfoPipe``: ``org.freedesktop.sssd.infopipe`` answering
``org.freedesktop.sssd.infopipe.GetUserAttr(user, attributes)`` with the
``msDS-PrimaryComputer`` values a test gives (distinguished names of computer objects), as
SSSD does when ``sssd.conf`` exposes that attribute.
"""

from __future__ import annotations

from pathlib import Path

from jeepney import Message, new_method_return
from jeepney.io.blocking import DBusConnection

from tests.helpers.private_bus import BusService


class FakeInfoPipe(BusService):
    names = ("org.freedesktop.sssd.infopipe",)

    def __init__(self, workdir: Path, primary_computers: list[str]) -> None:
        self.primary_computers = list(primary_computers)
        self.asked: list[str] = []  # the users asked about
        super().__init__(workdir)

    def answer(self, conn: DBusConnection, msg: Message, member: str) -> None:
        if member == "GetUserAttr":
            user, attrs = msg.body
            self.asked.append(user)
            values = {a: ("as", list(self.primary_computers)) for a in attrs if a == "msDS-PrimaryComputer"}
            conn.send(new_method_return(msg, "a{sv}", (values,)))

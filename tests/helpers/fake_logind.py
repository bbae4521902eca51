"""A stand-in logind on a private bus: sessions that end, and inhibitor locks as pipes.

Owns ``FakeLogind``: ``org.freedesktop.login1`` answering ``Manager.ListSessions`` with the
sessions a test gives (``(id, uid, user, seat, path)``), ``Manager.Inhibit`` with the write end
of a fresh pipe (the lock is held while any copy of that fd is open, as logind's FIFO is), and
sending ``SessionRemoved`` when a test ends a session.
"""

from __future__ import annotations

import os
import queue
import select
from pathlib import Path

from jeepney import DBusAddress, Message, new_method_return, new_signal
from jeepney.io.blocking import DBusConnection

from tests.helpers.private_bus import BusService

LOGIND_PATH = "/org/freedesktop/login1"
MANAGER = "org.freedesktop.login1.Manager"


class FakeLogind(BusService):
    names = ("org.freedesktop.login1",)

    def __init__(self, workdir: Path, sessions: list[tuple[str, int, str, str, str]]) -> None:
        self.sessions = list(sessions)
        self.inhibits: list[tuple[str, ...]] = []
        self._lock_reads: list[int] = []  # read ends: EOF once the caller closed its lock
        self._removed: queue.Queue[tuple[str, str]] = queue.Queue()
        super().__init__(workdir)

    def end_session(self, session_id: str) -> None:
        gone = next(s for s in self.sessions if s[0] == session_id)
        self.sessions.remove(gone)
        self._removed.put((gone[0], gone[4]))

    def lock_released(self, index: int) -> bool:
        fd = self._lock_reads[index]
        readable, _, _ = select.select([fd], [], [], 0)
        return bool(readable) and os.read(fd, 1) == b""

    def tick(self, conn: DBusConnection) -> None:
        try:
            sid, path = self._removed.get_nowait()
        except queue.Empty:
            return
        conn.send(new_signal(DBusAddress(LOGIND_PATH, interface=MANAGER), "SessionRemoved", "so", (sid, path)))

    def answer(self, conn: DBusConnection, msg: Message, member: str) -> None:
        if member == "ListSessions":
            conn.send(new_method_return(msg, "a(susso)", (list(self.sessions),)))
        elif member == "Inhibit":
            self.inhibits.append(tuple(msg.body))
            r, w = os.pipe()
            self._lock_reads.append(r)
            conn.send(new_method_return(msg, "h", (w,)))
            os.close(w)  # the caller's copy is the lock now

    def close(self) -> None:
        super().close()
        for fd in self._lock_reads:
            os.close(fd)

"""A private D-Bus bus with a stand-in SSSD InfoPipe that answers ``GetUserAttr``.

Owns ``FakeInfoPipe``: starts ``dbus-daemon`` in a temp dir (never the system bus), owns
``org.freedesktop.sssd.infopipe`` on it from a thread, and answers
``org.freedesktop.sssd.infopipe.GetUserAttr(user, attributes)`` with the
``msDS-PrimaryComputer`` values a test gives (distinguished names of computer objects), as
SSSD does when ``sssd.conf`` exposes that attribute.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

from jeepney import MessageType, message_bus, new_method_return
from jeepney.io.blocking import open_dbus_connection

IFP_NAME = "org.freedesktop.sssd.infopipe"


class FakeInfoPipe:
    def __init__(self, workdir: Path, primary_computers: list[str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(
            ["dbus-daemon", "--session", "--print-address=1", "--print-pid=1", "--fork",
             f"--address=unix:dir={workdir}"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.split()
        self.address, self.pid = out[0], int(out[1])
        self.primary_computers = list(primary_computers)
        self.asked: list[str] = []  # the users asked about
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-sssd", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the stand-in SSSD InfoPipe did not start")

    def _serve(self) -> None:
        conn = open_dbus_connection(self.address)
        reply = conn.send_and_get_reply(message_bus.RequestName(IFP_NAME))
        assert reply.body[0] == 1, reply.body
        self._ready.set()
        try:
            while not self._stop.is_set():
                try:
                    msg = conn.receive(timeout=0.05)
                except TimeoutError:
                    continue
                if msg.header.message_type != MessageType.method_call:
                    continue
                if msg.header.fields.get(3) == "GetUserAttr":  # HeaderFields.member
                    user, attrs = msg.body
                    self.asked.append(user)
                    answer = {a: ("as", list(self.primary_computers)) for a in attrs if a == "msDS-PrimaryComputer"}
                    conn.send(new_method_return(msg, "a{sv}", (answer,)))
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

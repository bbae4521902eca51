"""``BusService``: a private D-Bus bus and one thread that owns service names on it.

What the stand-in system services share (``fake_nm``: NetworkManager and ModemManager;
``fake_sssd``: SSSD's InfoPipe): ``dbus-daemon`` started in a temp dir (never the machine's
buses), the names requested, method calls handed to ``answer`` and ``tick`` called between
them (for signals), and a ``close`` that stops the thread and the bus.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

from jeepney import Message, MessageType, message_bus
from jeepney.io.blocking import DBusConnection, open_dbus_connection


#: a session bus that starts no service on demand (no ``<servicedir>``): what owns a name on
#: it is what the test started, never the machine's gnome-keyring
_NO_ACTIVATION = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir={dir}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def start_bus(workdir: Path, *, activation: bool = True) -> tuple[str, int]:
    """A private session ``dbus-daemon`` listening in ``workdir``: (its address, its pid).
    ``activation=False``: it starts no service when a client calls a name nobody owns."""
    workdir.mkdir(parents=True, exist_ok=True)
    if activation:
        config = ["--session", f"--address=unix:dir={workdir}"]
    else:
        path = workdir / "bus.conf"
        path.write_text(_NO_ACTIVATION.format(dir=workdir))
        config = [f"--config-file={path}"]
    out = subprocess.run(
        ["dbus-daemon", *config, "--print-address=1", "--print-pid=1", "--fork"],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout.split()
    return out[0], int(out[1])


class BusService:
    """Subclasses name their services (``names``) and answer calls (``answer``)."""

    names: tuple[str, ...] = ()

    def __init__(self, workdir: Path) -> None:
        self.address, self.pid = start_bus(workdir)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=type(self).__name__, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"the stand-in {type(self).__name__} did not start")

    def answer(self, conn: DBusConnection, msg: Message, member: str) -> None:
        """Reply to one method call (``member`` is its name)."""

    def tick(self, conn: DBusConnection) -> None:
        """Called about every 50 ms: send what changed (signals)."""

    def _serve(self) -> None:
        conn = open_dbus_connection(self.address, enable_fds=True)  # logind hands out fds
        for name in self.names:
            reply = conn.send_and_get_reply(message_bus.RequestName(name))
            assert reply.body[0] == 1, reply.body
        self._ready.set()
        try:
            while not self._stop.is_set():
                self.tick(conn)
                try:
                    msg = conn.receive(timeout=0.05)
                except TimeoutError:
                    continue
                if msg.header.message_type == MessageType.method_call:
                    self.answer(conn, msg, msg.header.fields.get(3))  # HeaderFields.member
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

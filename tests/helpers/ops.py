"""Operations test support: a stand-in systemd notify socket and the daemon's control socket.

Owns ``NotifySocket`` (an AF_UNIX datagram socket in the abstract namespace, as systemd's
``$NOTIFY_SOCKET``, that records every message with its arrival time), ``JournalSocket``
(the same for journald's native protocol, decoded into field dicts), ``control_path`` and
``wait_control`` (the daemon's control socket, once it answers) and ``cli_json`` (one
``cscd`` command against a daemon, its JSON answer). No fixtures here.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
import uuid
from pathlib import Path

from cscd.control import ControlClient, ControlError, socket_path
from tests.helpers.daemon import DaemonProcess
from tests.helpers.wait import wait_for

__all__ = ["JournalSocket", "NotifySocket", "cli_json", "control_path", "decode_journal", "wait_control"]


class NotifySocket:
    """Receives sd_notify datagrams; ``address`` goes into the daemon's ``NOTIFY_SOCKET``."""

    def __init__(self) -> None:
        name = f"cscd-test-notify-{uuid.uuid4().hex[:12]}"
        self.address = "@" + name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + name)
        self.messages: list[tuple[float, str]] = []

    def receive(self, timeout_s: float) -> tuple[float, str] | None:
        """The next message (monotonic arrival time, text), or None after ``timeout_s``."""
        self.sock.settimeout(max(timeout_s, 0.001))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return None
        item = (time.monotonic(), data.decode())
        self.messages.append(item)
        return item

    def wait_for(self, needle: str, timeout_s: float) -> tuple[float, str]:
        """Receive until a message containing the line ``needle`` arrives; fail after the deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no notification with {needle!r} within {timeout_s:g} s; got "
                                     f"{[m for _, m in self.messages]!r}")
            item = self.receive(left)
            if item is not None and needle in item[1].split("\n"):
                return item

    def drain(self, duration_s: float) -> list[tuple[float, str]]:
        """Everything that arrives during ``duration_s``."""
        out = []
        deadline = time.monotonic() + duration_s
        while (left := deadline - time.monotonic()) > 0:
            item = self.receive(left)
            if item is not None:
                out.append(item)
        return out

    def close(self) -> None:
        self.sock.close()


def decode_journal(data: bytes) -> dict[str, str]:
    """One datagram of journald's native protocol → fields (the binary form too)."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        line = data[pos:end]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            pos = end + 1
        else:
            (size,) = struct.unpack("<Q", data[end + 1 : end + 9])
            fields[line.decode()] = data[end + 9 : end + 9 + size].decode()
            pos = end + 9 + size + 1
    return fields


class JournalSocket:
    """A stand-in for ``/run/systemd/journal/socket`` at ``path`` (``$CSCD_JOURNAL_SOCKET``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.entries: list[dict[str, str]] = []

    def collect(self) -> list[dict[str, str]]:
        """Read what arrived so far and return every entry seen."""
        while True:
            try:
                self.entries.append(decode_journal(self.sock.recv(1 << 20)))
            except TimeoutError:
                return self.entries

    def close(self) -> None:
        self.sock.close()


def control_path(daemon: DaemonProcess) -> Path:
    """Where that daemon's control socket is (the daemon inherits this process's environment)."""
    return socket_path(daemon.config_path, daemon.cache)


def wait_control(daemon: DaemonProcess, timeout_s: float = 10.0) -> Path:
    """Wait until the daemon answers ``hello`` on its control socket; return the socket path."""
    path = control_path(daemon)

    def answers() -> bool:
        with ControlClient(path, timeout_s=2.0) as client:
            return client.call("hello")["protocol"] == 1

    wait_for(answers, timeout_s, f"control socket {path} does not answer", ignore=(ControlError,))
    return path


def cli_json(daemon: DaemonProcess, *args: str, code: int = 0) -> dict:
    """Run ``cscd ARGS --json`` against ``daemon``; assert the exit code, return the JSON answer
    (for a failure, ``{"error": …}`` as the command prints it)."""
    result = daemon.run_cli(*args, "--json", timeout_s=60)
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout)


def folder_mode(env, folder: str = "Documents") -> str:
    """The folder's mode as ``cscd status`` reports it."""
    return cli_json(env.daemon, "status")["folders"][folder]["mode"]


def make_conflict(env, name: str = "doc.txt") -> str:
    """One file changed here and on the server while the link is down (``env``: a
    ``MountEnv``); returns the conflict copy's name once the link is back and sync made it."""
    from tests.helpers.wait import eventually

    (env.server / name).write_text("base")
    assert (env.docs / name).read_text() == "base"
    env.proxy.stop_listening()
    env.proxy.reset()
    eventually(lambda: folder_mode(env) == "offline", 10, "offline not noticed")
    (env.docs / name).write_text("mine")
    (env.server / name).write_text("theirs")
    env.proxy.resume_listening()
    stem = name.rsplit(".", 1)[0]
    eventually(lambda: [n for n in os.listdir(env.docs) if n.startswith(f"{stem} (conflict ")]
               and (env.docs / name).read_text() == "theirs", 15, "conflict not produced")
    return next(n for n in os.listdir(env.docs) if n.startswith(f"{stem} (conflict "))

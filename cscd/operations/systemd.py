"""systemd's side of the daemon: sd_notify (READY, STATUS, WATCHDOG, EXTEND_TIMEOUT) and the
watchdog task, plus the wait until the mount answers before READY is sent.

No library: an AF_UNIX datagram to ``$NOTIFY_SOCKET`` (``@name`` is the abstract name). The
watchdog pings from the trio loop, so a ping proves the loop — and with it FUSE — is not stuck.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import trio

from cscd.errors import CscdError
from cscd.types import FolderLink

log = logging.getLogger(__name__)


def sd_notify(message: str) -> None:
    """Send one notification to systemd if it asked for them (no library needed)."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message.encode())
    except OSError as exc:
        log.debug("sd_notify failed: %s", exc)


def modes_text(links: dict[str, FolderLink]) -> str:
    return ", ".join(f"{n}: {link.mode.value}" for n, link in links.items()) or "no folders"


async def wait_mount_answers(mount: Path, timeout_s: float = 30.0) -> None:
    """Stat the mountpoint from a thread: it returns only once ``pyfuse3.main`` answers."""
    try:
        with trio.fail_after(timeout_s):
            await trio.to_thread.run_sync(os.stat, mount, abandon_on_cancel=True)
    except (OSError, trio.TooSlowError) as exc:
        raise CscdError(f"{mount}: the mount does not answer: {exc or 'timed out'}") from None


def watchdog_interval_s() -> float | None:
    """Half of ``$WATCHDOG_USEC`` when systemd asked this process for watchdog pings."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    try:
        if not usec or (pid and int(pid) != os.getpid()) or int(usec) <= 0:
            return None
        return int(usec) / 2e6
    except ValueError:
        return None


async def watchdog(interval_s: float) -> None:
    # Runs on the trio loop, so a ping proves the loop (and with it FUSE) is not stuck.
    while True:
        sd_notify("WATCHDOG=1")
        await trio.sleep(interval_s)

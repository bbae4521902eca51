"""What the OS says about the network: whether it is metered (cost-aware sync).

Owns the metered state and its two sources: NetworkManager's ``Metered`` property over
D-Bus (read at start and followed through ``PropertiesChanged`` signals, with jeepney's trio
I/O — FACTS.md: dbus-fast does not run under trio), and a plain file for machines without
NetworkManager ("1"/"yes"/"true"/"metered" means metered). Either saying "metered" is enough.
No filesystem or cache work here; ``link.py`` reads ``is_metered()`` and decides the mode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import trio
from jeepney import DBusAddress, HeaderFields, MatchRule, MessageType, Properties, message_bus
from jeepney.io.trio import open_dbus_connection
from jeepney.wrappers import DBusErrorResponse

log = logging.getLogger(__name__)

NM_NAME = "org.freedesktop.NetworkManager"
NM_PATH = "/org/freedesktop/NetworkManager"
#: NMMetered: 0 unknown, 1 yes, 2 no, 3 guess-yes, 4 guess-no
METERED_VALUES = frozenset({1, 3})
RETRY_S = 30.0


class MeteredWatcher:
    """The metered state from NetworkManager and/or a file; ``on_change`` fires on a flip."""

    def __init__(self, *, bus: str | None = None, file: Path | None = None,
                 on_change: Callable[[], None] | None = None) -> None:
        self.bus = bus
        self.file = file
        self.on_change = on_change
        self.nm_metered = False
        self.nm_seen = False

    def _file_metered(self) -> bool:
        if self.file is None:
            return False
        try:
            return self.file.read_text().strip().lower() in ("1", "yes", "true", "metered")
        except OSError:
            return False

    def is_metered(self) -> bool:
        return self.nm_metered or self._file_metered()

    def describe(self) -> str:
        parts = []
        if self.bus:
            parts.append(f"NetworkManager ({'metered' if self.nm_metered else 'not metered'})"
                         if self.nm_seen else "NetworkManager (not reachable)")
        if self.file:
            parts.append(f"{self.file} ({'metered' if self._file_metered() else 'not metered'})")
        return ", ".join(parts) or "no source"

    def _set_nm(self, value: int) -> None:
        metered = value in METERED_VALUES
        self.nm_seen = True
        if metered != self.nm_metered:
            self.nm_metered = metered
            log.info("NetworkManager says the network is %s", "metered" if metered else "not metered")
            if self.on_change:
                self.on_change()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Follow NetworkManager while a bus is configured; reconnect every 30 s after a loss."""
        task_status.started()
        if not self.bus:
            await trio.sleep_forever()
        while True:
            try:
                await self._follow()
            except (OSError, DBusErrorResponse, ValueError, KeyError, trio.BrokenResourceError,
                    trio.EndOfChannel) as exc:
                log.info("NetworkManager's metered state unavailable on the %s bus: %s", self.bus, exc)
            if self.nm_metered:
                self.nm_metered = False
                if self.on_change:
                    self.on_change()
            await trio.sleep(RETRY_S)

    async def _follow(self) -> None:
        # A bare connection with our own receive loop: jeepney's trio router trips over its
        # own filter table when cancelled at shutdown (dictionary changed size).
        bus = self.bus.upper() if self.bus in ("system", "session") else self.bus
        conn = await open_dbus_connection(bus)
        try:
            rule = MatchRule(type="signal", interface="org.freedesktop.DBus.Properties",
                             member="PropertiesChanged", path=NM_PATH)
            # Serials of our own, far above the connection's counter, to match the replies.
            await conn.send(message_bus.AddMatch(rule), serial=0x7FFF0001)
            props = Properties(DBusAddress(NM_PATH, bus_name=NM_NAME, interface=NM_NAME))
            get_serial = 0x7FFF0002
            await conn.send(props.get("Metered"), serial=get_serial)
            while True:
                msg = await conn.receive()
                kind = msg.header.message_type
                if kind == MessageType.error and msg.header.fields.get(HeaderFields.reply_serial) == get_serial:
                    raise DBusErrorResponse(msg)
                if kind == MessageType.method_return and \
                        msg.header.fields.get(HeaderFields.reply_serial) == get_serial:
                    self._set_nm(int(msg.body[0][1]))
                elif kind == MessageType.signal and rule.matches(msg):
                    interface, changed, _invalidated = msg.body
                    if interface == NM_NAME and "Metered" in changed:
                        self._set_nm(int(changed["Metered"][1]))
        finally:
            with trio.CancelScope(shield=True):
                await conn.aclose()

"""What the OS says about the network's cost: whether background sync must stop (cost-aware sync).

Windows stops background sync on a metered connection only when it is *roaming*, or *near or
over its data limit*; under its limit a metered connection syncs as usual. Linux can tell
part of that, and this module maps it (``costly()`` is what ``link.py`` turns into the
metered mode):

- NetworkManager's ``Metered`` (read at start, followed through ``PropertiesChanged``):
  ``yes`` (1) — a user or admin marked the connection metered, the one place Linux records a
  data budget — counts as near the limit: costly. ``guess-yes`` (3) — NetworkManager guessed
  from the device (a phone's hotspot, a WWAN modem) — is metered with no known limit: sync
  goes on, as Windows does under the limit. ``no`` (2), ``guess-no`` (4), ``unknown`` (0): free.
- ModemManager on the same bus: a modem whose 3GPP registration state is roaming (5, 7 or 10)
  is costly, polled every ``ROAMING_POLL_S``.
- A plain file for machines without NetworkManager, written by an admin's script:
  ``roaming``, ``near-limit``, ``over-limit`` and, as before, ``1``/``yes``/``true``/``metered``
  mean costly; anything else free.

D-Bus through jeepney's trio I/O (FACTS.md: dbus-fast does not run under trio). No filesystem
or cache work here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import trio
from jeepney import DBusAddress, HeaderFields, MatchRule, MessageType, Properties, message_bus, new_method_call
from jeepney.io.trio import open_dbus_connection
from jeepney.wrappers import DBusErrorResponse

log = logging.getLogger(__name__)

NM_NAME = "org.freedesktop.NetworkManager"
NM_PATH = "/org/freedesktop/NetworkManager"
MM_NAME = "org.freedesktop.ModemManager1"
MM_PATH = "/org/freedesktop/ModemManager1"
MM_3GPP = "org.freedesktop.ModemManager1.Modem.Modem3gpp"
#: NMMetered: 0 unknown, 1 yes, 2 no, 3 guess-yes, 4 guess-no
METERED_VALUES = frozenset({1, 3})
#: the NMMetered values that mean a budget to keep (see the module docstring)
COSTLY_VALUES = frozenset({1})
#: MMModem3gppRegistrationState: roaming, roaming (SMS only), roaming (CSFB not preferred)
ROAMING_STATES = frozenset({5, 7, 10})
FILE_COSTLY = ("1", "yes", "true", "metered", "roaming", "near-limit", "over-limit")
RETRY_S = 30.0
ROAMING_POLL_S = 30.0


class MeteredWatcher:
    """The metered state from NetworkManager and/or a file; ``on_change`` fires on a flip."""

    def __init__(self, *, bus: str | None = None, file: Path | None = None,
                 on_change: Callable[[], None] | None = None, roaming_poll_s: float = ROAMING_POLL_S) -> None:
        self.bus = bus
        self.roaming_poll_s = roaming_poll_s
        self.file = file
        self.on_change = on_change
        self.nm_metered = False
        self.nm_value = 0
        self.nm_seen = False
        self.roaming = False

    def _file_costly(self) -> bool:
        if self.file is None:
            return False
        try:
            return self.file.read_text().strip().lower() in FILE_COSTLY
        except OSError:
            return False

    def is_metered(self) -> bool:
        """Whether background sync must stop now (kept under this name: ``link`` calls it)."""
        return self.costly()

    def costly(self) -> bool:
        return self.nm_value in COSTLY_VALUES or self.roaming or self._file_costly()

    def describe(self) -> str:
        parts = []
        if self.bus:
            state = {1: "metered (marked)", 3: "metered (guessed, no limit known)"}.get(self.nm_value, "not metered")
            parts.append(f"NetworkManager ({state})" if self.nm_seen else "NetworkManager (not reachable)")
            if self.roaming:
                parts.append("ModemManager (roaming)")
        if self.file:
            parts.append(f"{self.file} ({'costly' if self._file_costly() else 'free'})")
        return ", ".join(parts) or "no source"

    def _changed(self, before: bool) -> None:
        if self.costly() != before and self.on_change:
            self.on_change()

    def _set_nm(self, value: int) -> None:
        before = self.costly()
        self.nm_seen = True
        if value != self.nm_value:
            self.nm_value = value
            self.nm_metered = value in METERED_VALUES
            log.info("NetworkManager says the network is %s", {
                1: "metered (marked by the user or admin: background sync stops)",
                3: "metered (a guess: background sync goes on, as under a data limit)"}.get(value, "not metered"))
        self._changed(before)

    def _set_roaming(self, roaming: bool) -> None:
        before = self.costly()
        if roaming != self.roaming:
            self.roaming = roaming
            log.info("ModemManager says the modem is %s", "roaming" if roaming else "not roaming")
        self._changed(before)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Follow NetworkManager and poll ModemManager while a bus is configured; reconnect
        every 30 s after a loss."""
        task_status.started()
        if not self.bus:
            await trio.sleep_forever()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._poll_roaming, name="network.roaming")
            said = ""
            while True:
                try:
                    await self._follow()
                except (OSError, DBusErrorResponse, ValueError, KeyError, trio.BrokenResourceError,
                        trio.EndOfChannel) as exc:
                    # Said once per reason: a desktop without NetworkManager would log it
                    # every RETRY_S otherwise.
                    reason = f"{type(exc).__name__}: {exc}"
                    (log.info if reason != said else log.debug)(
                        "NetworkManager's metered state unavailable on the %s bus: %s", self.bus, exc)
                    said = reason
                self._set_nm(0)
                await trio.sleep(RETRY_S)

    def _bus_address(self) -> str:
        return self.bus.upper() if self.bus in ("system", "session") else self.bus

    async def _poll_roaming(self) -> None:
        """ModemManager's modems, asked every ``ROAMING_POLL_S``: is one of them roaming?
        No ModemManager (most desktops) is simply "not roaming", said once at debug level."""
        told = False
        while True:
            try:
                with trio.fail_after(5):
                    self._set_roaming(await self._any_modem_roaming())
            except (OSError, DBusErrorResponse, ValueError, KeyError, TypeError, trio.BrokenResourceError,
                    trio.EndOfChannel, trio.TooSlowError) as exc:
                if not told:
                    log.debug("ModemManager not reachable on the %s bus: %s", self.bus, exc)
                    told = True
                self._set_roaming(False)
            await trio.sleep(self.roaming_poll_s)

    async def _any_modem_roaming(self) -> bool:
        conn = await open_dbus_connection(self._bus_address())
        try:
            call = new_method_call(DBusAddress(MM_PATH, bus_name=MM_NAME,
                                               interface="org.freedesktop.DBus.ObjectManager"),
                                   "GetManagedObjects")
            serial = 0x7FFF0101
            await conn.send(call, serial=serial)
            while True:
                msg = await conn.receive()
                if msg.header.fields.get(HeaderFields.reply_serial) != serial:
                    continue
                if msg.header.message_type == MessageType.error:
                    raise DBusErrorResponse(msg)
                objects = msg.body[0]
                return any(int(ifaces[MM_3GPP]["RegistrationState"][1]) in ROAMING_STATES
                           for ifaces in objects.values()
                           if MM_3GPP in ifaces and "RegistrationState" in ifaces[MM_3GPP])
        finally:
            with trio.CancelScope(shield=True):
                await conn.aclose()

    async def _follow(self) -> None:
        # A bare connection with our own receive loop: jeepney's trio router trips over its
        # own filter table when cancelled at shutdown (dictionary changed size).
        conn = await open_dbus_connection(self._bus_address())
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

"""``SessionEndWatcher``: the roaming profile's push when the user's last session ends.

Without linger, systemd stops the user's manager at logoff and the daemon's SIGTERM push
does the work. With ``loginctl enable-linger`` (so sync goes on while nobody is logged on)
the daemon never stops at logoff, and a Windows user would expect the profile on the server
once they signed out. So the daemon follows logind on the system bus: at each
``SessionRemoved`` it lists the sessions left (``ListSessions``) and, when none of them is
this user's, runs the sign-out push (``ProfileService.logoff(sign_out=True)``) while it
holds a *delay* inhibitor lock on shutdown and sleep (``Inhibit``), so that a shutdown
straight after the logoff waits for the push (logind waits up to its
``InhibitDelayMaxSec``, 5 s by default; the push is bounded by ``PUSH_LIMIT_S``).

D-Bus through jeepney's trio I/O with file-descriptor passing (the inhibitor is an fd; closing
it releases the lock). No bus, or no logind on it: the watcher says so once and retries
every ``RETRY_S``; the SIGTERM push still covers the no-linger case.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from jeepney import DBusAddress, HeaderFields, MatchRule, MessageType, message_bus, new_method_call
from jeepney.io.trio import open_dbus_connection
from jeepney.wrappers import DBusErrorResponse

log = logging.getLogger(__name__)

LOGIND_NAME = "org.freedesktop.login1"
LOGIND_PATH = "/org/freedesktop/login1"
LOGIND_MANAGER = "org.freedesktop.login1.Manager"
RETRY_S = 30.0
#: the longest the session-end push holds the inhibitor
PUSH_LIMIT_S = 60.0
_LIST_SERIAL = 0x7FFE0001
_INHIBIT_SERIAL = 0x7FFE0002


class SessionEndWatcher:
    """Calls ``on_last_session_end`` each time the user's last logind session goes away."""

    def __init__(self, on_last_session_end: Callable[[], Awaitable[Any]], *, bus: str | None = "system",
                 uid: int | None = None) -> None:
        self.on_last_session_end = on_last_session_end
        self.bus = bus
        self.uid = os.getuid() if uid is None else uid
        #: how many times the last session ended and the push ran
        self.pushes = 0

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if not self.bus:
            await trio.sleep_forever()
        told = False
        while True:
            try:
                await self._follow()
            except (OSError, DBusErrorResponse, ValueError, KeyError, TypeError, trio.BrokenResourceError,
                    trio.EndOfChannel) as exc:
                if not told:
                    log.info("logind not reachable on the %s bus (%s): the roaming profile goes up when "
                             "the daemon stops, not at each logoff", self.bus, exc)
                    told = True
            await trio.sleep(RETRY_S)

    def _address(self) -> str:
        assert self.bus is not None
        return self.bus.upper() if self.bus in ("system", "session") else self.bus

    async def _follow(self) -> None:
        conn = await open_dbus_connection(self._address(), enable_fds=True)
        try:
            rule = MatchRule(type="signal", interface=LOGIND_MANAGER, member="SessionRemoved", path=LOGIND_PATH)
            await conn.send(message_bus.AddMatch(rule), serial=0x7FFE0000)
            await self._ask(conn, "ListSessions", _LIST_SERIAL)  # fails here if there is no logind
            log.info("following logind: the roaming profile goes up when the last session of uid %d ends",
                     self.uid)
            while True:
                msg = await conn.receive()
                if msg.header.message_type == MessageType.signal and rule.matches(msg):
                    if not await self._has_sessions(conn):
                        await self._push(conn)
        finally:
            with trio.CancelScope(shield=True):
                await conn.aclose()

    async def _ask(self, conn, member: str, serial: int, signature: str | None = None,
                   body: tuple = ()) -> Any:
        addr = DBusAddress(LOGIND_PATH, bus_name=LOGIND_NAME, interface=LOGIND_MANAGER)
        await conn.send(new_method_call(addr, member, signature, body), serial=serial)
        with trio.fail_after(10):
            while True:
                msg = await conn.receive()
                if msg.header.fields.get(HeaderFields.reply_serial) != serial:
                    continue
                if msg.header.message_type == MessageType.error:
                    raise DBusErrorResponse(msg)
                return msg.body

    async def _has_sessions(self, conn) -> bool:
        (sessions,) = await self._ask(conn, "ListSessions", _LIST_SERIAL)
        return any(int(uid) == self.uid for _sid, uid, *_ in sessions)

    async def _push(self, conn) -> None:
        lock = None
        try:
            (lock,) = await self._ask(conn, "Inhibit", _INHIBIT_SERIAL, "ssss",
                                      ("shutdown:sleep", "cscd", "uploading the roaming profile", "delay"))
        except (DBusErrorResponse, trio.TooSlowError) as exc:
            log.info("no inhibitor lock from logind (%s): a shutdown now may cut the profile push", exc)
        try:
            log.info("the last session ended: pushing the roaming profile")
            with trio.move_on_after(PUSH_LIMIT_S) as timer:
                await self.on_last_session_end()
            if timer.cancelled_caught:
                log.warning("roaming profile: the session-end push did not finish within %g s; the rest "
                            "goes at the next logoff", PUSH_LIMIT_S)
            self.pushes += 1
        finally:
            if lock is not None:
                lock.close()

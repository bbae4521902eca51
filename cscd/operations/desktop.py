"""Desktop notifications: what Sync Center's balloons tell a Windows user, on the session bus.

Owns turning events into ``org.freedesktop.Notifications`` calls (jeepney, trio I/O):

- a conflict, with both names and an action that lists the conflicts (``cscd conflicts`` in
  a terminal, or the folder in the file manager where there is no terminal);
- a file that keeps failing to sync (a sync problem, event 2040);
- a folder gone offline because the server went away, and back online after a long outage;
- the cache nearly full (``NEARLY_FULL`` of its limit);
- a roaming profile pull that did not finish before the session started.

It follows the event ring (``cscd.events.ring``) rather than hooking ``emit``, so nothing that
emits an event ever waits on D-Bus. Each kind of note is sent at most once per folder every
``SAME_NOTE_S`` and at most ``BURST`` notes a minute in all, as Windows spaces its reminder
balloons. The policy key ``offline_files.notifications: false`` silences it (read at each
note, so a reload applies at once). Without a session bus or a notification server it stays
silent: one line at INFO, never a warning, and it looks again later.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import subprocess
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from jeepney import DBusAddress, HeaderFields, MatchRule, MessageType, message_bus, new_method_call
from jeepney.io.trio import open_dbus_connection
from jeepney.wrappers import DBusErrorResponse, unwrap_msg

from cscd.events import EventId, ring

log = logging.getLogger(__name__)

APP_NAME = "cscd"
ICON = "folder-remote"
NOTIFICATIONS = DBusAddress("/org/freedesktop/Notifications", bus_name="org.freedesktop.Notifications",
                            interface="org.freedesktop.Notifications")
#: how often the event ring is read
POLL_S = 0.5
#: one note of a kind per folder at most this often
SAME_NOTE_S = 60.0
#: at most this many notes a minute in all
BURST = 5
#: "back online" is told only after an outage at least this long
LONG_OUTAGE_S = 300.0
#: the cache is "nearly full" from this share of its limit on
NEARLY_FULL = 0.9
#: how often the cache's use is looked at
CACHE_CHECK_S = 30.0
#: after a failed connection to the bus or the server, look again after this long
RETRY_S = 60.0
#: the longest a call on the bus may take (a server that hangs is treated as none)
CALL_TIMEOUT_S = 10.0
#: the action of a conflict note
ACTION_CONFLICTS = "conflicts"


@dataclass
class Note:
    kind: str
    folder: str | None
    summary: str
    body: str
    urgency: int = 1  # 0 low, 1 normal, 2 critical
    actions: tuple[tuple[str, str], ...] = ()
    #: where the conflict action opens things
    path: str | None = None


@dataclass
class DesktopNotifier:
    """Sends the notes (see the module docstring). ``conflicts`` lists the recorded conflicts
    (``cscd conflicts``' answer), ``cache_usage`` gives (used, limit) bytes."""

    #: whether notes about a folder (None: about no folder) are wanted now (policy)
    enabled: Callable[[str | None], bool]
    conflicts: Callable[[], list[dict]] = list
    cache_usage: Callable[[], tuple[int, int | None]] = lambda: (0, None)
    bus: str | None = "SESSION"
    clock: Callable[[], float] = trio.current_time
    #: notes sent, in order (``cscd stats`` and the tests read it)
    sent: list[Note] = field(default_factory=list)
    _last: dict[tuple[str, str | None], float] = field(default_factory=dict)
    _recent: deque = field(default_factory=deque)
    _offline_since: dict[str, float] = field(default_factory=dict)
    _pending: list[Note] = field(default_factory=list)
    _actions: dict[int, Note] = field(default_factory=dict)
    _told_unavailable: bool = False
    _next_cache: float = 0.0
    _serials: itertools.count = field(default_factory=lambda: itertools.count(1))

    # ------------------------------------------------------------ what to tell

    def note_of(self, event) -> Note | None:
        """The note an event gives, if any (``event`` as ``cscd.events.Event``)."""
        f, folder = event.fields, event.folder
        if event.id == EventId.CONFLICT_CREATED:
            latest = self.conflicts()[-1:] or [None]
            c = latest[0]
            if c is not None:
                original, copy = os.path.basename(c["original"]), os.path.basename(c["copy"])
                body = (f"{original} changed here and on the server. The server's version keeps the "
                        f"name; yours is kept as {copy}.")
                where = os.path.dirname(c["copy"])
            else:
                body, where = f"{f.get('path', 'A file')} changed here and on the server; both are kept.", None
            return Note("conflict", folder, f"Sync conflict in {folder or 'your folders'}", body,
                        actions=(("default", "Show conflicts"), (ACTION_CONFLICTS, "Show conflicts")), path=where)
        if event.id == EventId.SYNC_PROBLEM:
            return Note("problem", folder, f"A file in {folder} keeps failing to sync",
                        f"{f.get('path', '?')}: {f.get('reason', '?')}. It stays on this computer and "
                        "cscd keeps trying.", urgency=2)
        if event.id == EventId.MODE_CHANGED:
            now = self.clock()
            mode, previous = f.get("mode"), f.get("previous")
            if mode == "offline" and previous != "offline":
                self._offline_since.setdefault(folder, now)
                if f.get("cause", "error") == "error":  # the server went away, not a user's choice
                    return Note("offline", folder, f"{folder} is offline",
                                f"The server cannot be reached ({f.get('reason', '?')}). You keep working "
                                "on this computer's copy; changes go up when it is back.")
                return None
            if previous == "offline" and mode != "offline":
                since = self._offline_since.pop(folder, None)
                if since is not None and now - since >= LONG_OUTAGE_S:
                    return Note("online", folder, f"{folder} is back online",
                                f"After {(now - since) / 60:.0f} minutes offline; changes made meanwhile "
                                "are being synced.", urgency=0)
        return None

    def profile_pull_timed_out(self, message: str) -> None:
        """The session started before the roaming profile's pull finished."""
        self._pending.append(Note("profile", None, "Your profile is still loading", message))

    def _check_cache(self) -> None:
        used, limit = self.cache_usage()
        if limit and used >= NEARLY_FULL * limit:
            self._pending.append(Note(
                "cache", None, "Offline Files cache nearly full",
                f"{used / limit:.0%} of its {limit / (1 << 30):.1f} GiB is used: files you have not used "
                "lately are made online-only; pinned and changed files stay.", urgency=1))

    # ------------------------------------------------------------ spacing

    def _may_send(self, note: Note) -> bool:
        now = self.clock()
        key = (note.kind, note.folder)
        last = self._last.get(key)
        if last is not None and now - last < SAME_NOTE_S:
            return False
        while self._recent and now - self._recent[0] > 60.0:
            self._recent.popleft()
        if len(self._recent) >= BURST:
            return False
        self._last[key] = now
        self._recent.append(now)
        return True

    # ------------------------------------------------------------ the task

    def _collect(self, after: int) -> tuple[list[Note], int]:
        """The notes due now (events since ``after``, the cache, the profile), spaced."""
        for event in ring.select(after_seq=after):
            after = max(after, event.seq)
            note = self.note_of(event)
            if note is not None:
                self._pending.append(note)
        if self.clock() >= self._next_cache:
            self._next_cache = self.clock() + CACHE_CHECK_S
            self._check_cache()
        notes, self._pending = self._pending, []
        return [n for n in notes if self.enabled(n.folder) and self._may_send(n)], after

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Follow the events for ever; connect to the bus while there is something to tell."""
        task_status.started()
        if not self.bus:
            await trio.sleep_forever()
        after = ring.last_seq
        retry_at = 0.0
        while True:
            notes, after = self._collect(after)
            if not notes or self.clock() < retry_at:
                await trio.sleep(POLL_S)
                continue
            try:
                after = await self._connected(notes, after)
            except (OSError, KeyError, ValueError, DBusErrorResponse, trio.BrokenResourceError,
                    trio.TooSlowError) as exc:
                retry_at = self.clock() + RETRY_S
                if not self._told_unavailable:
                    self._told_unavailable = True
                    log.info("desktop notifications not shown: no session bus or notification server "
                             "(%s); looked for again in %.0f s", exc, RETRY_S)

    async def _connected(self, notes: list[Note], after: int) -> int:
        """Send ``notes`` and what follows, staying on the bus (and listening for a click on
        an action) until ``SAME_NOTE_S`` pass with nothing to tell.

        One connection read by this task alone (jeepney's router, with a filter for the
        signals, raised from its receiver when both closed together)."""
        conn = await open_dbus_connection(self.bus)
        try:
            rule = MatchRule(type="signal", interface=NOTIFICATIONS.interface, member="ActionInvoked")
            await self._call(conn, message_bus.AddMatch(rule))
            while notes:
                for note in notes:
                    await self._send(conn, note)
                self._told_unavailable = False
                quiet_until = self.clock() + SAME_NOTE_S
                notes = []
                while not notes and self.clock() < quiet_until:
                    with trio.move_on_after(POLL_S):
                        self._on_message(await conn.receive())
                    notes, after = self._collect(after)
        finally:
            await conn.aclose()
        return after

    async def _call(self, conn, msg) -> tuple:
        """Send one method call and wait for its reply (signals meanwhile are handled)."""
        serial = next(self._serials)
        await conn.send(msg, serial=serial)
        with trio.fail_after(CALL_TIMEOUT_S):
            while True:
                reply = await conn.receive()
                if reply.header.fields.get(HeaderFields.reply_serial) == serial:
                    return unwrap_msg(reply)
                self._on_message(reply)

    async def _send(self, conn, note: Note) -> None:
        actions = [x for pair in note.actions for x in pair]
        hints = {"urgency": ("y", note.urgency), "desktop-entry": ("s", APP_NAME)}
        msg = new_method_call(NOTIFICATIONS, "Notify", "susssasa{sv}i",
                              (APP_NAME, 0, ICON, note.summary, note.body, actions, hints, -1))
        (nid,) = await self._call(conn, msg)
        self.sent.append(note)
        if note.actions:
            self._actions[nid] = note
        log.debug("notification %d: %s", nid, note.summary)

    def _on_message(self, msg) -> None:
        """A click on a note's action (ActionInvoked), or anything else the bus sent (ignored)."""
        if msg.header.message_type is MessageType.signal and msg.header.fields.get(HeaderFields.member) \
                == "ActionInvoked":
            nid, action = msg.body
            note = self._actions.pop(nid, None)
            if note is not None and action in ("default", ACTION_CONFLICTS):
                show_conflicts(note.path)


def bus_address(setting: str | None) -> str | None:
    """The config's ``notify_dbus`` as jeepney names it (``SESSION``, ``SYSTEM``, an address)."""
    if setting in ("session", "system"):
        return setting.upper()
    return setting


def show_conflicts(folder: str | None) -> None:
    """``cscd conflicts`` in the desktop's terminal; the folder in the file manager without one."""
    terminal = shutil.which("x-terminal-emulator")
    if terminal is not None:
        cmd = [terminal, "-e", "sh", "-c", "cscd conflicts; echo; printf 'Enter closes this window. '; read x"]
    elif folder is not None and shutil.which("xdg-open"):
        cmd = ["xdg-open", folder]
    else:
        return
    try:
        subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    except OSError as exc:
        log.info("cannot show the conflicts: %s", exc)

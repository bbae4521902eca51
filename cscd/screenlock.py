"""Does this user's screen lock when left alone? (``device.require_screen_lock``)

Work Folders can require that a device "automatically locks the screen and requires a
password"; a device that does not is out of compliance. cscd asks the same three questions
over D-Bus, each of the service that knows the answer:

1. logind (system bus): has the user a graphical session (``Type`` x11, wayland or mir)? With
   none (ssh, a console) there is no screen to lock: compliant.
2. AccountsService (system bus): does the account have a password (``PasswordMode`` 2 means
   none: a locked screen opens for anyone)? A machine without AccountsService skips this one
   and says so in the reason.
3. The desktop's settings through xdg-desktop-portal (session bus, ``org.freedesktop.portal.
   Settings``): GNOME's ``org.gnome.desktop.screensaver lock-enabled`` and the time to a
   locked screen, ``org.gnome.desktop.session idle-delay`` plus ``screensaver lock-delay``,
   at most ``max_idle_s``. A desktop that does not answer these (KDE's portal does not share
   kscreenlocker's settings) cannot be shown to comply: not compliant, saying why.

``check`` is blocking (a few D-Bus round trips, each within ``TIMEOUT_S``): the daemon calls it
from a thread every ``timings.compliance_interval_s``. Never raises for what a bus says; the verdict's
reason is a sentence for ``cscd status`` and the event.
"""

from __future__ import annotations

from dataclasses import dataclass

from jeepney import DBusAddress, MessageType, Properties, new_method_call
from jeepney.io.blocking import open_dbus_connection
from jeepney.wrappers import DBusErrorResponse

TIMEOUT_S = 5.0
GRAPHICAL = ("x11", "wayland", "mir")
NO_PASSWORD = 2  # AccountsService PasswordMode: "no password"
LOGIND = ("org.freedesktop.login1", "/org/freedesktop/login1", "org.freedesktop.login1.Manager")
ACCOUNTS = ("org.freedesktop.Accounts", "/org/freedesktop/Accounts", "org.freedesktop.Accounts")
PORTAL = ("org.freedesktop.portal.Desktop", "/org/freedesktop/portal/desktop", "org.freedesktop.portal.Settings")
SCREENSAVER, SESSION = "org.gnome.desktop.screensaver", "org.gnome.desktop.session"


@dataclass(frozen=True)
class Verdict:
    compliant: bool
    reason: str


class _Unanswered(Exception):
    pass


def _bus(name: str) -> str:
    return name.upper() if name in ("system", "session") else name


def _call(conn, service: tuple[str, str, str], method: str, signature: str = "", body: tuple = (), *,
          path: str | None = None, interface: str | None = None):
    address = DBusAddress(path or service[1], bus_name=service[0], interface=interface or service[2])
    reply = conn.send_and_get_reply(new_method_call(address, method, signature, body), timeout=TIMEOUT_S)
    if reply.header.message_type == MessageType.error:
        raise DBusErrorResponse(reply)
    return reply.body


def _get(conn, service: tuple[str, str, str], path: str, interface: str, prop: str):
    address = DBusAddress(path, bus_name=service[0], interface=interface)
    reply = conn.send_and_get_reply(Properties(address).get(prop), timeout=TIMEOUT_S)
    if reply.header.message_type == MessageType.error:
        raise DBusErrorResponse(reply)
    return reply.body[0][1]


def _graphical_sessions(conn, uid: int) -> int:
    sessions = _call(conn, LOGIND, "ListSessions")[0]
    return sum(1 for _sid, s_uid, _user, _seat, path in sessions
               if s_uid == uid and _get(conn, LOGIND, path, "org.freedesktop.login1.Session", "Type") in GRAPHICAL)


def _password_mode(conn, uid: int) -> int | None:
    """AccountsService's PasswordMode for ``uid``; None where AccountsService is not there."""
    try:
        path = _call(conn, ACCOUNTS, "FindUserById", "x", (uid,))[0]
    except DBusErrorResponse as exc:
        if exc.name in ("org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner"):
            return None
        raise
    return int(_get(conn, ACCOUNTS, path, "org.freedesktop.Accounts.User", "PasswordMode"))


def _setting(conn, namespace: str, key: str):
    """One desktop setting through the portal (``ReadOne``, or ``Read`` of portals before v2)."""
    try:
        return _call(conn, PORTAL, "ReadOne", "ss", (namespace, key))[0][1]
    except DBusErrorResponse as exc:
        if exc.name != "org.freedesktop.DBus.Error.UnknownMethod":
            raise _Unanswered(f"{namespace} {key}: {exc.name}") from None
    try:
        value = _call(conn, PORTAL, "Read", "ss", (namespace, key))[0][1]
    except DBusErrorResponse as exc:
        raise _Unanswered(f"{namespace} {key}: {exc.name}") from None
    return value[1] if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) else value


def check(uid: int, *, system_bus: str, session_bus: str, max_idle_s: int) -> Verdict:
    """Is the screen of ``uid``'s graphical sessions locked with a password within ``max_idle_s``?"""
    notes = []
    try:
        with open_dbus_connection(_bus(system_bus)) as conn:
            if not _graphical_sessions(conn, uid):
                return Verdict(True, "no graphical session: there is no screen to lock")
            mode = _password_mode(conn, uid)
    except (OSError, ValueError, TimeoutError, DBusErrorResponse) as exc:
        return Verdict(False, f"logind does not answer on the {system_bus} bus ({exc}): cannot tell "
                              "whether a screen is left unlocked")
    if mode == NO_PASSWORD:
        return Verdict(False, "the account has no password: a locked screen opens for anyone")
    if mode is None:
        notes.append("AccountsService absent: the account's password not checked")
    try:
        with open_dbus_connection(_bus(session_bus)) as conn:
            enabled = bool(_setting(conn, SCREENSAVER, "lock-enabled"))
            idle = int(_setting(conn, SESSION, "idle-delay"))
            lock_delay = int(_setting(conn, SCREENSAVER, "lock-delay"))
    except _Unanswered as exc:
        return Verdict(False, f"the desktop does not say whether the screen locks ({exc}; GNOME's "
                              "settings through xdg-desktop-portal are what cscd reads)")
    except (OSError, ValueError, TimeoutError, DBusErrorResponse) as exc:
        return Verdict(False, f"no desktop settings portal answers on the {session_bus} bus ({exc})")
    if not enabled:
        return Verdict(False, "the screen does not lock (Settings → Privacy → Screen Lock: automatic "
                              "screen lock is off)")
    if idle == 0:
        return Verdict(False, "the screen never blanks when the session is idle (idle-delay 0), so it never locks")
    if idle + lock_delay > max_idle_s:
        return Verdict(False, f"the screen locks after {(idle + lock_delay) / 60:g} min idle; the policy "
                              f"allows at most {max_idle_s / 60:g} min")
    return Verdict(True, f"the screen locks after {(idle + lock_delay) / 60:g} min idle"
                         + (f" ({'; '.join(notes)})" if notes else ""))

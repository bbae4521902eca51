"""The user's primary computers as the directory lists them: ``msDS-PrimaryComputer`` via SSSD.

Windows reads a user's primary computers from the ``msDS-PrimaryComputer`` attribute of the
user object in Active Directory. On a Linux workstation joined with SSSD, the InfoPipe
responder (``org.freedesktop.sssd.infopipe`` on the system bus) hands out user attributes
that ``sssd.conf`` exposes (``[domain/…] ldap_user_extra_attrs = msDS-PrimaryComputer`` and
``[ifp] user_attributes = +msDS-PrimaryComputer``). The values are the distinguished names of
computer objects; the first ``CN`` is the computer's name, compared with the host name as
``primary_computers`` entries are. Winbind exposes no such attribute: with winbind only the
policy's own host list works.

One blocking D-Bus call with a short timeout, made when a policy is evaluated (start and
reload) and only if it says ``primary_computers: directory``. Any failure is "unknown" (None),
never an exception: the caller decides what unknown means.
"""

from __future__ import annotations

import logging

from jeepney import DBusAddress, new_method_call
from jeepney.io.blocking import open_dbus_connection
from jeepney.wrappers import DBusErrorResponse, unwrap_msg

log = logging.getLogger(__name__)

IFP_NAME = "org.freedesktop.sssd.infopipe"
IFP_PATH = "/org/freedesktop/sssd/infopipe"
ATTRIBUTE = "msDS-PrimaryComputer"
TIMEOUT_S = 2.0


def computer_name(value: str) -> str:
    """``CN=WS1,OU=Laptops,DC=corp,DC=example`` → ``WS1``; a plain name stays as it is."""
    first = value.split(",", 1)[0].strip()
    return first[3:] if first[:3].casefold() == "cn=" else first


def primary_computers(user: str, bus: str | None = "system", timeout_s: float = TIMEOUT_S) -> tuple[str, ...] | None:
    """The computer names the directory lists for ``user``, or None if they cannot be read
    (no SSSD, the attribute not exposed, no bus). An empty tuple: the user has none."""
    if not bus:
        return None
    address = bus.upper() if bus in ("system", "session") else bus
    try:
        with open_dbus_connection(address) as conn:
            call = new_method_call(DBusAddress(IFP_PATH, bus_name=IFP_NAME, interface=IFP_NAME),
                                   "GetUserAttr", "sas", (user, [ATTRIBUTE]))
            reply = unwrap_msg(conn.send_and_get_reply(call, timeout=timeout_s))
    except (OSError, TimeoutError, DBusErrorResponse, ValueError, KeyError) as exc:
        log.info("the directory's primary computers of %s are unknown (SSSD InfoPipe on the %s bus): %s",
                 user, bus, exc)
        return None
    attrs = reply[0]
    if ATTRIBUTE not in attrs:
        return ()
    _signature, values = attrs[ATTRIBUTE]
    return tuple(computer_name(str(v)) for v in values)

"""The journald message catalog: what ``journalctl -x`` says under each cscd event.

Owns the explanation of every event (``cscd.events``): what happened, and what a user or an
admin does about it, in the catalog format of systemd (``-- MESSAGE_ID`` blocks). The
shipped ``systemd/cscd.catalog`` is this module's output (``python -m cscd.catalog``); a test
keeps the two equal and has ``journalctl --update-catalog`` read it. Installed as
``/usr/lib/systemd/catalog/cscd.catalog``, then ``journalctl --update-catalog``.
"""

from __future__ import annotations

import re
import sys

from cscd.events import EVENTS, EventId

#: EventId -> (subject, explanation). ``@FIELD@`` is filled in by journalctl from the entry's
#: ``CSCD_FIELD`` (``events.emit`` names each field so).
EXPLANATIONS: dict[EventId, tuple[str, str]] = {
    EventId.DAEMON_READY: (
        "cscd serves its mount",
        "cscd mounted @MOUNT@ and serves the redirected folders from its cache (@MODES@). Files\n"
        "that are cached open without waiting on the network.",
    ),
    EventId.DAEMON_STOPPING: (
        "cscd stops",
        "cscd unmounts and stops (@REASON@). Changes not yet uploaded stay in the cache and go up\n"
        "at the next start.",
    ),
    EventId.RELOADED: (
        "cscd read its policy again",
        "A reload (systemctl --user reload cscd, cscd reload, SIGHUP) read the policy files:\n"
        "@RESULT@. A refused policy leaves the previous one in force; event 5000 names the file,\n"
        "line and key.",
    ),
    EventId.SYNC_STARTED: (
        "A sync of a redirected folder started",
        "cscd started to bring @CSCD_FOLDER@ and its server in line (@TRIGGER@).",
    ),
    EventId.SYNC_FINISHED: (
        "A sync of a redirected folder finished",
        "@FILES@ files (@BYTES@ bytes) went up; @PENDING@ changes still wait. Changes wait when\n"
        "the folder is offline or a file keeps failing (event 2040).",
    ),
    EventId.SYNC_FAILED: (
        "A sync did not finish",
        "The sync of @CSCD_FOLDER@ stopped (@REASON@). Nothing is lost: the @PENDING@ changes stay\n"
        "in the cache and are sent when the server answers again. Check the link with\n"
        "'cscd status'.",
    ),
    EventId.UPLOAD_FAILED_QUOTA: (
        "A file cannot be uploaded: the server is full",
        "@PATH@ stays on this computer only: the server is out of space, or the user's quota\n"
        "is used up. Free space on the share (or ask for a larger quota); cscd tries again by\n"
        "itself.",
    ),
    EventId.UPLOAD_FAILED_PERMISSION: (
        "A file cannot be uploaded: access denied",
        "The server refused @PATH@ (@REASON@). It stays on this computer. Ask the share's\n"
        "administrator for write access to the folder; cscd tries again by itself.",
    ),
    EventId.UPLOAD_FAILED_WRITE_THROUGH: (
        "A change in a folder that is not cached did not reach the server",
        "@CSCD_FOLDER@ is not kept offline (policy offline: false), so changes go straight to\n"
        "the server, and this one failed (@REASON@); it was @KEPT@. The application saw an\n"
        "error.",
    ),
    EventId.NOT_AVAILABLE_OFFLINE: (
        "A file was asked for that is not available offline",
        "@PATH@ is not in the cache and the folder is @MODE@, so it cannot be fetched now. Pin\n"
        "files you need away from the office: cscd pin PATH.",
    ),
    EventId.SYNC_FILE_TOO_LARGE: (
        "A file is larger than the policy allows",
        "@PATH@ (@SIZE@ bytes) is larger than offline_files.max_file_size (@LIMIT@ bytes): it is\n"
        "read from the server, never cached, and a write that would make it larger fails.",
    ),
    EventId.SYNC_PROBLEM: (
        "A file keeps failing to sync",
        "@PATH@ failed @FAILURES@ times (@REASON@). Its changes stay in the cache and cscd tries\n"
        "again in @RETRY_S@ s, backing off. 'cscd status' lists every such file.",
    ),
    EventId.SYNC_PROBLEM_CLEARED: (
        "A file that kept failing synced",
        "@PATH@ synced after @FAILURES@ failed tries.",
    ),
    EventId.MODE_CHANGED: (
        "A redirected folder changed mode",
        "@CSCD_FOLDER@ is now @MODE@ (was @PREVIOUS@): @REASON@. Online serves from the cache and\n"
        "syncs at once; slow_link, always_offline and metered sync in the background;\n"
        "offline and working_offline keep every change for later.",
    ),
    EventId.CREDENTIALS_EXPIRED: (
        "No usable Kerberos ticket",
        "cscd cannot log on to @SERVER@ (@REASON@). The folder works offline from its cache.\n"
        "Get a ticket (kinit, or lock and unlock the session); cscd reconnects by itself.",
    ),
    EventId.CONFLICT_CREATED: (
        "A file changed on both sides",
        "@PATH@ changed here and on the server. Both are kept: the server's version under the\n"
        "name, this computer's as @COPY@. 'cscd conflicts' lists them; 'cscd conflicts resolve\n"
        "PATH --keep local|remote|both' settles one.",
    ),
    EventId.CONFLICT_RESOLVED: (
        "A conflict was resolved",
        "The conflict of @PATH@ was resolved, keeping @KEEP@.",
    ),
    EventId.POLICY_REJECTED: (
        "A policy file was refused",
        "@FILE@, line @LINE@, key @KEY@: @REASON@. The policy in force before stays in force (at a\n"
        "start: cscd does not start). Fix the file, then reload.",
    ),
    EventId.PROFILE_UPLOAD_STARTED: (
        "A roaming profile upload started",
        "The roaming profile is being uploaded (@TRIGGER@).",
    ),
    EventId.PROFILE_UPLOAD_FINISHED: (
        "A roaming profile upload finished",
        "@FILES@ files (@BYTES@ bytes) of the roaming profile went up in @DURATION_S@ s.",
    ),
    EventId.PROFILE_UPLOAD_SKIPPED: (
        "A background profile upload was skipped",
        "The background upload of the roaming profile did not run: @REASON@. It runs at the\n"
        "next scheduled time, and at logoff.",
    ),
    EventId.PROFILE_UPLOAD_FAILED: (
        "A roaming profile upload failed",
        "The roaming profile did not go up (@REASON@). Local changes are kept and go up at the\n"
        "next upload or logoff.",
    ),
    EventId.CACHE_ENCRYPTED: (
        "The offline cache is encrypted at rest",
        "The device policy (device.encrypt_cache) is in force: the cache's index and content are\n"
        "encrypted by the kernel (@HOW@) with a key unlocked with the user's session. When cscd\n"
        "stops, it takes the key back: the cache is unreadable until the next start.",
    ),
    EventId.CACHE_NOT_ENCRYPTED: (
        "The cache cannot be encrypted: folders are served online only",
        "The device policy requires an encrypted cache and @REASON@. cscd keeps nothing offline:\n"
        "every folder is served from the server only, as with offline: false, until the cache\n"
        "can be encrypted. Put the cache on ext4 with the encrypt feature (tune2fs -O encrypt),\n"
        "or make the key available (device.cache_key), then restart cscd.",
    ),
    EventId.CACHE_WIPE_STARTED: (
        "A folder is revoked by the device policy",
        "device.wipe names @FOLDER@ for this user or machine: cscd serves nothing of it any more\n"
        "(EACCES), uploads the changes waiting for its server (@PENDING@: @THEN@), then destroys its\n"
        "cached copy. Nothing outside the redirected folder is touched.",
    ),
    EventId.CACHE_WIPED: (
        "The cached copy of a revoked folder is destroyed",
        "Every cached file of @FOLDER@ was deleted (@FILES@ files, @HOW@) and its entries\n"
        "removed from the cache's index. In a cache sealed by cscd the folder's own key is\n"
        "destroyed, so no copy of its blocks opens again (crypto-erase); otherwise each file is\n"
        "overwritten with zeros first. @LOST@ changes that had not reached the server were lost\n"
        "(device.wipe_when_unreachable: wipe).",
    ),
    EventId.DEVICE_NOT_COMPLIANT: (
        "The session does not lock its screen as the device policy asks",
        "device.require_screen_lock is on and @REASON@. Until the session complies the offline\n"
        "cache is @OFFLINE@. Turn on the automatic screen lock (with a password) within the\n"
        "policy's idle time; cscd checks again every 30 seconds.",
    ),
    EventId.DEVICE_COMPLIANT: (
        "The session locks its screen as the device policy asks",
        "device.require_screen_lock is met: @REASON@. The offline cache is used again.",
    ),
}


def catalog_text() -> str:
    """Every event's catalog entry, in event order (the shipped ``systemd/cscd.catalog``)."""
    out = ["# journald message catalog of cscd; generated by 'python -m cscd.catalog', do not edit\n"]
    for event_id, spec in EVENTS.items():
        subject, text = EXPLANATIONS[event_id]
        text = re.sub(r"@(?!CSCD_)([A-Z_]+)@", r"@CSCD_\1@", text)  # emit's journal fields
        out.append(f"\n-- {spec.message_id.hex}\nSubject: {subject}\nDefined-By: cscd\n"
                   f"Documentation: man:cscd(1)\n\n[{int(event_id)}] {text}\n")
    return "".join(out)


if __name__ == "__main__":
    sys.stdout.write(catalog_text())

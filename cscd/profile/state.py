"""The roaming profile's memory: the last agreed listing, kept in one small JSON file.

Owns ``BaseEntry`` (what both sides last agreed on for one path) and reading/writing the state
file. Synchronous file I/O only: callers run ``load_state``/``save_state`` in a worker thread.
No network, no decisions (``merge.py`` decides).

Each entry keeps two halves, so each side's change is judged against that side's own record
(times on the server have 100 ns steps, a local file keeps ns):

- ``local``: (size, mtime_ns) of the home-directory file as last agreed, or None;
- ``remote``: (size, mtime_ns, file_id) of the server file as last agreed, or None.

Folders are entries with ``is_dir`` and no halves. The file names the server folder it
belongs to; a state written for another server folder is ignored (everything is new then,
which means a plain timestamp merge and no deletions). A damaged file is ignored the same way.
Writes go to a temporary, are fsynced and renamed over the old file: a crash leaves the old
listing or the new one, never half of each.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cscd.durable import fsync_dir
from cscd.profile.scope import LOCAL_TEMP_PREFIX

log = logging.getLogger(__name__)

STATE_VERSION = 1

LocalVersion = tuple[int, int]  # size, mtime_ns
RemoteVersion = tuple[int, int, int]  # size, mtime_ns, file_id


@dataclass(frozen=True, slots=True)
class BaseEntry:
    """What both sides last agreed on for one path."""

    is_dir: bool
    local: LocalVersion | None = None
    remote: RemoteVersion | None = None

    def to_json(self) -> dict:
        if self.is_dir:
            return {"dir": True}
        return {"local": list(self.local) if self.local else None,
                "remote": list(self.remote) if self.remote else None}

    @classmethod
    def from_json(cls, data: dict) -> BaseEntry:
        if data.get("dir"):
            return cls(True)
        local, remote = data.get("local"), data.get("remote")
        return cls(
            False,
            (int(local[0]), int(local[1])) if local else None,
            (int(remote[0]), int(remote[1]), int(remote[2])) if remote else None,
        )


def load_state(path: Path, target: str) -> dict[bytes, BaseEntry]:
    """The last agreed listing for the server folder ``target``; empty if there is none.

    Never raises for a missing, damaged or foreign file (it logs why and starts afresh).
    """
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s: cannot read the roaming profile state (%s); merging by time only",
                    path, exc)
        return {}
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        log.warning("%s: not a roaming profile state of version %d; merging by time only",
                    path, STATE_VERSION)
        return {}
    if data.get("target") != target:
        log.info("%s: the state belongs to %s, not %s; merging by time only",
                 path, data.get("target"), target)
        return {}
    try:
        return {k.encode("utf-8"): BaseEntry.from_json(v) for k, v in data["entries"].items()}
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        log.warning("%s: damaged roaming profile state (%s); merging by time only", path, exc)
        return {}


def save_state(path: Path, target: str, entries: dict[bytes, BaseEntry]) -> None:
    """Replace the state file atomically (temporary, fsync, rename, fsync of the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    body = {
        "version": STATE_VERSION,
        "target": target,
        "entries": {k.decode("utf-8"): v.to_json() for k, v in sorted(entries.items())},
    }
    # named like a download temporary, so that no walk ever takes it for profile content
    temp = path.with_name(f"{LOCAL_TEMP_PREFIX.decode()}state-{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(json.dumps(body, separators=(",", ":")).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, path)
    fsync_dir(path.parent)

"""Which change notifications are the echo of this client's own changes.

Owns ``OwnChanges``: the paths (relative to the target folder) this upstream created,
wrote, renamed or deleted on the server in the last ``ECHO_S`` seconds. Samba notifies a
client of its own changes like anyone else's, and each notification used to make sync
list the directory again: writing 1,000 files into one folder listed that growing folder
over and over. A batch in which every change is such an echo is dropped by the watch; a
batch with one change of someone else's goes through whole. No network, no LMDB.

The cost, said plainly: another client's change to a name this client changed within the
last ``ECHO_S`` seconds arrives in the same batch as ours only by chance; when it comes
alone it is taken for an echo and seen at the next listing of that folder (its watch's
next change, the slow revalidation, or a push that finds the server's version moved,
which is then a conflict as it should be). Windows Offline Files has no notifications at
all for it.
"""

from __future__ import annotations

import time

#: how long after our own change a notification about the same name counts as its echo
ECHO_S = 2.0
#: past this many remembered paths the stale ones are dropped
_PRUNE_AT = 4096


class OwnChanges:
    def __init__(self, clock=time.monotonic) -> None:  # noqa: ANN001 - a clock function
        self._clock = clock
        self._at: dict[bytes, float] = {}

    def note(self, *paths: bytes) -> None:
        """``paths`` change on the server now (call it before the request and after it)."""
        now = self._clock()
        for path in paths:
            self._at[path] = now
        if len(self._at) > _PRUNE_AT:
            self._at = {p: t for p, t in self._at.items() if now - t <= ECHO_S}

    def is_echo(self, watched: bytes, names: list[bytes]) -> bool:
        """True if each of ``names`` (relative to the watched folder ``watched``) is a path
        this client changed within ``ECHO_S`` seconds."""
        now = self._clock()
        for name in names:
            at = self._at.get(watched + b"/" + name if watched else name)
            if at is None or now - at > ECHO_S:
                return False
        return bool(names)

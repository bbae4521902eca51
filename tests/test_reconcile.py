"""The three-way reconcile decision (``cscd.reconcile``): the whole table, then random histories.

The table pins every (base, local, remote, ours) case to its action. The histories drive a
small model of one client and one server — writes, deletes, pushes whose answer may be lost
or whose daemon may be killed after the server call, listings — through ``decide`` exactly
as ``cache/merge.py`` and ``sync/push.py`` apply it, and check the two promises of DESIGN.md
invariant 8 and 1: a single writer never gets a conflict copy, and a second writer's
version is never silently overwritten. Pure: no smbd, no mount (those run in test_churn).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cscd.reconcile import Action, Local, Ours, decide, same_version
from cscd.types import RemoteEntry


def f(fid: int, size: int = 10, mtime: int = 1_000) -> RemoteEntry:
    return RemoteEntry(b"doc", False, size, mtime, 0, fid)


def d(fid: int, mtime: int = 1_000) -> RemoteEntry:
    return RemoteEntry(b"doc", True, 0, mtime, 0, fid)


B = f(1)
OTHER = f(2, size=11, mtime=2_000)
CLEAN, CHANGED, GONE = Local(), Local(changed=True), Local(exists=False)
DIR_HERE = Local(is_dir=True, changed=True)
OURS = Ours(11, 2_000_050)  # the server keeps 100 ns units: MINE's time is 2_000_000
MINE = f(3, size=11, mtime=2_000_000)

TABLE = [
    # base, local, remote, ours → action
    (None, None, None, None, Action.NOTHING),
    (None, None, OTHER, None, Action.ADD),
    (None, CHANGED, None, None, Action.PUSH),
    (None, CHANGED, MINE, OURS, Action.ADOPT),
    (None, DIR_HERE, d(5), None, Action.ADOPT),
    (None, CHANGED, OTHER, None, Action.CONFLICT),
    (None, CHANGED, OTHER, OURS, Action.CONFLICT),
    (None, DIR_HERE, OTHER, None, Action.CONFLICT),
    (None, GONE, OTHER, None, Action.NOTHING),
    (None, GONE, None, None, Action.NOTHING),
    (B, CLEAN, B, None, Action.NOTHING),
    (B, CHANGED, B, None, Action.PUSH),
    (B, CHANGED, B, OURS, Action.PUSH),
    (B, GONE, B, None, Action.DELETE_REMOTE),
    (B, None, B, None, Action.DELETE_REMOTE),
    (B, CLEAN, None, None, Action.FORGET),
    (B, GONE, None, None, Action.FORGET),
    (B, CHANGED, None, None, Action.KEEP_AS_NEW),
    (B, CHANGED, MINE, OURS, Action.ADOPT),
    (B, CLEAN, MINE, OURS, Action.ADOPT),
    (B, CLEAN, OTHER, None, Action.FOLLOW),
    (B, CLEAN, d(1), None, Action.REPLACE_KIND),
    (B, GONE, OTHER, None, Action.RESTORE),
    (B, CHANGED, OTHER, None, Action.CONFLICT),
    (B, CHANGED, OTHER, OURS, Action.CONFLICT),
    (d(7), Local(is_dir=True), d(7, mtime=9_999), None, Action.NOTHING),  # a folder's time moved
    (d(7), Local(is_dir=True), d(8), None, Action.FOLLOW),
]


@pytest.mark.parametrize("base,local,remote,ours,action", TABLE)
def test_the_table(base, local, remote, ours, action):
    assert decide(base, local, remote, ours=ours) is action


def test_every_action_is_in_the_table():
    assert {row[-1] for row in TABLE} == set(Action)


def test_ours_matches_only_to_smbs_time_unit():
    assert Ours(11, 2_000_099).is_(MINE)
    assert not Ours(11, 2_000_100).is_(MINE)
    assert not Ours(12, 2_000_000).is_(MINE)
    assert not Ours(0, 1_000).is_(d(1))


def test_a_folder_is_the_same_version_whatever_its_times():
    assert same_version(d(1, mtime=1), d(1, mtime=2))
    assert not same_version(f(1, mtime=1), f(1, mtime=2))


# ---------------------------------------------------------------- random histories

_ids = itertools.count(100)


@dataclass
class Server:
    entry: RemoteEntry | None = None
    author: str | None = None  # "client" or "other"


@dataclass
class Client:
    """One node as the index holds it, and what it would upload."""

    base: RemoteEntry | None = None
    exists: bool = False
    changed: bool = False
    content: tuple[int, int] | None = None  # (size, write time) of the local content
    sending: list[tuple[int, int]] = field(default_factory=list)
    conflicts: int = 0
    clock: int = 0

    def local(self) -> Local | None:
        if not self.exists and self.base is None:
            return None
        return Local(exists=self.exists, changed=self.changed)


def server_put(server: Server, content: tuple[int, int], author: str) -> RemoteEntry:
    # An upload writes a temporary and renames it over the name: a new FileId each time.
    server.entry = RemoteEntry(b"doc", False, content[0], content[1] // 100 * 100, 0, next(_ids))
    server.author = author
    return server.entry


def push(c: Client, s: Server, outcome: str, overwritten: list[str]) -> None:
    """What ``Pusher._push_one`` / ``_send`` do for a file, through ``decide``."""
    if not c.exists:
        if c.base is None:
            return
        action = decide(c.base, Local(exists=False), s.entry)
        if action is Action.DELETE_REMOTE:
            s.entry, s.author = None, None
        c.base = None  # the delete is recorded either way (RESTORE: the next listing adds it)
        return
    if not c.changed:
        return
    snap = c.content
    earlier = [e for e in c.sending if e != snap]
    c.sending = [snap, *earlier]
    if (c.base is None and s.entry is None) or (c.base is not None and s.entry is not None
                                                 and same_version(c.base, s.entry)):
        if s.author == "other":
            overwritten.append("conditional upload replaced a version nobody here saw")
        entry = server_put(s, snap, "client")
    else:
        here = Local(changed=True)
        action = decide(c.base, here, s.entry, ours=Ours(*snap))
        if action is Action.ADOPT:
            entry = s.entry
        elif any(decide(c.base, here, s.entry, ours=Ours(*e)) is Action.ADOPT for e in earlier):
            entry = server_put(s, snap, "client")
        elif action is Action.CONFLICT:
            c.conflicts += 1
            c.exists, c.changed, c.base, c.content, c.sending = False, False, None, None, []
            return  # the local version went to a conflict copy; the name is the server's
        else:
            return  # looked at again next round
    if outcome == "ok":
        c.base, c.changed, c.sending = entry, False, []
    # "lost": the server has it, the answer never came (or the daemon was killed): nothing recorded


def listing(c: Client, s: Server) -> None:
    """What ``cache/merge.py::_match`` does for the name, through ``decide``."""
    if c.base is None:
        if decide(None, c.local(), s.entry) is Action.ADD:
            c.base, c.exists, c.changed, c.content = s.entry, True, False, (s.entry.size, s.entry.mtime_ns)
            if s.author == "other":
                s.author = "seen"
        return
    if s.entry is None:
        action = decide(c.base, Local(exists=c.exists, changed=c.changed), None)
        if action is Action.KEEP_AS_NEW:
            c.base = None
        else:
            c.base, c.exists, c.changed, c.content = None, False, False, None
        return
    action = decide(c.base, Local(exists=c.exists, changed=c.changed), s.entry)
    if action is Action.FOLLOW:
        c.base, c.content = s.entry, (s.entry.size, s.entry.mtime_ns)
        if s.author == "other":
            s.author = "seen"


STEPS = st.sampled_from(["write", "write", "delete", "push_ok", "push_ok", "push_lost", "listing"])


def run(history: list[str], *, foreign_at: set[int] = frozenset()) -> tuple[Client, Server, list[str]]:
    c, s = Client(), Server()
    overwritten: list[str] = []
    for i, step in enumerate(history):
        if i in foreign_at:
            server_put(s, (7_000 + i, 10_000_000 + i * 1000), "other")
        if step == "write":
            c.clock += 1_000
            c.exists, c.changed, c.content = True, True, (c.clock % 97, c.clock)
        elif step == "delete" and c.exists:
            c.exists, c.changed = False, False
        elif step == "push_ok":
            push(c, s, "ok", overwritten)
        elif step == "push_lost":
            push(c, s, "lost", overwritten)
        elif step == "listing":
            listing(c, s)
    return c, s, overwritten


@settings(max_examples=400, deadline=None)
@given(st.lists(STEPS, max_size=30))
def test_one_writer_never_gets_a_conflict(history):
    c, s, _ = run(history)
    assert c.conflicts == 0, history
    # and it converges: a final successful push and a listing leave both sides equal
    push(c, s, "ok", [])
    listing(c, s)
    if c.exists:
        assert s.entry is not None and (s.entry.size, s.entry.mtime_ns) == (c.content[0], c.content[1] // 100 * 100)
        assert c.base == s.entry and not c.changed
    else:
        assert s.entry is None


@settings(max_examples=400, deadline=None)
@given(st.lists(STEPS, min_size=1, max_size=30), st.sets(st.integers(0, 29), min_size=1, max_size=3))
def test_a_second_writer_is_never_overwritten_silently(history, foreign_at):
    _, _, overwritten = run(history, foreign_at=foreign_at)
    assert overwritten == [], (history, foreign_at)

"""The roaming profile: logon pull, logoff push, the merge rules, exclusions, the background
upload schedule and its events.

Every behaviour runs against both upstreams: "local" (``LocalUpstream`` on a temporary
folder) and "smb" (``SmbUpstream`` against the session's real smbd, a fresh folder per test).
The server side is checked and changed directly on disk. Timing logic runs under trio's
``autojump_clock``; the service test that moves real files uses the real clock and polls
with a deadline. No mocks.
"""

from __future__ import annotations

import datetime
import os
import random
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import trio

from cscd.events import ring
from cscd.policy.fslogix import parse_redirections_xml
from cscd.profile import ProfileService, ProfileSettings, UploadSchedule, logoff, logon, skip_reason
from cscd.profile.merge import Action, LocalEntry, decide
from cscd.profile.scope import BOTH, Direction, ProfileScope
from cscd.profile.state import BaseEntry
from cscd.samba import EmbeddedSamba
from cscd.types import Credentials, Mode, RemoteEntry, UncTarget
from cscd.upstream.local import LocalUpstream
from cscd.upstream.smb import SmbUpstream
from tests.helpers.wait import wait_for_async

T0 = 1_700_000_000  # a fixed epoch second: every test file gets T0 + n seconds
HOST = "testhost"
CONFLICT_RE = r" \(conflict testhost \d{4}-\d\d-\d\d \d{6}\)"


@dataclass
class Profile:
    """One test's home directory and server profile folder."""

    kind: str
    up: SmbUpstream | LocalUpstream
    server: Path  # the server's profile folder, on disk
    home: Path
    settings: ProfileSettings

    async def logon(self):
        return await logon(self.up, self.home, self.settings)

    async def logoff(self):
        return await logoff(self.up, self.home, self.settings)


def put(root: Path, rel: str, data: bytes, t: int) -> Path:
    """Write ``root/rel`` with write time ``T0 + t`` seconds."""
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    os.utime(p, ns=((T0 + t) * 10**9, (T0 + t) * 10**9))
    return p


def files(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (relative path → content), temporaries included, except
    the profile's own state file (``~/.local/state/cscd/``)."""
    return {rel: p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not (rel := p.relative_to(root).as_posix()).startswith(
                ".local/state/cscd/")}


def conflict_copies(root: Path, stem: str) -> list[Path]:
    return [p for p in root.rglob("*") if re.fullmatch(re.escape(stem) + CONFLICT_RE + r"(\..*)?",
                                                       p.name)]


@pytest.fixture(params=["local", "smb"])
async def profile(request: pytest.FixtureRequest, smbd: EmbeddedSamba,
                  tmp_path: Path) -> AsyncIterator[Profile]:
    home = tmp_path / "home"
    home.mkdir()
    if request.param == "smb":
        name = f"p-{uuid.uuid4().hex[:12]}"
        server = smbd.share_dir / name
        server.mkdir()
        up: SmbUpstream | LocalUpstream = SmbUpstream(
            UncTarget(smbd.host, smbd.share, (name,)),
            Credentials(smbd.username, smbd.password), port=smbd.port, timeout_s=10.0)
    else:
        server = tmp_path / "server"
        server.mkdir()
        up = LocalUpstream(server)
    await up.connect()
    try:
        yield Profile(request.param, up, server, home, ProfileSettings(host=HOST))
    finally:
        await up.close()


# -- logon -------------------------------------------------------------------------------------


async def test_first_logon_pulls_everything_that_roams(profile: Profile) -> None:
    put(profile.server, ".config/app/settings.ini", b"theme=dark", 10)
    put(profile.server, ".local/share/app/history.db", b"h" * 5000, 11)
    put(profile.server, ".bashrc", b"alias ll='ls -l'", 12)
    (profile.server / ".config" / "empty").mkdir()
    put(profile.server, ".config/app/zero", b"", 9)
    put(profile.server, ".cache/thumbs/a.png", b"png", 13)  # excluded by a default pattern
    put(profile.server, "Documents/report.odt", b"not part of the profile", 14)

    report = await profile.logon()

    assert files(profile.home) == {
        ".bashrc": b"alias ll='ls -l'",
        ".config/app/settings.ini": b"theme=dark",
        ".config/app/zero": b"",
        ".local/share/app/history.db": b"h" * 5000,
    }
    assert (profile.home / ".config" / "empty").is_dir()
    assert os.stat(profile.home / ".config/app/settings.ini").st_mtime_ns == (T0 + 10) * 10**9
    assert (report.files, report.bytes, report.errors) == (4, 10 + 5000 + 16, [])
    assert (profile.home / ".local/state/cscd/profile-state.json").is_file()


async def test_newer_server_file_wins_at_logon(profile: Profile) -> None:
    put(profile.server, ".config/app.conf", b"v1", 10)
    await profile.logon()
    put(profile.server, ".config/app.conf", b"v2 from another machine", 20)

    await profile.logon()

    assert (profile.home / ".config/app.conf").read_bytes() == b"v2 from another machine"
    assert not conflict_copies(profile.home, "app")


async def test_first_meeting_newer_side_wins(profile: Profile) -> None:
    """No agreement yet: plain timestamp merge in both directions."""
    put(profile.server, ".config/a.conf", b"server, newer", 20)
    put(profile.home, ".config/a.conf", b"local, older", 10)
    put(profile.server, ".config/b.conf", b"server, older", 10)
    put(profile.home, ".config/b.conf", b"local, newer", 20)

    await profile.logon()
    assert (profile.home / ".config/a.conf").read_bytes() == b"server, newer"
    assert (profile.home / ".config/b.conf").read_bytes() == b"local, newer"  # kept for logoff
    await profile.logoff()
    assert (profile.server / ".config/b.conf").read_bytes() == b"local, newer"
    assert (profile.server / ".config/a.conf").read_bytes() == b"server, newer"


async def test_local_only_files_stay_at_logon_and_go_up_at_logoff(profile: Profile) -> None:
    put(profile.home, ".config/new.conf", b"made here", 10)
    put(profile.home, ".gitconfig", b"[user]", 11)

    report = await profile.logon()
    assert (profile.home / ".config/new.conf").read_bytes() == b"made here"
    assert report.pending >= 2 and report.files == 0

    report = await profile.logoff()
    assert files(profile.server) == {".config/new.conf": b"made here", ".gitconfig": b"[user]"}
    assert os.stat(profile.server / ".gitconfig").st_mtime_ns == (T0 + 11) * 10**9
    assert report.files == 2


async def test_large_files_roam_both_ways(profile: Profile) -> None:
    big = os.urandom(5 << 20) + b"tail"  # above the one-piece download size
    put(profile.server, ".local/share/app/big.db", big, 10)
    await profile.logon()
    assert (profile.home / ".local/share/app/big.db").read_bytes() == big
    bigger = big + os.urandom(1 << 20)
    put(profile.home, ".local/share/app/big.db", bigger, 20)
    await profile.logoff()
    assert (profile.server / ".local/share/app/big.db").read_bytes() == bigger


# -- logoff ------------------------------------------------------------------------------------


async def test_newer_local_file_wins_at_logoff(profile: Profile) -> None:
    put(profile.server, ".config/app.conf", b"v1", 10)
    await profile.logon()
    put(profile.home, ".config/app.conf", b"v2 edited here", 20)

    report = await profile.logoff()

    assert (profile.server / ".config/app.conf").read_bytes() == b"v2 edited here"
    assert report.files == 1 and not report.conflicts
    # nothing changed since: the next logoff and logon move nothing
    assert (await profile.logoff()).files == 0
    assert (await profile.logon()).files == 0


async def test_logoff_leaves_newer_server_files_for_the_next_logon(profile: Profile) -> None:
    put(profile.server, ".config/app.conf", b"v1", 10)
    await profile.logon()
    put(profile.server, ".config/app.conf", b"v2 from elsewhere", 20)

    report = await profile.logoff()

    assert (profile.server / ".config/app.conf").read_bytes() == b"v2 from elsewhere"
    assert (profile.home / ".config/app.conf").read_bytes() == b"v1"
    assert report.files == 0 and report.pending == 1


# -- deletions ---------------------------------------------------------------------------------


async def test_server_deletion_reaches_home_and_is_not_resurrected(profile: Profile) -> None:
    put(profile.server, ".config/old.conf", b"obsolete", 10)
    put(profile.server, ".config/gone/inner.conf", b"x", 10)
    await profile.logon()
    (profile.server / ".config/old.conf").unlink()
    (profile.server / ".config/gone/inner.conf").unlink()
    (profile.server / ".config/gone").rmdir()

    report = await profile.logon()
    assert not (profile.home / ".config/old.conf").exists()
    assert not (profile.home / ".config/gone").exists()
    assert report.deleted == 2 and report.dirs_removed == 1

    await profile.logoff()
    assert not (profile.server / ".config/old.conf").exists()
    assert not (profile.server / ".config/gone").exists()


async def test_local_deletion_reaches_server_and_is_not_resurrected(profile: Profile) -> None:
    put(profile.server, ".config/old.conf", b"obsolete", 10)
    put(profile.server, ".local/share/app/db", b"x", 10)
    await profile.logon()
    (profile.home / ".config/old.conf").unlink()
    (profile.home / ".local/share/app/db").unlink()
    (profile.home / ".local/share/app").rmdir()

    await profile.logon()  # a logon before the logoff must not bring them back
    assert not (profile.home / ".config/old.conf").exists()
    assert not (profile.home / ".local/share/app").exists()

    report = await profile.logoff()
    assert not (profile.server / ".config/old.conf").exists()
    assert not (profile.server / ".local/share/app").exists()
    assert report.deleted == 2
    await profile.logon()
    assert not (profile.home / ".config/old.conf").exists()


async def test_an_edit_beats_a_deletion(profile: Profile) -> None:
    put(profile.server, ".config/keep.conf", b"v1", 10)
    await profile.logon()
    (profile.home / ".config/keep.conf").unlink()
    put(profile.server, ".config/keep.conf", b"v2 edited elsewhere", 20)

    await profile.logoff()
    assert (profile.server / ".config/keep.conf").read_bytes() == b"v2 edited elsewhere"
    await profile.logon()
    assert (profile.home / ".config/keep.conf").read_bytes() == b"v2 edited elsewhere"


# -- exclusions --------------------------------------------------------------------------------


REDIRECTIONS = b"""<?xml version="1.0" encoding="UTF-8"?>
<FrxProfileFolderRedirection ExcludeCommonFolders="0">
  <Excludes>
    <Exclude Copy="0">.config\\chromium\\Default\\Cache</Exclude>
    <Exclude>.local\\share\\Steam</Exclude>
  </Excludes>
  <Includes>
    <Include>.local\\share\\Steam\\config</Include>
  </Includes>
</FrxProfileFolderRedirection>
"""


async def test_excluded_paths_never_move(profile: Profile) -> None:
    settings = replace(profile.settings,
                       exclude_patterns=(*profile.settings.exclude_patterns, "*.log"),
                       exclusions=parse_redirections_xml(REDIRECTIONS))
    profile.settings = settings
    # server side: excluded by pattern, by redirections.xml, and one Include back
    put(profile.server, ".cache/big.bin", b"server cache", 10)
    put(profile.server, ".config/app/debug.log", b"server log", 10)
    put(profile.server, ".config/chromium/Default/Cache/data_0", b"server cache", 10)
    put(profile.server, ".local/share/Steam/games/big.pak", b"server game", 10)
    put(profile.server, ".local/share/Steam/config/config.vdf", b"roams", 10)
    # local side: the same kind of paths, newer
    put(profile.home, ".cache/local.bin", b"local cache", 20)
    put(profile.home, ".config/app/local.log", b"local log", 20)
    put(profile.home, ".config/chromium/Default/Cache/data_1", b"local cache", 20)
    put(profile.home, ".config/chromium/Default/Preferences", b"{}", 20)
    put(profile.home, ".local/share/Steam/games/local.pak", b"local game", 20)

    await profile.logon()
    await profile.logoff()
    await profile.logon()

    assert files(profile.home) == {
        ".cache/local.bin": b"local cache",
        ".config/app/local.log": b"local log",
        ".config/chromium/Default/Cache/data_1": b"local cache",
        ".config/chromium/Default/Preferences": b"{}",
        ".local/share/Steam/games/local.pak": b"local game",
        ".local/share/Steam/config/config.vdf": b"roams",
    }
    assert files(profile.server) == {
        ".cache/big.bin": b"server cache",
        ".config/app/debug.log": b"server log",
        ".config/chromium/Default/Cache/data_0": b"server cache",
        ".config/chromium/Default/Preferences": b"{}",
        ".local/share/Steam/games/big.pak": b"server game",
        ".local/share/Steam/config/config.vdf": b"roams",
    }


async def test_excluded_local_paths_given_by_the_daemon_never_move(profile: Profile) -> None:
    """The mount point, cache and redirected folders, when they lie in an included folder."""
    profile.settings = replace(profile.settings,
                               exclude_paths=(profile.home / ".local/share/cscd-cache",))
    put(profile.home, ".local/share/cscd-cache/123", b"cached content", 10)
    put(profile.home, ".local/share/recent.xbel", b"<xbel/>", 10)
    await profile.logoff()
    assert files(profile.server) == {".local/share/recent.xbel": b"<xbel/>"}


# -- conflicts ---------------------------------------------------------------------------------


async def test_conflict_at_logon_keeps_both(profile: Profile) -> None:
    put(profile.server, ".config/app/settings.ini", b"v1", 10)
    await profile.logon()
    put(profile.home, ".config/app/settings.ini", b"edited here", 20)
    put(profile.server, ".config/app/settings.ini", b"edited elsewhere, later", 30)

    report = await profile.logon()

    assert (profile.home / ".config/app/settings.ini").read_bytes() == b"edited elsewhere, later"
    copies = conflict_copies(profile.home, "settings")
    assert [c.read_bytes() for c in copies] == [b"edited here"]
    assert copies[0].suffix == ".ini" and len(report.conflicts) == 1
    # the copy roams like any new file; the server keeps both
    await profile.logoff()
    assert [c.read_bytes() for c in conflict_copies(profile.server, "settings")] == [b"edited here"]
    assert (profile.server / ".config/app/settings.ini").read_bytes() == b"edited elsewhere, later"


async def test_conflict_at_logoff_keeps_both(profile: Profile) -> None:
    put(profile.server, ".config/app/settings.ini", b"v1", 10)
    await profile.logon()
    put(profile.server, ".config/app/settings.ini", b"edited elsewhere", 20)
    put(profile.home, ".config/app/settings.ini", b"edited here, later", 30)

    report = await profile.logoff()

    assert (profile.server / ".config/app/settings.ini").read_bytes() == b"edited here, later"
    copies = conflict_copies(profile.server, "settings")
    assert [c.read_bytes() for c in copies] == [b"edited elsewhere"]
    assert len(report.conflicts) == 1
    await profile.logon()
    assert [c.read_bytes() for c in conflict_copies(profile.home, "settings")] == \
        [b"edited elsewhere"]
    assert (profile.home / ".config/app/settings.ini").read_bytes() == b"edited here, later"


async def test_lost_state_merges_by_time_and_deletes_nothing(profile: Profile) -> None:
    put(profile.server, ".config/a.conf", b"a", 10)
    put(profile.server, ".config/b.conf", b"b", 10)
    await profile.logon()
    (profile.home / ".config/b.conf").unlink()
    (profile.home / ".local/state/cscd/profile-state.json").write_text("{not json")

    await profile.logon()  # no memory: b.conf looks new on the server, so it comes back

    assert (profile.home / ".config/b.conf").read_bytes() == b"b"
    assert (profile.server / ".config/b.conf").exists()


class RacingUpstream(LocalUpstream):
    """A server on which another machine writes ``path`` just before our first upload."""

    def __init__(self, root: Path, path: str, data: bytes) -> None:
        super().__init__(root)
        self.race: tuple[str, bytes] | None = (path, data)

    async def upload(self, path, fd, size, mtime_ns, *, expected=None, replace=True):
        if self.race is not None:
            put(self.root, *self.race, 40)
            self.race = None
        return await super().upload(path, fd, size, mtime_ns, expected=expected, replace=replace)


async def test_server_change_during_logoff_keeps_both(tmp_path: Path) -> None:
    (tmp_path / "server").mkdir()
    home = tmp_path / "home"
    home.mkdir()
    settings = ProfileSettings(host=HOST)
    put(tmp_path / "server", ".config/a.conf", b"v1", 10)
    up = RacingUpstream(tmp_path / "server", ".config/a.conf", b"other machine")
    await logon(up, home, settings)
    put(home, ".config/a.conf", b"edited here", 20)

    report = await logoff(up, home, settings)

    assert (tmp_path / "server/.config/a.conf").read_bytes() == b"other machine"
    assert [c.read_bytes() for c in conflict_copies(tmp_path / "server", "a")] == [b"edited here"]
    assert len(report.conflicts) == 1
    await logon(up, home, settings)  # the server's version comes down, the copy beside it
    assert (home / ".config/a.conf").read_bytes() == b"other machine"
    assert [c.read_bytes() for c in conflict_copies(home, "a")] == [b"edited here"]
    assert (await logoff(up, home, settings)).files == 0


# -- pure parts: decisions and scope ----------------------------------------------------------


def _l(size: int, t: int) -> LocalEntry:
    return LocalEntry(False, size, t)


def _r(size: int, t: int, fid: int = 7) -> RemoteEntry:
    return RemoteEntry(b"f", False, size, t, 0, fid)


@pytest.mark.parametrize(("local", "remote", "base", "pull", "push"), [
    (_l(1, 5), _r(1, 5), BaseEntry(False, (1, 5), (1, 5, 7)), Action.NOTHING, Action.NOTHING),
    (_l(2, 9), _r(1, 5), BaseEntry(False, (1, 5), (1, 5, 7)), Action.WAIT, Action.UPLOAD),
    (_l(1, 5), _r(2, 9), BaseEntry(False, (1, 5), (1, 5, 7)), Action.DOWNLOAD, Action.WAIT),
    (None, _r(1, 5), BaseEntry(False, (1, 5), (1, 5, 7)), Action.WAIT, Action.DELETE_REMOTE),
    (_l(1, 5), None, BaseEntry(False, (1, 5), (1, 5, 7)), Action.DELETE_LOCAL, Action.WAIT),
    (_l(2, 9000), _r(3, 5000), BaseEntry(False, (1, 5), (1, 5, 7)),
     Action.WAIT, Action.CONFLICT_REMOTE),
    (_l(2, 5000), _r(3, 9000), BaseEntry(False, (1, 5), (1, 5, 7)),
     Action.CONFLICT_LOCAL, Action.WAIT),
    (None, _r(3, 9), BaseEntry(False, (1, 5), (1, 5, 7)), Action.DOWNLOAD, Action.WAIT),
    (_l(3, 9), None, BaseEntry(False, (1, 5), (1, 5, 7)), Action.WAIT, Action.UPLOAD),
    (_l(3, 1000), _r(3, 1050), None, Action.AGREE, Action.AGREE),
    (_l(3, 1000), _r(4, 1050), None, Action.CONFLICT_LOCAL, Action.WAIT),
    (None, None, BaseEntry(False, (1, 5), (1, 5, 7)), Action.FORGET, Action.FORGET),
])
def test_decision_table(local, remote, base, pull, push) -> None:
    assert decide(Direction.PULL, local, remote, base) is pull
    assert decide(Direction.PUSH, local, remote, base) is push


def test_a_folder_against_a_file_is_a_clash() -> None:
    assert decide(Direction.PULL, LocalEntry(True, 0, 1), _r(1, 1), None) is Action.CLASH


def test_scope_patterns_and_redirections_copy_modes(tmp_path: Path) -> None:
    xml = b"""<FrxProfileFolderRedirection>
      <Exclude Copy="1">.config\\In</Exclude><Exclude Copy="2">.config\\Out</Exclude>
      <Exclude Copy="3">.config\\Both</Exclude><Exclude>.config\\Never</Exclude>
      <Include>.config\\Never\\Back</Include></FrxProfileFolderRedirection>"""
    scope = ProfileScope(tmp_path, ProfileSettings(exclusions=parse_redirections_xml(xml)))
    d = scope.verdict
    assert d(b".config/in/x", False).directions == {Direction.PULL}  # case-insensitive
    assert d(b".config/Out/x", False).directions == {Direction.PUSH}
    assert d(b".config/Both/x", False).directions == BOTH
    assert d(b".config/Never/x", False).never_moves
    assert d(b".config/Never/Back/x", False).directions == BOTH
    assert scope.should_descend(b".config/Never") and not scope.should_descend(b".cache")
    assert d(b".config/cscd/credentials", False).never_moves
    assert d(b".local/share/app/x.tmp", False).never_moves
    assert not d(b".config/a:b", False).never_moves  # stored mapped (U+F022), so it roams
    assert d(b".config/tab\there", False).never_moves  # control characters cannot be stored
    assert scope.is_in_scope(b".bashrc") and not scope.is_in_scope(b".mozilla", True)
    assert not scope.is_in_scope(b"Documents/x")


# -- the schedule ------------------------------------------------------------------------------

H = 3600.0


def test_interval_plus_random_offset_stays_within_bounds() -> None:
    schedule = UploadSchedule(ProfileSettings(upload_interval_s=12 * H, upload_max_offset_s=H),
                              random.Random(7))
    now = datetime.datetime(2024, 5, 1, 12, 0)
    delays = [schedule.next_delay_s(now) for _ in range(2000)]
    assert all(12 * H <= d <= 13 * H for d in delays)
    assert min(delays) < 12 * H + 120 and max(delays) > 13 * H - 120  # the offset spreads


def test_time_of_day_is_the_next_occurrence_plus_offset() -> None:
    settings = ProfileSettings(upload_time_of_day=datetime.time(3, 0), upload_max_offset_s=H)
    schedule = UploadSchedule(settings, random.Random(1))
    evening = schedule.next_delay_s(datetime.datetime(2024, 5, 1, 22, 0))
    night = schedule.next_delay_s(datetime.datetime(2024, 5, 2, 2, 0))
    at_three = schedule.next_delay_s(datetime.datetime(2024, 5, 2, 3, 0))
    assert evening is not None and 5 * H <= evening <= 6 * H
    assert night is not None and 1 * H <= night <= 2 * H
    assert at_three is not None and 24 * H <= at_three <= 25 * H


def test_background_upload_is_off_by_default() -> None:
    assert UploadSchedule(ProfileSettings()).next_delay_s(datetime.datetime.now()) is None
    with pytest.raises(ValueError):
        ProfileSettings(upload_interval_s=H, upload_time_of_day=datetime.time(3, 0))


@pytest.mark.parametrize(("mode", "reason"), [
    (Mode.SLOW_LINK, "slow link"), (Mode.METERED, "metered network"),
    (Mode.OFFLINE, "server unavailable"), (Mode.WORKING_OFFLINE, "working offline"),
])
async def test_service_skips_background_upload_when_the_link_forbids_it(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, mode: Mode, reason: str) -> None:
    (tmp_path / "server").mkdir()
    up = LocalUpstream(tmp_path / "server")
    settings = ProfileSettings(upload_interval_s=12 * H, upload_max_offset_s=H)
    service = ProfileService(up, tmp_path, settings, mode=lambda: mode, rng=random.Random(3))
    seq = ring.last_seq
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        due = service.statistics().next_upload_at
        assert due is not None and 12 * H <= due - trio.current_time() <= 13 * H
        await trio.sleep(12 * H - 1)
        assert not ring.select(after_seq=seq)  # nothing before the interval
        await trio.sleep(H + 2)
        events = ring.select(after_seq=seq)
        assert [(e.name, e.fields["reason"]) for e in events] == \
            [("PROFILE_UPLOAD_SKIPPED", reason)]
        await trio.sleep(13 * H)  # and again after the next interval
        assert len(ring.select(after_seq=seq)) == 2
        nursery.cancel_scope.cancel()
    assert up.statistics().requests == 0  # a skipped upload touches no server
    assert skip_reason(Mode.ALWAYS_OFFLINE, settings) is None
    assert skip_reason(Mode.METERED, replace(settings, upload_on_metered=True)) is None


async def test_service_without_a_schedule_never_uploads(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    service = ProfileService(LocalUpstream(tmp_path), tmp_path, ProfileSettings())
    seq = ring.last_seq
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await trio.sleep(1000 * H)
        assert service.statistics().next_upload_at is None
        nursery.cancel_scope.cancel()
    assert not ring.select(after_seq=seq)


async def test_service_background_upload_emits_started_and_finished(profile: Profile) -> None:
    put(profile.home, ".config/app.conf", b"made while logged on", 10)
    settings = replace(profile.settings, upload_interval_s=0.05, upload_max_offset_s=0.05)
    service = ProfileService(profile.up, profile.home, settings)
    seq = ring.last_seq

    def names() -> list[str]:
        return [e.name for e in ring.select(after_seq=seq)]

    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await wait_for_async(lambda: "PROFILE_UPLOAD_FINISHED" in names(), 20,
                             "a background upload finishes")
        nursery.cancel_scope.cancel()
    assert names()[:2] == ["PROFILE_UPLOAD_STARTED", "PROFILE_UPLOAD_FINISHED"]
    started, finished = ring.select(after_seq=seq)[:2]
    assert started.fields["trigger"] == "schedule" and started.folder == "profile"
    assert finished.fields["files"] == 1 and finished.fields["bytes"] == 20
    assert (profile.server / ".config/app.conf").read_bytes() == b"made while logged on"
    assert service.statistics().uploads >= 1


async def test_service_logon_and_logoff_answer_json(profile: Profile) -> None:
    import json

    put(profile.server, ".config/a.conf", b"a", 10)
    service = ProfileService(profile.up, profile.home, profile.settings)
    result = await service.logon()
    assert json.loads(json.dumps(result))["files"] == 1
    put(profile.home, ".config/b.conf", b"b", 20)
    seq = ring.last_seq
    result = await service.logoff()
    assert result["result"] == "finished" and result["files"] == 1
    assert [e.name for e in ring.select(after_seq=seq)] == \
        ["PROFILE_UPLOAD_STARTED", "PROFILE_UPLOAD_FINISHED"]


async def test_background_upload_is_skipped_when_the_server_does_not_answer(
        tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    up = SmbUpstream(UncTarget("127.0.0.1", "profiles", ("alice",)),
                     Credentials("alice", "secret"), port=port, timeout_s=2.0)
    put(tmp_path, ".config/a.conf", b"a", 10)
    service = ProfileService(up, tmp_path, ProfileSettings())
    seq = ring.last_seq
    result = await service.upload_now()
    assert result == {"result": "skipped", "reason": "server unavailable"}
    assert [(e.name, e.fields["reason"]) for e in ring.select(after_seq=seq)] == \
        [("PROFILE_UPLOAD_SKIPPED", "server unavailable")]

"""Logon and logoff of the roaming profile: pull the server's profile, push local changes.

Owns ``logon`` and ``logoff`` and their reports: list both sides (``tree.py``), load the last
agreed listing (``state.py``), decide each path (``merge.py``), carry the decisions out
(``transfer.py``) and save the new listing. Local file I/O runs in worker threads; the
network is reached only through the async ``Upstream``. It must not run twice at once for
one home directory (``ProfileService`` holds a lock); it never touches the cache or LMDB.

Order of work, per run: folders are created first (parents before children), then files move
``settings.transfers`` at a time, then folders deleted on the other side are removed,
deepest first, and only when empty. The state file is written at the end — also after a
failure or cancellation, so what was done is remembered — and after a logon only once the home
filesystem is synced, so the listing never claims a download the disk may still lose.

A file that changes while a run looks at it is left alone and counted as skipped; the next
run sees it again. A lost server (``UpstreamUnavailable``/``UpstreamTimeout``) ends the run
and is raised after the state is saved; other per-file errors are reported and the run goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

from cscd.errors import CscdError, NotEmpty, NotFound
from cscd.events import EventId, emit
from cscd.profile.merge import Action, LocalEntry, decide, decide_mandatory, remote_version
from cscd.profile.scope import Direction, ProfileScope
from cscd.profile.settings import ProfileSettings
from cscd.profile.state import BaseEntry, load_state, save_state
from cscd.profile.transfer import (
    LocalChanged,
    delete_local,
    download,
    make_local_dir,
    make_remote_dir,
    move_local,
    remove_local_dir,
    sync_home,
    upload,
)
from cscd.profile.tree import walk_local, walk_remote
from cscd.profile.work import FATAL, open_work
from cscd.sync.conflicts import conflict_name
from cscd.types import RemoteEntry
from cscd.upstream.base import Conflict, Upstream

log = logging.getLogger(__name__)

#: ``folder`` field of the events this package emits.
EVENT_FOLDER = "profile"
#: Longest a run may spend saving its state after a cancellation.
SAVE_GRACE_S = 30.0


@dataclass
class RoamReport:
    """What one run did. ``files``/``bytes`` count downloads at logon, uploads at logoff;
    ``pending`` counts changes left for the other direction; ``skipped`` lists paths that
    cannot roam or changed during the run; ``errors`` lists per-file failures."""

    kind: str
    files: int = 0
    bytes: int = 0
    deleted: int = 0
    dirs_created: int = 0
    dirs_removed: int = 0
    pending: int = 0
    conflicts: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    def to_json(self) -> dict:
        return {**asdict(self), "message": self.summary()}

    def summary(self) -> str:
        """One line for people (``cscd profile logon|logoff``)."""
        moved = "pulled" if self.kind == "logon" else "pushed"
        text = (f"{self.kind}: {self.files} files ({self.bytes} bytes) {moved}, {self.deleted} deleted, "
                f"{len(self.conflicts)} conflicts, {len(self.errors)} errors in {self.duration_s:.1f} s")
        if self.conflicts:
            text += "; kept both: " + ", ".join(self.conflicts[:5])
        if self.errors:
            text += "; failed: " + ", ".join(self.errors[:5])
        return text


@dataclass
class LogonReport(RoamReport):
    kind: str = "logon"


@dataclass
class LogoffReport(RoamReport):
    kind: str = "logoff"


async def logon(upstream: Upstream, home: Path, settings: ProfileSettings) -> LogonReport:
    """Bring the server's profile into ``home`` (newer server files, server-only files, server
    deletions since the last agreement); waits on the network. Local changes stay for
    ``logoff``. Raises ``UpstreamUnavailable``/``UpstreamTimeout``/``AccessDenied`` when the
    server cannot be listed or is lost midway (the state keeps what was done)."""
    report = LogonReport()
    await _roam(upstream, Path(home), settings, Direction.PULL, report)
    return report


async def logoff(upstream: Upstream, home: Path, settings: ProfileSettings, *,
                 kind: str = "logoff") -> LogoffReport:
    """Send local changes to the server (newer local files, new files, local deletions since
    the last agreement); waits on the network. Server changes stay for the next ``logon``.
    Background uploads are this with ``kind="background"``. Raises as ``logon`` does."""
    report = LogoffReport(kind=kind)
    if settings.mandatory:
        # A mandatory profile is never pushed: the session's changes are discarded at the
        # next logon's pull. Nothing touches the server.
        log.info("profile %s: mandatory profile, nothing pushed (this session's changes are "
                 "discarded at the next logon)", kind)
        return report
    await _roam(upstream, Path(home), settings, Direction.PUSH, report)
    return report


async def _roam(upstream: Upstream, home: Path, settings: ProfileSettings,
                direction: Direction, report: RoamReport) -> None:
    started = trio.current_time()
    if not await trio.to_thread.run_sync(home.is_dir):
        raise NotFound(f"the home directory {home} does not exist")
    scope = ProfileScope(home, settings)
    state_file = settings.state_file(home)
    base = await trio.to_thread.run_sync(load_state, state_file, upstream.description)
    local, skipped = await trio.to_thread.run_sync(walk_local, home, scope)
    report.skipped += skipped
    remote = await walk_remote(upstream, scope, limit=settings.transfers)
    run = _Run(upstream, home, settings, scope, direction, base, local, remote, report)
    try:
        await run.execute()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(SAVE_GRACE_S):
            try:
                if direction is Direction.PULL and (report.files or report.deleted
                                                    or report.conflicts):
                    await trio.to_thread.run_sync(sync_home, home)
                await trio.to_thread.run_sync(save_state, state_file, upstream.description,
                                              run.base)
            except OSError as exc:
                log.error("%s: cannot save the roaming profile state: %s", state_file, exc)
                report.errors.append(f"{state_file}: cannot save the state: {exc}")
        report.duration_s = round(trio.current_time() - started, 3)
        log.info("profile %s: %d files, %d bytes, %d deleted, %d conflicts, %d pending, "
                 "%d errors in %.1f s", report.kind, report.files, report.bytes,
                 report.deleted, len(report.conflicts), report.pending, len(report.errors),
                 report.duration_s)


def _parent(path: bytes) -> bytes:
    return path.rsplit(b"/", 1)[0] if b"/" in path else b""


def _conflict_path(path: bytes, host: str | None) -> bytes:
    parent, _, leaf = path.rpartition(b"/")
    name = conflict_name(leaf, host=host)
    return parent + b"/" + name if parent else name


class _Run:
    """One logon or logoff: the decisions and the base they update as they complete."""

    def __init__(self, upstream: Upstream, home: Path, settings: ProfileSettings,
                 scope: ProfileScope, direction: Direction, base: dict[bytes, BaseEntry],
                 local: dict[bytes, LocalEntry], remote: dict[bytes, RemoteEntry],
                 report: RoamReport) -> None:
        self.upstream, self.home, self.settings = upstream, home, settings
        self.scope, self.direction, self.report = scope, direction, report
        self.local, self.remote = local, remote
        # Paths that left the profile (no longer included, excluded now) are forgotten, never
        # deleted anywhere.
        self.base = {p: b for p, b in base.items()
                     if scope.is_in_scope(p, b.is_dir) and not scope.verdict(p, b.is_dir).never_moves}

    def plan(self) -> list[tuple[bytes, Action]]:
        out = []
        for path in sorted(set(self.local) | set(self.remote) | set(self.base)):
            lo, re, ba = self.local.get(path), self.remote.get(path), self.base.get(path)
            known = lo or re
            is_dir = known.is_dir if known is not None else ba.is_dir  # type: ignore[union-attr]
            if self.direction not in self.scope.verdict(path, is_dir).directions:
                continue
            limit = self.settings.max_file_size_bytes
            if limit is not None and any(e is not None and not e.is_dir and e.size > limit
                                         for e in (lo, re)):
                self.report.skipped.append(f"{path.decode()}: larger than {limit} bytes")
                continue
            if self.settings.mandatory:
                out.append((path, decide_mandatory(lo, re, slack_ns=self.settings.time_slack_ns)))
            else:
                out.append((path, decide(self.direction, lo, re, ba,
                                         slack_ns=self.settings.time_slack_ns)))
        return out

    async def execute(self) -> None:
        plan = self.plan()
        moves = []
        for path, action in plan:
            if action is Action.AGREE:
                self._agree(path)
            elif action is Action.FORGET:
                self.base.pop(path, None)
            elif action is Action.WAIT:
                self.report.pending += 1
            elif action is Action.CLASH:
                self.report.errors.append(f"{path.decode()}: a folder on one side and a file on "
                                          f"the other; rename one of them")
            elif action in (Action.MKDIR_LOCAL, Action.MKDIR_REMOTE):
                await self._guard(path, self._mkdir, path, action)
            elif action not in (Action.NOTHING, Action.RMDIR_LOCAL, Action.RMDIR_REMOTE):
                moves.append((path, action))
        async with open_work(self.settings.transfers) as work:
            for path, action in moves:
                work.start(self._guard, path, self._move, path, action, name="profile.transfer")
        for path, action in reversed(plan):
            if action in (Action.RMDIR_LOCAL, Action.RMDIR_REMOTE):
                await self._guard(path, self._rmdir, path, action)

    async def _guard(self, path: bytes, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run one item's work; a per-item failure is reported, a lost server ends the run."""
        try:
            await fn(*args)
        except FATAL:
            raise
        except LocalChanged as exc:
            self.report.skipped.append(f"{path.decode()}: {exc}")
        except (CscdError, OSError) as exc:
            log.warning("profile %s: %s: %s", self.report.kind, path.decode(), exc)
            self.report.errors.append(f"{path.decode()}: {exc}")

    # -- bookkeeping ---------------------------------------------------------------------------

    def _agree(self, path: bytes) -> None:
        lo, re = self.local[path], self.remote[path]
        self.base[path] = BaseEntry(True) if lo.is_dir else BaseEntry(False, lo.version,
                                                                       remote_version(re))

    def _record(self, path: bytes, lo: LocalEntry, re: RemoteEntry | None) -> None:
        self.base[path] = BaseEntry(False, lo.version, remote_version(re))

    def _conflict(self, path: bytes, copy: bytes) -> None:
        self.report.conflicts.append(copy.decode())
        emit(EventId.CONFLICT_CREATED, folder=EVENT_FOLDER, path=path.decode(),
             copy=copy.decode(), count=len(self.report.conflicts))

    # -- folders ---------------------------------------------------------------------------------

    async def _mkdir(self, path: bytes, action: Action) -> None:
        if action is Action.MKDIR_LOCAL:
            await make_local_dir(self.home, path)
        else:
            await make_remote_dir(self.upstream, path)
        self.base[path] = BaseEntry(True)
        self.report.dirs_created += 1

    async def _rmdir(self, path: bytes, action: Action) -> None:
        if action is Action.RMDIR_LOCAL:
            removed = await remove_local_dir(self.home, path)
        else:
            try:
                await self.upstream.delete(path, is_dir=True)
                removed = True
            except NotFound:
                removed = True
            except NotEmpty:  # new content below it: keep the folder
                removed = False
        if removed:
            self.base.pop(path, None)
            self.report.dirs_removed += 1
        else:
            self.report.pending += 1

    # -- files ---------------------------------------------------------------------------------

    async def _move(self, path: bytes, action: Action) -> None:
        lo, re = self.local.get(path), self.remote.get(path)
        if action is Action.DOWNLOAD:
            assert re is not None
            self._record(path, await download(self.upstream, self.home, path, re, lo), re)
            self.report.files += 1
            self.report.bytes += re.size
        elif action is Action.DELETE_LOCAL:
            assert lo is not None
            await delete_local(self.home, path, lo)
            self.base.pop(path, None)
            self.report.deleted += 1
        elif action is Action.CONFLICT_LOCAL:
            assert lo is not None and re is not None
            copy = _conflict_path(path, self.settings.host)
            await move_local(self.home, path, lo, copy)
            self.base.pop(path, None)
            self._conflict(path, copy)
            self._record(path, await download(self.upstream, self.home, path, re, None), re)
            self.report.files += 1
            self.report.bytes += re.size
        elif action is Action.UPLOAD:
            await self._upload(path, re)
        elif action is Action.DELETE_REMOTE:
            try:
                await self.upstream.delete(path, is_dir=False)
            except NotFound:
                pass
            self.base.pop(path, None)
            self.report.deleted += 1
        elif action is Action.CONFLICT_REMOTE:
            copy = _conflict_path(path, self.settings.host)
            try:
                await self.upstream.rename(path, copy, replace=False)
                self._conflict(path, copy)
            except NotFound:
                pass  # gone meanwhile: nothing to keep
            await self._upload(path, None)
        else:  # pragma: no cover - plan() hands only moves here
            raise AssertionError(action)

    async def _upload(self, path: bytes, expected: RemoteEntry | None) -> None:
        """Upload conditionally on ``expected``; if the server moved on, keep both."""
        try:
            try:
                sent, entry = await upload(self.upstream, self.home, path, expected)
            except NotFound:  # a server folder above it went away meanwhile
                if b"/" not in path:
                    raise
                await make_remote_dir(self.upstream, _parent(path))
                sent, entry = await upload(self.upstream, self.home, path, expected)
        except Conflict:
            copy = _conflict_path(path, self.settings.host)
            sent, _ = await upload(self.upstream, self.home, path, None, remote_path=copy)
            # This version is kept on the server as the copy: the next logon brings the
            # server's version of ``path`` down over it (the base says only the server moved),
            # and the copy beside it.
            self.base[path] = BaseEntry(False, sent.version, remote_version(expected))
            self._conflict(path, copy)
            self.report.files += 1
            self.report.bytes += sent.size
            return
        self._record(path, sent, entry)
        self.report.files += 1
        self.report.bytes += sent.size

r"""Moving a redirected folder's server content when the policy changes its target.

Owns the pure plan (``plan_target_move``: one rename on the same share, a server-side copy
otherwise) and carrying it out through two upstreams (``move_target``): the old target and
the new one. Content never crosses the client: the same share gets one rename of the folder
(FileIds stay, so the cache's bases stay valid as they are); another share of the same server
gets a server-side copy of each file (FSCTL_SRV_COPYCHUNK_WRITE), each checked by size and
write time, and only then is the old folder deleted. The copy's files have new FileIds:
``MoveResult.entries`` lists the new tree so that the cache can re-point its bases
(``Cache.adopt_moved_bases``) instead of downloading anything again.

Must not touch LMDB or the cache; waits on the network (every call has the upstream's
deadline). Crash safety: the old content is deleted only after the whole copy is in place, so
a run that stops midway leaves the old folder complete and the next run picks the copy up
where it stopped (a destination file of the same size and write time counts as copied). A
run that stopped after deleting the old folder finds it gone and the new one there, and
finishes by listing the new one ("already moved").

Not supported: another server (``CLIENT_COPY``): the folder stays on its old target and the
message says to move the data by hand; a streamed copy through this machine is not built.
A server that refuses server-side copies is treated the same way. A file that another client
changes on the old target during the copy may be copied in its earlier version (the copy is
not a snapshot). A name at the new target that holds other content stops the move (nothing is
overwritten; the folder stays on the old target).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field

from cscd.errors import CscdError, Exists, NotEmpty, NotFound, Unsupported
from cscd.types import RemoteEntry, UncTarget
from cscd.upstream.base import Upstream

log = logging.getLogger(__name__)


class MoveKind(enum.Enum):
    NONE = "none"
    SERVER_RENAME = "server_rename"  # same server and share: one rename on the server
    SERVER_COPY = "server_copy"  # same server: server-side copy, nothing crosses the client
    CLIENT_COPY = "client_copy"  # another server: not built (see the module docstring)


@dataclass(frozen=True, slots=True)
class TargetMove:
    kind: MoveKind
    old: UncTarget
    new: UncTarget
    reason: str


def _fold(t: UncTarget) -> tuple[str, str, tuple[str, ...]]:
    return t.server.casefold(), t.share.casefold(), tuple(p.casefold() for p in t.path)


def plan_target_move(old: UncTarget, new: UncTarget) -> TargetMove:
    """How to move a folder's server content when its target changes, keeping the cache."""
    (os_, oh, op), (ns, nh, np) = _fold(old), _fold(new)
    if old == new:
        return TargetMove(MoveKind.NONE, old, new, "the target did not change")
    if os_ != ns:
        return TargetMove(MoveKind.CLIENT_COPY, old, new, "another server: no server-side copy "
                          "reaches it")
    if oh != nh:
        return TargetMove(MoveKind.SERVER_COPY, old, new, "another share on the same server: "
                          "server-side copy, then delete the old folder")
    if op == np:
        return TargetMove(MoveKind.SERVER_RENAME, old, new, "only the case of the name changed")
    shorter = min(len(op), len(np))
    if op[:shorter] == np[:shorter]:
        return TargetMove(MoveKind.SERVER_COPY, old, new, "one target lies inside the other, so "
                          "a rename cannot move it; server-side copy of the entries instead")
    return TargetMove(MoveKind.SERVER_RENAME, old, new, "same share: rename on the server")


class TargetMoveError(CscdError):
    """The move did not happen (or stopped before deleting anything); the old target is whole."""


@dataclass
class MoveResult:
    """What ``move_target`` did. ``entries``: the new tree (relative path → entry) when its
    FileIds differ from the old ones (a copy), empty after a rename (nothing to re-point)."""

    how: str  # "renamed", "copied" or "already moved"
    files: int = 0
    bytes_copied: int = 0  # copied on the server; none of it crossed this machine
    entries: dict[bytes, RemoteEntry] = field(default_factory=dict)
    left_on_old: list[str] = field(default_factory=list)  # could not be deleted there


def _inside(path: tuple[str, ...], folder: tuple[str, ...]) -> bool:
    return path[:len(folder)] == folder


async def move_target(move: TargetMove, old: Upstream, new: Upstream) -> MoveResult:
    """Move the content of ``old``'s target to ``new``'s as ``move`` says. Waits on the network.

    Raises ``TargetMoveError`` when the move is not possible (another server, no server-side
    copy, a name taken at the new target), and what the upstreams raise when a server cannot
    be reached (``UpstreamUnavailable``, ``UpstreamTimeout``, ``AccessDenied``); in every case
    the old target still holds everything. Cancellation: the same (deletion comes last).
    """
    if move.kind in (MoveKind.NONE, MoveKind.CLIENT_COPY):
        raise TargetMoveError(f"moving {move.old} to {move.new} is not supported ({move.reason}); "
                              f"move the data by hand, then restart cscd")
    try:
        await old.connect()
    except NotFound:
        await new.connect()  # NotFound here too: nothing to move from, nothing moved yet
        log.info("%s is gone and %s exists: an earlier move got that far", move.old, move.new)
        result = MoveResult("already moved")
        await _list_tree(new, b"", result.entries)
        result.files = sum(1 for e in result.entries.values() if not e.is_dir)
        return result
    if move.kind is MoveKind.SERVER_RENAME:
        try:
            await old.rename_target(new)
            return MoveResult("renamed")
        except (Exists, Unsupported) as exc:
            log.info("%s: one rename cannot move it (%s); copying on the server instead", move.old, exc)
    return await _copy_then_delete(move, old, new)


async def _list_tree(up: Upstream, rel: bytes, out: dict[bytes, RemoteEntry]) -> None:
    for e in await up.list_dir(rel):
        path = rel + b"/" + e.name if rel else e.name
        out[path] = e
        if e.is_dir:
            await _list_tree(up, path, out)


async def _copy_then_delete(move: TargetMove, old: Upstream, new: Upstream) -> MoveResult:
    result = MoveResult("copied")
    old_path = tuple(p.casefold() for p in move.old.path)
    new_path = tuple(p.casefold() for p in move.new.path)
    same_share = _fold(move.old)[:2] == _fold(move.new)[:2]

    def skipped(rel: bytes) -> bool:
        """Nested targets: never copy the new folder into itself, nor into the old one."""
        parts = tuple(p.decode("utf-8", "surrogateescape").casefold() for p in rel.split(b"/"))
        return same_share and (_inside(old_path + parts, new_path) or _inside(new_path + parts, old_path))

    await new.make_target()
    copied: list[tuple[bytes, bool]] = []  # what to delete on the old side, children first

    async def copy_dir(rel: bytes) -> None:
        for e in sorted(await old.list_dir(rel), key=lambda e: e.name):
            path = rel + b"/" + e.name if rel else e.name
            if skipped(path):
                continue
            if e.is_dir:
                try:
                    await new.mkdir(path)
                except Exists:
                    pass
                await copy_dir(path)
                result.entries[path] = await new.set_mtime(path, e.mtime_ns)
            else:
                result.entries[path] = await _copy_file(old, new, path, e, move)
                result.files += 1
                result.bytes_copied += e.size
            copied.append((path, e.is_dir))

    try:
        await copy_dir(b"")
    except Unsupported as exc:
        raise TargetMoveError(f"{move.old} → {move.new}: {exc}; the folder stays where it was") from None
    log.info("%s: %d files (%d bytes) copied on the server to %s; deleting the old folder",
             move.old, result.files, result.bytes_copied, move.new)
    for path, is_dir in copied:  # post-order: a folder comes after its content
        try:
            await old.delete(path, is_dir=is_dir)
        except NotFound:
            pass
        except (NotEmpty, CscdError) as exc:
            result.left_on_old.append(f"{path.decode(errors='replace')} ({exc})")
    if not result.left_on_old:
        try:
            await old.remove_target()
        except NotEmpty as exc:
            result.left_on_old.append(f"the folder itself ({exc})")
    return result


async def _copy_file(old: Upstream, new: Upstream, path: bytes, src: RemoteEntry, move: TargetMove) -> RemoteEntry:
    """One server-side copy; a destination already holding this version (an earlier, stopped
    run) counts as copied, one holding something else stops the move."""
    try:
        return await old.copy_to(path, new)
    except Exists:
        there = await new.stat(path)
        if not there.is_dir and there.size == src.size and there.mtime_ns == src.mtime_ns:
            return there
        raise TargetMoveError(f"{move.new}\\{path.decode(errors='replace')} already exists with other "
                              f"content; move it away, then restart cscd") from None

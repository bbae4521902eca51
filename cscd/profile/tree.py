"""Listing both sides of the roaming profile: the home directory and the server folder.

Owns the two walks. ``walk_local`` is synchronous (``os.scandir``, ``lstat``) and must run in
a worker thread; ``walk_remote`` is async and only calls the ``Upstream`` (one enumeration per
folder, several folders at once). Neither reads file content or changes anything. Both apply
``ProfileScope``: only included paths, pruned at folders that never roam.

Not supported: symbolic links, sockets, FIFOs and devices never roam (they are reported as
skipped); a symlinked include root is skipped too, not followed.
"""

from __future__ import annotations

import os
import stat as stat_mod
from pathlib import Path

from cscd.errors import NotFound
from cscd.names import join_path
from cscd.profile.merge import LocalEntry
from cscd.profile.scope import ProfileScope
from cscd.profile.work import open_work
from cscd.types import RemoteEntry
from cscd.upstream.base import Upstream


def walk_local(home: Path, scope: ProfileScope) -> tuple[dict[bytes, LocalEntry], list[str]]:
    """Every roaming entry below ``home`` (blocking: call it in a thread).

    Returns the entries and a list of ``path: reason`` for entries that cannot roam (links,
    special files, names the server cannot store). Entries that vanish while listed are left
    out; an unreadable folder is reported and skipped.
    """
    base = os.fsencode(Path(home))
    found: dict[bytes, LocalEntry] = {}
    skipped: list[str] = []

    def note(path: bytes, reason: str) -> None:
        skipped.append(f"{path.decode('utf-8', 'replace')}: {reason}")

    def consider(path: bytes, st: os.stat_result) -> bool:
        """Record ``path``; True if it is a folder to descend into."""
        mode = st.st_mode
        if stat_mod.S_ISLNK(mode):
            note(path, "a symbolic link (links do not roam)")
            return False
        if not (stat_mod.S_ISDIR(mode) or stat_mod.S_ISREG(mode)):
            note(path, "not a regular file or folder")
            return False
        is_dir = stat_mod.S_ISDIR(mode)
        verdict = scope.verdict(path, is_dir)
        if verdict.never_moves:
            if verdict.reason and verdict.reason.startswith("the server cannot"):
                note(path, verdict.reason)
            return is_dir and scope.should_descend(path)
        found[path] = LocalEntry(is_dir, 0 if is_dir else st.st_size, st.st_mtime_ns)
        return is_dir

    def list_folder(path: bytes) -> list[bytes]:
        """Consider the children of ``path``; return the folders to descend into."""
        try:
            it = os.scandir(base + b"/" + path)
        except FileNotFoundError:
            return []
        except OSError as exc:
            note(path, f"cannot list: {exc.strerror}")
            return []
        folders = []
        with it:
            for de in it:
                child = join_path(path, de.name)
                try:
                    st = de.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if consider(child, st):
                    folders.append(child)
        return folders

    for root in scope.roots:
        try:
            st = os.lstat(base + b"/" + root)
        except FileNotFoundError:
            continue
        pending = [root] if consider(root, st) else []
        while pending:  # depth first, without recursion
            pending += list_folder(pending.pop())
    if scope.settings.include_dotfiles:
        with os.scandir(base) as it:
            for de in it:
                path = de.name
                if path in found or not scope.is_dotfile_candidate(path):
                    continue
                try:
                    st = de.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat_mod.S_ISREG(st.st_mode):
                    consider(path, st)
    return found, skipped


async def walk_remote(upstream: Upstream, scope: ProfileScope, *,
                      limit: int = 4) -> dict[bytes, RemoteEntry]:
    """Every roaming entry in the server's profile folder; waits on the network.

    Lists folders ``limit`` at a time. A folder that disappears while listed is left out.
    Raises what the upstream raises for a lost server (``UpstreamUnavailable``,
    ``UpstreamTimeout``) or refused access (``AccessDenied``).
    """
    found: dict[bytes, RemoteEntry] = {}

    def consider(path: bytes, entry: RemoteEntry) -> bool:
        verdict = scope.verdict(path, entry.is_dir)
        if verdict.never_moves:
            return entry.is_dir and scope.should_descend(path)
        found[path] = entry
        return entry.is_dir

    async with open_work(limit) as work:

        async def visit(path: bytes) -> None:
            try:
                entries = await upstream.list_dir(path)
            except NotFound:
                return
            for entry in entries:
                child = join_path(path, entry.name)
                if consider(child, entry):
                    work.start(visit, child, name="profile.list")

        async def visit_root(root: bytes) -> None:
            try:
                entry = await upstream.stat(root)
            except NotFound:
                return
            if consider(root, entry):
                await visit(root)

        async def visit_top() -> None:
            for entry in await upstream.list_dir(b""):
                if (not entry.is_dir and entry.name not in found
                        and scope.is_dotfile_candidate(entry.name)):
                    consider(entry.name, entry)

        for root in scope.roots:
            work.start(visit_root, root, name="profile.list")
        if scope.settings.include_dotfiles:
            work.start(visit_top, name="profile.list")
    return found

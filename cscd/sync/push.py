"""Pushing local changes to the server: one dirty node at a time, in a safe order.

Owns the decision of what server call a dirty node needs, derived from its local state and
its base (see ``sync/__init__``). Order within a round: creates, renames and uploads by
depth (parents before children), deletes last and deepest first. Each step records the new
base in one cache transaction; if the node changed while it was being uploaded, it stays
dirty and goes again. A crash between the server call and the record repeats the step,
which is safe: uploads write a temporary name, renames and deletes check what is there.

Conflicts (the server file is not the base any more, or a new local name is taken on the
server): the server keeps its name; the local version is uploaded as a conflict copy and the
local node takes that name; the server's version comes back as a placeholder on the next
listing. Nothing is overwritten.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import trio

from cscd.errors import CscdError, Exists, NotEmpty, NotFound, UpstreamTimeout, UpstreamUnavailable
from cscd.sync.conflicts import conflict_name
from cscd.sync.local import LocalSide
from cscd.types import FolderLink, RemoteEntry
from cscd.upstream.base import Conflict, Upstream

log = logging.getLogger(__name__)

CONTENT, META, NAMESPACE, DELETE = 1, 2, 4, 8


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


@dataclass
class PushCounters:
    files_uploaded: int = 0
    bytes_uploaded: int = 0
    deletes: int = 0
    renames: int = 0
    conflicts: int = 0
    last_success: float | None = None


class Pusher:
    def __init__(self, local: LocalSide, upstreams: dict[str, Upstream], links: dict[str, FolderLink],
                 on_link_error: Callable[[str], None]) -> None:
        self.local = local
        self.upstreams = upstreams
        self.links = links
        self.on_link_error = on_link_error
        self.counters = PushCounters()

    def _plan(self) -> list[tuple[int, int, object, int, str]]:
        """(phase, depth key, node, reasons, folder) for every dirty node, in push order."""
        plan = []
        for node, reasons in self.local.dirty_nodes():
            try:
                if reasons & DELETE:
                    folder, path = self.local.remote_path(node)
                    plan.append((1, -path.count(b"/"), node, reasons, folder.decode()))
                else:
                    folder, parts = self.local.folder_of(node)
                    plan.append((0, len(parts), node, reasons, folder.decode()))
            except NotFound:
                continue  # detached (its parent was deleted first); handled with the parent
        plan.sort(key=lambda p: (p[0], p[1]))
        return plan

    async def push_round(self, allowed: set[str]) -> int:
        """Push the dirty nodes of the ``allowed`` folders; return how many stay dirty."""
        plan = self._plan()
        failed_folders: set[str] = set()
        left = 0
        for _phase, _depth, node, reasons, folder in plan:
            if folder in failed_folders or folder not in allowed:
                left += 1
                continue
            try:
                await self._push_one(node, reasons, self.upstreams[folder])
            except (UpstreamUnavailable, UpstreamTimeout) as exc:
                log.info("push to %s paused: %s", folder, exc)
                self.on_link_error(folder)
                failed_folders.add(folder)
                left += 1
            except NotFound as exc:
                log.debug("push of node %s deferred: %s", node.id, exc)
                left += 1
            except CscdError as exc:
                left += 1
                if self._changed_meanwhile(node):
                    log.debug("push of %r restarts: it changed during the upload (%s)", node.name, exc)
                else:
                    log.warning("could not push %r to %s: %s", node.name, folder, exc)
        if not failed_folders and allowed:
            self.counters.last_success = trio.current_time()
        return left

    def _changed_meanwhile(self, node) -> bool:
        try:
            return self.local.node(node.id).version != node.version
        except NotFound:
            return True

    async def _push_one(self, node, reasons: int, up: Upstream) -> None:
        local = self.local
        version = node.version
        if reasons & DELETE:
            _, path = local.remote_path(node)
            try:
                # Delete only the version we agreed on: a rename may already have put
                # another file under this name (rename-over), or someone else did.
                current = await up.stat(path)
                if node.matches_base(current):
                    await up.delete(path, is_dir=node.is_dir)
                    self.counters.deletes += 1
            except NotFound:
                pass
            except NotEmpty:
                log.info("%r kept on the server: it holds files this client never saw", path)
            local.record_synced(node.id, version, 0, None, DELETE)
            return
        parent = local.node(node.parent)
        _, parent_path = local.remote_path(parent)  # NotFound: parent not on the server yet
        target = _join(parent_path, node.name)
        entry: RemoteEntry | None = node.base_entry()
        if node.has_base and (node.base_parent, node.base_name) != (node.parent, node.name):
            _, old = local.remote_path(node)
            entry = await up.rename(old, target, replace=True)
            self.counters.renames += 1
            local.record_synced(node.id, version, parent.id, entry, NAMESPACE)
            node = local.node(node.id)
        if node.is_dir:
            if not node.has_base:
                try:
                    entry = await up.mkdir(target)
                except Exists:
                    entry = await up.stat(target)
                    if not entry.is_dir:
                        await self._rename_local_conflict(node)
                        return
            local.record_synced(node.id, version, parent.id, entry, reasons)
            return
        if local.is_open_for_write(node.id):
            return  # uploaded when the last writer closes
        if reasons & CONTENT or not node.has_base:
            entry = await self._upload(node, parent, parent_path, target, up)
        elif reasons & META:
            entry = await up.set_mtime(target, node.mtime_ns)
        local.record_synced(node.id, version, parent.id, entry, reasons)

    async def _upload(self, node, parent, parent_path: bytes, target: bytes, up: Upstream) -> RemoteEntry:
        local = self.local
        for start, end in local.missing_ranges(node.id):
            await local.hydrate(node.id, start, end)
        fd = local.content_fd(node.id)
        try:
            try:
                entry = await up.upload(target, fd, node.size, node.mtime_ns,
                                        expected=node.base_entry(), replace=node.has_base)
            except Conflict:
                name = conflict_name(node.name)
                entry = await up.upload(_join(parent_path, name), fd, node.size, node.mtime_ns,
                                        expected=None, replace=False)
                local.rename_for_conflict(node.id, name)
                self.counters.conflicts += 1
                log.warning("conflict: %r changed on the server and here; the local version is kept as %r",
                            target, name)
        finally:
            os.close(fd)
        self.counters.files_uploaded += 1
        self.counters.bytes_uploaded += node.size
        return entry

    async def _rename_local_conflict(self, node) -> None:
        name = conflict_name(node.name)
        self.local.rename_for_conflict(node.id, name)
        self.counters.conflicts += 1
        log.warning("conflict: %r is a file on the server; the local folder is kept as %r", node.name, name)

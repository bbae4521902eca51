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

Excluded names (``offline_files.exclude_patterns``, ``sync/exclusions.py``): a file with such
a name is never uploaded; its dirty bits are cleared and it stays in the cache only (the
*local-only* step). A synced file renamed to such a name left the synced view: its server
file is deleted (if it is still the agreed version) before anything else in the round, and
it becomes local-only (the *leave* step, first so that ``doc.odt`` → ``doc.odt.tmp`` and then
``new.tmp`` → ``doc.odt`` — the save pattern of many editors — finds the name free). A new
file renamed over a synced one replaces the server file in place: the upload names the
replaced version as the one it expects (no conflict with our own pending delete).

Write-through (``push_node``): folders that are not cached push one node at close and fsync,
ancestors first, and the caller hears of a failure. A per-node lock keeps a round and a
write-through from uploading the same node twice at once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from cscd.errors import (
    CscdError,
    Exists,
    NotEmpty,
    NotFound,
    SourceChanged,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from cscd.names import join_path
from cscd.reconcile import Action, Local, Ours, decide, same_version
from cscd.sync.conflicts import conflict_name
from cscd.sync.counters import PushCounters
from cscd.sync.exclusions import ExclusionMatcher
from cscd.sync.hashing import Hasher
from cscd.sync.local import LocalSide
from cscd.sync.problems import SyncProblems
from cscd.sync.upload import ContentUploads
from cscd.types import ROOT_ID, FolderLink, Mode, OfflinePolicy, RemoteEntry
from cscd.upstream.base import Upstream

log = logging.getLogger(__name__)

CONTENT, META, NAMESPACE, DELETE, ATTRS = 1, 2, 4, 8, 16
#: plan phases: leave sync (excluded now), create/rename/upload, delete
LEAVE, CHANGE, REMOVE = -1, 0, 1
#: file uploads of one round in flight at once
UPLOADS_IN_FLIGHT = 4
#: ... and of small files (below ``SMALL_FILE_BYTES``), which cost a round trip each, not
#: bandwidth: the offloading upstream sends them to its workers in batches of this many
SMALL_UPLOADS_IN_FLIGHT = 32
SMALL_FILE_BYTES = 1 << 20
#: Upload tasks started between two checkpoints of a push round (the mount's requests get
#: their turn between).
START_STEP = 256


class Pusher:
    def __init__(self, local: LocalSide, upstreams: dict[str, Upstream], links: dict[str, FolderLink],
                 on_link_error: Callable[[str], None], *, hasher: Hasher | None = None,
                 policies: dict[str, OfflinePolicy] | None = None,
                 matcher: ExclusionMatcher | None = None) -> None:
        self.local = local
        self.policies = policies if policies is not None else {}
        self.upstreams = upstreams
        self.links = links
        self.on_link_error = on_link_error
        self.counters = PushCounters()
        #: called with a directory whose server listing differs from the cache after a push
        self.on_server_differs: Callable[[int], None] = lambda dir_id: None
        self.uploads = ContentUploads(local, hasher or Hasher(), self.counters,
                                      lambda dir_id: self.on_server_differs(dir_id))
        self.matcher = matcher or ExclusionMatcher()
        self._locks: dict[int, trio.Lock] = {}
        self.problems = SyncProblems()
        #: (folder, server path) → tombstones whose server delete is pending (rename-over);
        #: more than one after a crash: a rename over one was done there and not recorded
        self._deletes: dict[tuple[bytes, bytes], list] = {}

    def _is_local_only(self, node) -> bool:
        return not node.is_dir and self.matcher.is_excluded(node.name)

    def _plan(self) -> list[tuple[int, int, object, int, str]]:
        """(phase, depth key, node, reasons, folder) for every dirty node, in push order."""
        plan = []
        self._deletes = {}
        for node, reasons in self.local.dirty_nodes():
            try:
                if node.is_deleted and not node.has_base:
                    # Deleted before it ever reached the server (sqlite's -shm, an editor's
                    # swap file): nothing to do there; the record goes once no handle holds it.
                    self.local.record_synced(node.id, node.version, 0, None, reasons | DELETE)
                elif reasons & DELETE:
                    folder, path = self.local.remote_path(node)
                    plan.append((REMOVE, -path.count(b"/"), node, reasons, folder.decode()))
                    if not node.is_dir:
                        self._deletes.setdefault((folder, path), []).append(node)
                else:
                    folder, parts = self.local.folder_of(node)
                    phase = LEAVE if self._is_local_only(node) else CHANGE
                    plan.append((phase, len(parts), node, reasons, folder.decode()))
            except NotFound as exc:
                log.debug("node %s not planned: %s", node.id, exc)
                continue  # detached (its parent was deleted first); handled with the parent
        plan.sort(key=lambda p: (p[0], p[1]))
        return plan

    async def push_node(self, node_id: int) -> None:
        """Push one node's change now (write-through), after any new directories above it.

        Waits on the network; raises what the upstream raises (``UpstreamUnavailable``,
        ``UpstreamTimeout``, ``Conflict`` never: a conflict is kept as a conflict copy) and
        ``NotFound`` if the node went away. Unlike a round, a file still open for writing is
        pushed too: the caller is its ``close`` or ``fsync``.
        """
        self._plan()  # the pending deletes a rename-over replaces
        reasons_of = {n.id: r for n, r in self.local.dirty_nodes()}
        node = self.local.node(node_id)
        folder = self.local.folder_of(node)[0].decode()
        up = self.upstreams[folder]
        chain = [node]
        while not chain[-1].has_base and chain[-1].parent in reasons_of:
            chain.append(self.local.node(chain[-1].parent))
        for n in reversed(chain):
            reasons = reasons_of.get(n.id)
            if reasons:
                async with self._lock(n.id):
                    await self._push_one(self.local.node(n.id), reasons, up, force=True)

    @asynccontextmanager
    async def _lock(self, node_id: int) -> AsyncIterator[None]:
        """One push of a node at a time (a background round and a close-time upload); the lock
        is dropped when nobody holds or waits for it, so the table stays as small as the work."""
        lock = self._locks.setdefault(node_id, trio.Lock())
        try:
            async with lock:
                yield
        finally:
            # trio hands a released lock straight to the next waiter, so "not locked" means
            # nobody is waiting either
            if not lock.locked() and self._locks.get(node_id) is lock:
                del self._locks[node_id]

    # ------------------------------------------------ what a file's state shows (``filestate``)

    def uploading(self, node_id: int) -> bool:
        lock = self._locks.get(node_id)
        return lock is not None and lock.locked()

    def problem(self, node_id: int) -> str | None:
        return self.problems.reason_of(node_id)

    def excluded(self, name: bytes) -> bool:
        return self.matcher.is_excluded(name)

    async def push_round(self, allowed: set[str]) -> int:
        """Push the dirty nodes of the ``allowed`` folders; return how many stay dirty.

        Directories, renames and deletes go one at a time in plan order; file contents go up
        to ``UPLOADS_IN_FLIGHT`` at once, small ones up to ``SMALL_UPLOADS_IN_FLIGHT`` (a
        round trip per small file is the cost that matters), each started only after every
        directory above it was handled.
        """
        await self.recover_unrecorded(allowed)
        plan = self._plan()
        failed_folders: set[str] = set()
        left = 0
        limiter = trio.CapacityLimiter(UPLOADS_IN_FLIGHT)
        small_limiter = trio.CapacityLimiter(SMALL_UPLOADS_IN_FLIGHT)
        renamed: set[int] = set()  # files whose rename went first this round (below)

        async def one(node, reasons: int, folder: str, *, rename_only: bool = False) -> None:
            nonlocal left
            if folder in failed_folders or not self.problems.may_try(node.id, trio.current_time()):
                left += 1
                return
            try:
                async with self._lock(node.id):
                    if node.id in renamed:
                        node = self.local.node(node.id)  # its base moved with the rename pass
                    elif self._changed_meanwhile(node, base_too=True):
                        left += 1  # a write-through pushed it meanwhile; the next round looks again
                        return
                    await self._push_one(node, reasons, self.upstreams[folder], rename_only=rename_only)
                    if rename_only:
                        renamed.add(node.id)
                        return
                self.problems.succeeded(node.id)
            except (UpstreamUnavailable, UpstreamTimeout) as exc:
                log.info("push to %s paused: %s", folder, exc)
                self.on_link_error(folder)
                failed_folders.add(folder)
                left += 1
            except (NotFound, SourceChanged) as exc:
                # Deleted, renamed or rewritten while it waited or uploaded: normal under churn.
                log.debug("push of node %s deferred: %s", node.id, exc)
                left += 1
            except Exception as exc:  # noqa: BLE001 - one file's failure never ends the daemon
                left += 1
                if isinstance(exc, CscdError) and self._changed_meanwhile(node):
                    log.debug("push of %r restarts: it changed during the upload (%s)", node.name, exc)
                else:
                    self.problems.failed(node.id, folder, self._describe(node), exc, trio.current_time())

        async def limited(node, reasons: int, folder: str) -> None:
            async with small_limiter if node.size < SMALL_FILE_BYTES else limiter:
                await one(node, reasons, folder)

        for folder in allowed:
            self._apply_cap(folder)
        todo = [p for p in plan if p[4] in allowed]
        left += len(plan) - len(todo)
        for phase, _depth, node, reasons, folder in todo:
            if phase == LEAVE:
                await one(node, reasons, folder)
        # Renames next, one at a time, before any upload: a new file may take the name one of
        # them frees (vim moves doc to doc~, then writes a new doc). Uploaded at once beside
        # the rename, the new doc found the old one still there: a conflict with itself.
        for phase, _depth, node, reasons, folder in todo:
            if phase == CHANGE and not node.is_dir and _is_moved(node):
                await one(node, reasons, folder, rename_only=True)
        async with trio.open_nursery() as nursery:
            for k, (phase, _depth, node, reasons, folder) in enumerate(todo):
                if phase == CHANGE and not node.is_dir:
                    nursery.start_soon(limited, node, reasons, folder, name="sync.upload")
                    if k % START_STEP == START_STEP - 1:
                        await trio.lowlevel.checkpoint()  # 1,500 starts held the mount 18 ms
                elif phase == CHANGE:
                    await one(node, reasons, folder)
        for phase, _depth, node, reasons, folder in todo:
            if phase == REMOVE:
                await one(node, reasons, folder)
        if not failed_folders and allowed:
            self.counters.last_success = trio.current_time()
        return left

    def _describe(self, node) -> str:
        """The node's path for a log line or ``cscd status`` (its name if the path is gone)."""
        try:
            folder, parts = self.local.folder_of(self.local.node(node.id))
            return "/".join(p.decode(errors="replace") for p in (folder, *parts))
        except Exception:  # noqa: BLE001 - only for a message
            return node.name.decode(errors="replace")

    def _apply_cap(self, folder: str) -> None:
        """Set the folder's upload cap for this round from its mode and policy."""
        up = self.upstreams.get(folder)
        link = self.links.get(folder)
        if up is None or link is None or not hasattr(up, "set_upload_rate"):
            return
        policy = self.policies.get(folder) or OfflinePolicy()
        up.set_upload_rate(policy.upload_rate(slow=link.mode is Mode.SLOW_LINK))

    def _changed_meanwhile(self, node, *, base_too: bool = False) -> bool:
        try:
            now = self.local.node(node.id)
        except NotFound:
            return True
        return now.version != node.version or base_too and now.base_entry() != node.base_entry()

    async def _leave_sync(self, node, version: int, up: Upstream) -> None:
        """An excluded name: delete the agreed server file, if any, and keep it local only."""
        if node.has_base:
            _, path = self.local.remote_path(node)
            try:
                current = await up.stat(path)
                if self._is_agreed_or_ours(node, current):
                    await up.delete(path, is_dir=False)
                    self.counters.deletes += 1
                    log.info("%r left the synced view (renamed to the excluded %r): deleted on the server",
                             path, node.name)
            except NotFound:
                pass
        self.local.record_local_only(node.id, version)

    async def _holds_only_ours(self, node, path: bytes, up: Upstream) -> bool:
        """Whether every entry of the server folder ``path`` (a deleted folder's) is one this
        client knows: agreed on, or sent there itself. Then its delete waits for theirs; it
        used to be given up at once, and the folder came back here, empty, at the next listing
        (rsync --delete of a renamed folder left it behind)."""
        try:
            entries = await up.list_dir(path)
        except NotFound:
            return True
        return all(self.local.knows_server_name(node.id, e.name) for e in entries)

    def _is_agreed_or_ours(self, node, current: RemoteEntry) -> bool:
        """Whether the server entry under a node's base name is its base, or a version of its
        own that was never recorded: what a delete of the node may remove."""
        return node.matches_base(current) or any(
            n.node_id == node.id and n.ours.is_(current)
            for n in self.local.unrecorded_at(node.base_parent, node.base_name))

    async def recover_unrecorded(self, allowed: set[str]) -> None:
        """Settle the server changes of ours that were never recorded and that no push will
        meet (see ``cache.unrecorded``): their node was deleted, renamed or moved since, or is
        gone, and no node here has that name or has it as its server name. Each such server
        file, if still there and still ours, becomes its node's base again (the node's push
        then renames, deletes or uploads over it as usual) or, if no node wants it, is
        deleted. Runs before each round's plan. A note of a name in use is left to the push
        of the node using it: the upload that meets the file builds on it. Network per note
        (a handful after a crash, none otherwise); a link error stops it for that folder.
        """
        down: set[str] = set()
        for note in self.local.unrecorded():
            if self.local.name_in_use(note.parent, note.name):
                continue
            try:
                parent = self.local.node(note.parent)
                folder, parent_path = self.local.remote_path(parent)
            except NotFound:
                if not self.local.exists(note.parent):
                    self.local.forget_unrecorded(note)
                continue  # its directory is not on the server (yet)
            folder = folder.decode()
            if folder not in allowed or folder in down or folder not in self.upstreams:
                continue
            try:
                async with self._lock(note.node_id):
                    await self._recover_one(note, join_path(parent_path, note.name), self.upstreams[folder])
            except (UpstreamUnavailable, UpstreamTimeout):
                down.add(folder)
            except CscdError as exc:
                log.info("unrecorded change to %r not settled yet: %s", note.name, exc)

    async def _recover_one(self, note, path: bytes, up: Upstream) -> None:
        try:
            current = await up.stat(path)
        except NotFound:
            current = None
        if current is None or not note.ours.is_(current):
            self.local.forget_unrecorded(note)
            return
        node = self.local.node(note.node_id) if self.local.exists(note.node_id) else None
        if node is not None and not await self._base_holds(node, up) and self.local.adopt_unrecorded(note, current):
            log.info("%r on the server is an unrecorded %s of ours; it is the base of %r again",
                     path, _kind_of(note.ours), node.name)
            return
        # The note goes only once the file is: until then a listing merged meanwhile must
        # still know the file for ours, not a stranger's new one (it used to show up here as
        # a placeholder of a file about to go, read as ENOENT or resurrected after a crash).
        await self._take_back(path, current, up)
        self.local.forget_unrecorded(note)
        log.info("%r on the server was an unrecorded %s of ours that nothing here wants any more; "
                 "taken back (a folder only if empty)", path, _kind_of(note.ours))

    async def _parent_holds(self, node, up: Upstream) -> None:
        """Raise ``NotFound`` unless the directory above the node's base name is on the server
        as agreed: a name missing only because its folder moved (a rename of ours whose answer
        was lost) is not a finished delete."""
        parent = self.local.node(node.base_parent)
        if parent.parent == ROOT_ID:
            return  # a redirected folder itself: its connection proves it
        if not await self._base_holds(parent, up):
            raise NotFound(f"the folder of {node.base_name!r} is not where it was on the server")

    async def _base_holds(self, node, up: Upstream) -> bool:
        """Whether the server still holds the node's base under the base's name."""
        if not node.has_base:
            return False
        try:
            return node.matches_base(await up.stat(self.local.remote_path(node)[1]))
        except NotFound:
            return False

    async def _push_one(self, node, reasons: int, up: Upstream, *, force: bool = False,
                        rename_only: bool = False) -> None:
        local = self.local
        version = node.version
        if not reasons & DELETE and self._is_local_only(node):
            await self._leave_sync(node, version, up)
            return
        if node.is_deleted and not node.has_base:
            local.record_synced(node.id, version, 0, None, reasons | DELETE)  # see ``_plan``
            return
        if reasons & DELETE:
            _, path = local.remote_path(node)
            try:
                # Delete only the version we agreed on: a rename may already have put
                # another file under this name (rename-over), or someone else did.
                current = await up.stat(path)
                if self._is_agreed_or_ours(node, current):
                    log.debug("delete %r (node %s)", path, node.id)
                    await up.delete(path, is_dir=node.is_dir)
                    self.counters.deletes += 1
            except NotFound:
                await self._parent_holds(node, up)
            except NotEmpty:
                if force:  # write-through: the caller's rmdir hears it
                    raise
                if await self._holds_only_ours(node, path, up):
                    # What is left in it is ours to delete or move (a delete of this round
                    # planned before it, or of the next): the folder goes once they have.
                    raise SourceChanged(f"{path!r} still holds entries this client is removing") from None
                log.info("%r kept on the server: it holds files this client never saw", path)
                # The folder comes back here with those files, at the parent's next listing:
                # ask for it now, nobody else will (no notification reports a non-change).
                self.on_server_differs(node.base_parent if node.has_base else node.parent)
            local.record_synced(node.id, version, 0, None, DELETE)
            return
        parent = local.node(node.parent)
        _, parent_path = local.remote_path(parent)  # NotFound: parent not on the server yet
        target = join_path(parent_path, node.name)
        entry: RemoteEntry | None = node.base_entry()
        if _is_moved(node):
            _, old = local.remote_path(node)
            moved = Ours(node.base_size, node.base_mtime_ns, node.base_file_id, node.is_dir)
            local.record_sending(node.id, parent.id, node.name, moved)
            log.debug("rename %r -> %r (node %s)", old, target, node.id)
            try:
                entry = await up.rename(old, target, replace=True)
            except NotFound:
                # Gone from the old name: if the base is under the new one, the rename itself
                # went through and only its answer was lost (a crash, a broken link).
                entry = await up.stat(target)
                if not moved.is_(entry):
                    raise
                log.info("%r was already renamed to %r on the server; recording it", old, target)
            self.counters.renames += 1
            local.record_synced(node.id, version, parent.id, entry, NAMESPACE)
            node = local.node(node.id)
        if rename_only:
            return
        if node.is_dir:
            if not node.has_base:
                # Noted first: a mkdir whose answer was lost may still be carried out by the
                # server later, after the folder moved or went away here (a hung server that
                # recovers runs what it had queued). The note makes that folder ours, not a
                # new one from someone else (see ``recover_unrecorded``).
                local.record_sending(node.id, parent.id, node.name, Ours(0, 0, 0, True))
                log.debug("mkdir %r (node %s)", target, node.id)
                try:
                    entry = await up.mkdir(target)
                except Exists:
                    entry = await up.stat(target)
                    if decide(None, Local(is_dir=True, changed=True), entry) is Action.CONFLICT:
                        await self._rename_local_conflict(node)
                        return
                if not local.exists(node.id):
                    await self._take_back(target, entry, up)  # removed here while it was made there
                    return
            refused = None
            if reasons & ATTRS or (not node.has_base and local.server_eas(node.id)):
                refused = await self._put_eas(node, target, up)
            self._record(node, version, parent.id, entry, reasons, refused)
            return
        if local.is_open_for_write(node.id) and not force:
            return  # uploaded when the last writer closes
        chunks = None
        refused = None
        replaced = [] if node.has_base else self._replaced(node, parent, target)
        if reasons & CONTENT or not node.has_base:
            entry, chunks, fresh = await self.uploads.upload(node, parent_path, target, up, replaced)
            if not local.exists(node.id):
                # A new file deleted here while it uploaded: no record is left to delete the
                # server copy next round, so take it back now (if it is still ours).
                await self._take_back(target, entry, up)
                self._settle_replaced(replaced)
                return
            if reasons & ATTRS or local.server_eas(node.id):
                # A new version is a new server file (a temporary renamed over): the EAs the
                # old one had are gone with it.
                refused = await self._put_eas(node, target, up, fresh=fresh)
        else:
            if reasons & META:
                entry = await up.set_mtime(target, node.mtime_ns)
            if reasons & ATTRS:
                refused = await self._put_eas(node, target, up)
        self._record(node, version, parent.id, entry, reasons, refused, chunks=chunks)
        self._settle_replaced(replaced)

    async def _put_eas(self, node, target: bytes, up: Upstream, *, fresh: bool = False) -> CscdError | None:
        """Write the node's mode and attributes as the EAs of ``target``; a refusal (a server
        file system with no room for them: ext4 keeps about 4 KiB of xattrs per file) is
        returned, not raised, so the content's upload is still recorded."""
        try:
            await up.set_eas(target, self.local.server_eas(node.id), fresh=fresh)
        except (UpstreamUnavailable, UpstreamTimeout, NotFound, SourceChanged):
            raise
        except CscdError as exc:
            where = target.decode(errors="replace")
            return type(exc)(f"the server refused the mode and extended attributes of {where} ({exc}); "
                             "they stay on this machine and are tried again later")
        return None

    def _record(self, node, version: int, parent_id: int, entry, reasons: int, refused: CscdError | None,
                **kwargs) -> None:
        """``record_synced``; after refused EAs the attributes stay dirty (a listing must not
        take the server's over them) and the refusal is raised for the problems' backoff."""
        self.local.record_synced(node.id, version, parent_id, entry, reasons, **kwargs)
        if refused is not None:
            self.local.attrs_unsent(node.id)
            raise refused

    def _replaced(self, node, parent, target: bytes) -> list:
        """The deleted files a new file was renamed over here (an atomic save): the server
        version under its name is one of theirs, and its upload may replace it. Usually one;
        after a crash between a rename over one of them on the server and its record, the
        server holds the other's."""
        found = list(self._deletes.get((self.local.folder_of(node)[0], target), ()))
        holder = self.local.replaced_at(parent.id, node.name)
        if holder is not None and all(n.id != holder.id for n in found):
            found.append(holder)
        return found

    def _settle_replaced(self, replaced: list) -> None:
        """The name holds the new upload now: nothing of the files it replaced is left there
        to delete."""
        for gone in replaced:
            if self.local.exists(gone.id):
                self.local.record_synced(gone.id, gone.version, 0, None, DELETE)

    async def _take_back(self, target: bytes, entry: RemoteEntry, up: Upstream) -> None:
        """Delete what this push just made on the server for a node that is gone here (a new
        file or folder removed while it was being created there: no record is left to carry
        the delete next round). Only if the server still holds exactly that; a folder only if
        it is empty (what it holds has deletes of its own)."""
        try:
            current = await up.stat(target)
            if same_version(entry, current):
                await up.delete(target, is_dir=entry.is_dir)
                self.counters.deletes += 1
        except (NotFound, NotEmpty):
            pass

    async def _rename_local_conflict(self, node) -> None:
        name = conflict_name(node.name)
        self.local.rename_for_conflict(node.id, name)
        self.counters.conflicts += 1
        self.on_server_differs(node.parent)  # the server's file comes down under the name
        log.warning("conflict: %r is a file on the server; the local folder is kept as %r", node.name, name)


def _kind_of(ours: Ours) -> str:
    return "rename" if ours.file_id else "folder creation" if ours.is_dir else "upload"


def _is_moved(node) -> bool:
    """Renamed or moved here since the version both sides agreed on."""
    return node.has_base and (node.base_parent, node.base_name) != (node.parent, node.name)

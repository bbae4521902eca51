r"""``SmbListings``: the listings of one SMB connection, whole or batch by batch.

Owns what a server enumeration becomes before anyone else sees it: ``.``/``..`` and upload
temporaries left out (those older than an hour noted in ``leftovers`` for the next upload to
delete), names ``check_name`` refuses logged and left out (a server name cscd could not
create or open again, for example ``aux.c`` on Samba, would fail on every access), and the
EAs (mode, ``user.*`` attributes) of the entries whose listing says they have some, read
only when their change time moved. Also which folders are too big for one frame, so their
next listing goes straight to batches.

The requests themselves are ``smb_ops.list_dir``'s; the connection, threads and deadlines
are the ``SmbUpstream``'s, reached through the ``run`` it passes in. Never touches the cache.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from cscd.errors import BadName, UpstreamUnavailable
from cscd.names import check_name, is_internal_name, local_name
from cscd.types import RemoteEntry
from cscd.upstream import smb_ops as ops
from cscd.upstream.smb_errors import Abandoned
from cscd.upstream.smb_messages import DirEntry
from cscd.upstream.smb_wire import Call, SmbLink
from cscd.xattrs import ServerEas, canonical

log = logging.getLogger(__name__)

#: Upload temporaries older than this (by change time) found in a listing are deleted.
STALE_TEMP_S = 3600.0
#: files whose EAs are remembered between listings before the memory starts over
EAS_SEEN_MAX = 100_000
#: Folders whose listing did not fit one buffer, remembered so the next listing goes straight
#: to batches (``smb_ops.list_dir``); forgotten wholesale past this many.
BIG_DIRS_MAX = 10_000
#: entries of a batch turned into ``RemoteEntry`` between two checkpoints
CHECKPOINT_EVERY = 2000

#: ``SmbUpstream._run``: ``fn(link, call, *args)`` in a worker thread on a live link
Run = Callable[..., Awaitable[Any]]


class SmbListings:
    """Directory listings over one connection (see the module doc)."""

    def __init__(self, run: Run, description: str, root: Callable[[], str], leftovers: set[str]) -> None:
        self._run = run
        self._description = description
        #: the folder's own server path (it moves with a DFS failover)
        self._root = root
        #: upload temporaries found stale, shared with the uploads that delete them
        self._leftovers = leftovers
        #: (server path, file id, change time, EA size) → EAs: a file's EAs are read again
        #: only when its change time or EA size moved (setting an EA moves the change time)
        self._eas_seen: dict[tuple[str, int, int, int], ServerEas] = {}
        self._big_dirs: set[str] = set()
        self._eas_support: bool | None = None  # asked once (FileFsAttributeInformation)

    async def eas_supported(self, where: str) -> bool:
        """Whether the share stores EAs (Samba's ``ea support``); asked once."""
        if self._eas_support is None:
            self._eas_support = await self._run(where, ops.supports_eas, self._root(), idempotent=True)
            if not self._eas_support:
                log.warning("%s stores no extended attributes (Samba: 'ea support = no'): modes and "
                            "user.* attributes set here stay on this machine", self._description)
        return self._eas_support

    async def in_pages(self, spath: str, where: str,
                       on_page: Callable[[list[RemoteEntry]], Awaitable[None]]) -> None:
        """The folder ``spath``, each batch of a large one handed to ``on_page`` as it arrives.

        The server prepares the next batch while ``on_page`` works on this one (a first
        listing of 100,000 entries is shown while it is still coming in). A connection lost
        midway is not retried here (what was handed on would come again): the caller sees
        the error with part of the folder handed on.
        """
        small = spath not in self._big_dirs
        # On a share without EAs every entry's EAs stay unknown (None): a listing resets nothing.
        known: tuple[()] | None = () if await self.eas_supported(where) else None
        send, receive = trio.open_memory_channel[list[DirEntry]](math.inf)
        handed = 0

        def page(raw: list[DirEntry]) -> None:  # in the listing's thread
            nonlocal handed
            handed += 1
            try:
                trio.from_thread.run_sync(send.send_nowait, raw)
            except (trio.ClosedResourceError, trio.RunFinishedError):
                raise Abandoned from None  # the caller went away

        def listing(link: SmbLink, call: Call, spath: str) -> tuple[list[DirEntry], bool]:
            if handed:
                raise UpstreamUnavailable(f"{where}: the connection was lost in the middle of a listing")
            return ops.list_dir(link, call, spath, small=small, page=page)

        failed: BaseException | None = None
        fitted = False

        async def consume() -> None:
            nonlocal failed
            try:
                async for raw in receive:
                    entries = await self._entries_of(where, spath, raw, known)
                    if entries:
                        await on_page(entries)
            except Exception as exc:  # noqa: BLE001 - re-raised after the nursery
                failed = exc
                nursery.cancel_scope.cancel()

        # Errors are kept and raised after the nursery, so the caller gets them as themselves
        # rather than wrapped in an ExceptionGroup.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            try:
                raw, fitted = await self._run(where, listing, spath, idempotent=True)
                send.send_nowait(raw)
            except Exception as exc:  # noqa: BLE001 - re-raised after the nursery
                failed = failed or exc
                nursery.cancel_scope.cancel()
            finally:
                send.close()
        if failed is not None:
            raise failed
        if fitted:
            self._big_dirs.discard(spath)
        else:
            if len(self._big_dirs) > BIG_DIRS_MAX:
                self._big_dirs.clear()
            self._big_dirs.add(spath)

    async def _entries_of(self, where: str, spath: str, raw: list[DirEntry],
                          known: tuple[()] | None) -> list[RemoteEntry]:
        """The entries cscd shows, from one batch of the server's (see the module doc)."""
        out = []
        with_eas: list[tuple[int, str, DirEntry]] = []  # (index in out, server path, entry)
        stale_before = time.time_ns() - int(STALE_TEMP_S * 1e9)
        for i, e in enumerate(raw):
            if not i % CHECKPOINT_EVERY:
                await trio.lowlevel.checkpoint()  # the mount answers while a batch is read
            if e.name in (".", ".."):
                continue
            if is_internal_name(e.name):
                # Another client's upload in progress keeps its temporary's times fresh.
                if 0 < max(e.mtime_ns, e.ctime_ns) < stale_before:
                    self._leftovers.add(f"{spath}\\{e.name}" if spath else e.name)
                continue
            try:
                name = local_name(e.name)
                check_name(name)
            except (UnicodeEncodeError, BadName) as exc:
                log.warning("skipping %s\\%r: not a usable local name (%s)", where, e.name, exc)
                continue
            if e.ea_size and known is not None:
                with_eas.append((len(out), f"{spath}\\{e.name}" if spath else e.name, e))
            out.append(RemoteEntry(name, e.is_dir, e.size, e.mtime_ns, e.ctime_ns, e.file_id, known))
        if with_eas:
            await self._attach_eas(where, with_eas, out)
        return out

    async def _attach_eas(self, where: str, with_eas: list[tuple[int, str, DirEntry]],
                          out: list[RemoteEntry]) -> None:
        """Attach the EAs of the entries whose listing says they have some; only those not
        read before at the same change time."""
        wanted: list[tuple[int, tuple[str, int, int, int]]] = []
        for i, spath, r in with_eas:
            key = (spath, r.file_id, r.ctime_ns, r.ea_size)
            seen = self._eas_seen.get(key)
            if seen is None:
                wanted.append((i, key))
            else:
                out[i] = dataclasses.replace(out[i], eas=seen)
        if not wanted:
            return
        found = await self._run(where, ops.eas_of_many, [k[0] for _, k in wanted], idempotent=True)
        if len(self._eas_seen) > EAS_SEEN_MAX:
            self._eas_seen.clear()
        for (i, key), eas in zip(wanted, found, strict=True):
            if eas is None:
                out[i] = dataclasses.replace(out[i], eas=None)  # unknown: nothing is reset
                continue
            value = canonical(dict(eas))
            self._eas_seen[key] = value
            out[i] = dataclasses.replace(out[i], eas=value)

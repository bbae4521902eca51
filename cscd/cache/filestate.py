"""A file's offline state as a user sees it: Explorer's overlay and Sync Center's status.

Owns turning the index (content present, dirty bits, pin, conflict records) and what sync
knows in memory (the push under way, a file that keeps failing, an excluded name) into one
word, ``user.cscd.state``, and the details ``cscd info`` shows. The states, first match wins:

``error``       sync keeps failing (a sync problem, as ``cscd status`` lists it)
``conflict``    a conflict copy, or the original it was made from, not resolved yet
``excluded``    a name sync keeps out (``exclusions``): kept here only
``uploading``   its push runs now
``dirty``       changed here, waiting to be uploaded
``pinned``      always available offline, and all of it is here
``cached``      all of it is here (a folder: its listing is)
``partial``     some of its bytes are here
``placeholder`` none of its bytes (a folder: never listed here)

Read-only and cheap: one read transaction (plus a scan of the conflict records, which are a
handful). Sync's side comes through ``SyncView``; without one (no sync running) only what
the index says counts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Protocol

from cscd.cache import nodes
from cscd.cache.index import from_u64
from cscd.cache.nodes import Flag
from cscd.cache.ranges import present_bytes

if TYPE_CHECKING:
    from cscd.cache.core import CacheCore

STATES = ("error", "conflict", "excluded", "uploading", "dirty", "pinned", "cached", "partial", "placeholder")


class SyncView(Protocol):
    """What sync knows about a node that the index does not hold (implemented by its pusher)."""

    def uploading(self, node_id: int) -> bool: ...

    def problem(self, node_id: int) -> str | None: ...

    def excluded(self, name: bytes) -> bool: ...


@dataclass
class FileState:
    state: str
    pinned: bool
    is_dir: bool
    size: int
    bytes_cached: int
    #: what waits to go to the server: "content", "times", "name", "delete", "attributes"
    pending: list[str] = field(default_factory=list)
    #: the sync problem's message (state ``error``)
    problem: str | None = None
    #: the other name of a conflict: the original of a copy, or the copy of an original
    conflict_with: str | None = None
    on_server: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def describe(core: CacheCore, node_id: int, sync: SyncView | None = None) -> FileState:
    """The node's state now (``NotFound`` if it is gone)."""
    ix = core.index
    with core.txn() as txn:
        node = nodes.get(ix, txn, node_id)
        reasons = nodes.dirty_reasons(ix, txn, node_id)
        if node.is_dir:
            cached = 0
            complete = Flag.LISTED in node.flags
            some = complete
        elif node.is_hydrated:
            cached, complete, some = node.size, True, True
        else:
            cached = present_bytes(core.present(txn, node))
            complete, some = cached >= node.size, cached > 0
        conflict_with = _conflict_partner(ix, txn, node)
        pinned = nodes.is_pinned(ix, txn, node)
    problem = sync.problem(node_id) if sync is not None else None
    pending = [label for bit, label in _PENDING if reasons & bit]
    if problem is not None:
        state = "error"
    elif conflict_with is not None:
        state = "conflict"
    elif sync is not None and not node.is_dir and sync.excluded(node.name):
        state = "excluded"
    elif sync is not None and sync.uploading(node_id):
        state = "uploading"
    elif reasons:
        state = "dirty"
    elif complete:
        state = "pinned" if pinned else "cached"
    else:
        state = "partial" if some else "placeholder"
    return FileState(state, pinned, node.is_dir, 0 if node.is_dir else node.size, cached, pending,
                     problem, conflict_with, node.has_base)


_PENDING = (
    (nodes.DirtyReason.CONTENT, "content"),
    (nodes.DirtyReason.META, "times"),
    (nodes.DirtyReason.NAMESPACE, "name"),
    (nodes.DirtyReason.DELETE, "delete"),
    (nodes.DirtyReason.ATTRS, "attributes"),
)


def _conflict_partner(ix, txn, node) -> str | None:
    for key, value in txn.cursor(db=ix.conflicts):
        rec = json.loads(ix.unseal(bytes(value)))
        original = rec["original"]
        if from_u64(key) == node.id:
            return original
        if rec["parent"] == node.parent and original.encode("utf-8", "surrogateescape") == node.name:
            copy = nodes.find(ix, txn, from_u64(key))
            return None if copy is None else copy.name.decode("utf-8", "surrogateescape")
    return None

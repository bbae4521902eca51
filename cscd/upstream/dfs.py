r"""DFS namespaces: which server and share serve a ``\\namespace\root\link\rest`` path.

Owns this process's referral cache ([MS-DFSC] 3.1.1, ReferralCache): for each namespace
path a server answered for, the targets it named, in its order, kept for the referral's time
to live, with the target that answered last tried first (the "target hint"). Owns the walk
from a configured path to a connected share (``open_route``): connect, and where the share
turns out to be a DFS root (or does not exist, as a domain-based namespace name on a domain
controller), ask that server for a referral on its ``IPC$`` share and go on to a target;
a target that does not answer is passed over for the next one (failover).

No sockets of its own: the caller hands ``open_route`` a ``connect(server, share)`` that
returns an opened ``SmbLink`` (or raises ``cscd.errors``), and ``ask_referral`` sends its
request over such a link. Blocking: call both from a worker thread, as ``SmbUpstream`` does;
smbprotocol's errors come out untranslated (the caller's thread wrapper translates them).

A domain-based namespace (``\\domain\root``) is reached by connecting to the domain's name,
which DNS gives as its domain controllers: a DC has no share ``root``, so it is asked for
the root referral (``\\domain\root`` alone, as [MS-DFSC] 3.1.4.1 has it), and the root
targets it names are asked about the links below.

Not supported: site-aware target ordering (Samba and Windows already order targets by site
in their answer), referrals to a different port than the namespace's (a referral names a
server, never a port), the DC-list (``\\domain`` alone) and domain-list requests: DNS
gives the domain's controllers instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from cscd.errors import AccessDenied, CscdError, NotFound, TicketMissing, UpstreamTimeout, UpstreamUnavailable
from cscd.types import UncTarget
from cscd.upstream.smb_wire import SmbLink

log = logging.getLogger(__name__)

#: Referral hops before a walk is called a loop (Windows' client stops at 8 too).
MAX_HOPS = 8
#: A time to live of 0 would ask on every connect; servers send 300 or 600.
MIN_TTL_S = 5.0


class DfsError(UpstreamUnavailable):
    """A namespace that cannot lead to a share: a referral loop, a target refused by policy,
    a reply that names no usable target. Like an unreachable server to sync (the folder
    works offline), with a message naming the namespace path."""


def _key(components: tuple[str, ...]) -> tuple[str, ...]:
    # SMB paths and host names compare without case
    return tuple(c.casefold() for c in components)


def _components(unc: UncTarget) -> tuple[str, ...]:
    return (unc.server, unc.share, *unc.path)


def unc_of(components: tuple[str, ...]) -> UncTarget:
    return UncTarget(components[0], components[1], tuple(components[2:]))


@dataclass
class Referral:
    r"""What one server said about a namespace path: ``prefix`` (the part of the asked path
    the referral covers, server and share first) is served by each of ``targets`` (a
    ``\\server\share\path`` each), in that order, for ``ttl_s`` seconds from when the cache
    took it in (``expires_at``, on the cache's clock)."""

    prefix: tuple[str, ...]
    targets: tuple[UncTarget, ...]
    ttl_s: float
    is_root: bool = False
    expires_at: float = 0.0
    #: index into ``targets`` of the one that answered last (tried first next time)
    hint: int = 0

    def ordered(self) -> Iterator[UncTarget]:
        """The targets, the hinted one first, then the others in the server's order."""
        yield self.targets[self.hint]
        for n, t in enumerate(self.targets):
            if n != self.hint:
                yield t

    def prefer(self, target: UncTarget) -> None:
        for n, t in enumerate(self.targets):
            if t == target:
                self.hint = n
                return

    def rewrite(self, path: tuple[str, ...], target: UncTarget) -> UncTarget:
        """``path`` (which starts with ``prefix``) as served by ``target``."""
        return unc_of((*_components(target), *path[len(self.prefix):]))


@dataclass
class ReferralCache:
    """Referrals by namespace path; thread-safe (worker threads connect concurrently)."""

    clock: Callable[[], float] = time.monotonic
    _entries: dict[tuple[str, ...], Referral] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, referral: Referral) -> None:
        referral.expires_at = self.clock() + referral.ttl_s
        with self._lock:
            old = self._entries.get(_key(referral.prefix))
            if old is not None and old.hint < len(old.targets):
                referral.prefer(old.targets[old.hint])  # a refresh keeps the target in use
            self._entries[_key(referral.prefix)] = referral

    def lookup(self, path: tuple[str, ...], *, stale_ok: bool = False) -> Referral | None:
        """The referral with the longest prefix of ``path``; an expired one only with
        ``stale_ok`` (when its namespace server cannot be asked again)."""
        key = _key(path)
        now = self.clock()
        with self._lock:
            for n in range(len(key), 1, -1):
                ref = self._entries.get(key[:n])
                if ref is not None and (stale_ok or ref.expires_at > now):
                    return ref
        return None

    def __len__(self) -> int:
        return len(self._entries)


def parse_referral(reply: bytes, asked: tuple[str, ...], check_server: Callable[[str], None]) -> Referral:
    """A ``Referral`` from the body of an FSCTL_DFS_GET_REFERRALS reply to ``asked``.

    ``check_server`` raises a ``CscdError`` for a target server that must not be used; such a
    target is left out (and logged). Raises ``DfsError`` for a reply naming no usable target.
    """
    from smbprotocol.dfs import DFSReferralResponse, DFSServerTypes

    asked_text = "\\" + "\\".join(asked)  # as the request spelled it (one leading backslash)
    shown = str(unc_of(asked))
    response = DFSReferralResponse()
    try:
        response.unpack(reply)
        entries = response["referral_entries"].get_value()
        consumed = response["path_consumed"].get_value() // 2  # UTF-16 bytes → characters
    except Exception as exc:  # noqa: BLE001 - a malformed reply is the server's fault
        raise DfsError(f"the DFS referral for {shown} could not be read: {exc}") from None
    prefix = tuple(p for p in asked_text[:consumed].split("\\") if p)
    if len(prefix) < 2 or _key(prefix) != _key(asked[: len(prefix)]):
        raise DfsError(f"the DFS referral for {shown} covers {asked_text[:consumed]!r}, "
                       "not a part of the path asked for")
    targets: list[UncTarget] = []
    refused: list[str] = []
    ttl = None
    is_root = False
    for entry in entries:
        address = entry.network_address
        if not isinstance(address, str):
            continue  # a name-list (DC) referral: not asked for here
        parts = tuple(p for p in address.split("\\") if p)
        if len(parts) < 2:
            refused.append(f"{address!r} is not a \\\\server\\share")
            continue
        try:
            check_server(parts[0])
        except CscdError as exc:
            refused.append(str(exc))
            continue
        targets.append(unc_of(parts))
        entry_ttl = entry["time_to_live"].get_value() if "time_to_live" in entry.fields else 300
        ttl = entry_ttl if ttl is None else min(ttl, entry_ttl)
        server_type = entry["server_type"]
        is_root = is_root or bool(server_type.has_flag(DFSServerTypes.ROOT_TARGETS))
    if refused:
        log.warning("the DFS referral for %s: passed over: %s", shown, "; ".join(refused))
    if not targets:
        raise DfsError(f"the DFS referral for {shown} names no usable target"
                       + (f": {'; '.join(refused)}" if refused else ""))
    return Referral(prefix, tuple(targets), max(MIN_TTL_S, float(ttl or 0)), is_root)


class Connector:
    """Opens links on behalf of ``open_route`` and remembers the one being opened, so that a
    watchdog on another thread can tear it down (``teardown``) or ask whether it is in the
    middle of a logon (``logging_on``). ``make(server, share)`` builds an unopened link,
    ``start(link)`` opens it, or another one it sets as ``current`` (a logon fallback), and
returns the link opened (raising ``cscd.errors``)."""

    def __init__(self, make: Callable[[str, str], object],
                 start: Callable[[object], object] | None = None) -> None:
        self._make = make
        self.start = start
        self.current: object | None = None

    def open(self, server: str, share: str) -> object:
        link = self._make(server, share)
        self.current = link  # before it blocks: the watchdog must be able to reach it
        assert self.start is not None
        return self.start(link)  # the link it opened (another with a logon fallback)

    def teardown(self) -> None:
        link = self.current
        if link is not None:
            link.teardown()  # type: ignore[attr-defined]

    @property
    def logging_on(self) -> bool:
        return bool(getattr(self.current, "logging_on", False))


#: Connect failures after which the next target is tried (Windows fails over on these too).
_NEXT_TARGET = (UpstreamUnavailable, UpstreamTimeout)


def open_route(
    path: UncTarget,
    cache: ReferralCache,
    connector: Connector,
    ask: Callable[[object, tuple[str, ...]], Referral | None],
    *,
    touch: Callable[[], None] = lambda: None,
) -> tuple[object, UncTarget]:
    r"""Connect to the share that serves ``path``, following DFS referrals.

    Returns (the opened link, the ``\\server\share\path`` it serves ``path`` as). ``ask(link,
    components)`` asks the link's server for a referral (None: the server has none, the
    path lives in the share itself). ``touch`` is called before each connect attempt (a
    watchdog's deadline is per attempt). Raises what the last attempt raised, ``DfsError``
    for a loop, ``AccessDenied`` and ``TicketMissing`` at once (another target would say the
    same).
    """
    current = _components(path)
    chain: list[str] = [str(path)]
    opened: object | None = None  # a link to current's share, opened by the hop before
    for _hop in range(MAX_HOPS):
        referral = cache.lookup(current)
        if referral is None:
            referral, opened = _ask_for(current, cache, connector, ask, touch, opened)
            if referral is None:
                assert opened is not None
                return opened, unc_of(current)
        elif opened is not None:
            _drop(opened)
        opened = None
        nxt, link = _open_target(referral, current, connector, touch)
        if not getattr(link, "is_dfs", False):
            return link, nxt
        # The target share is a namespace root itself: its referral says where nxt lives.
        if str(nxt).casefold() in (c.casefold() for c in chain):
            _drop(link)
            raise DfsError("DFS referral loop: " + " → ".join([*chain, str(nxt)])
                           + "; the namespace's links point at each other")
        chain.append(str(nxt))
        current, opened = _components(nxt), link
    if opened is not None:
        _drop(opened)
    raise DfsError(f"DFS referrals go on for more than {MAX_HOPS} hops: " + " → ".join(chain))


def _drop(link: object) -> None:
    link.teardown()  # type: ignore[attr-defined]


def _ask_for(
    current: tuple[str, ...], cache: ReferralCache, connector: Connector,
    ask: Callable[[object, tuple[str, ...]], Referral | None], touch: Callable[[], None],
    opened: object | None,
) -> tuple[Referral | None, object | None]:
    """Connect to ``current``'s share (or use ``opened``) and ask for a referral if it is a
    namespace root. (None, link): the share serves ``current`` itself. (referral, None)."""
    link = opened
    if link is None:
        touch()
        try:
            link = connector.open(current[0], current[1])
        except NotFound:
            # No such share here: perhaps a domain-based namespace (\\domain\root), which a
            # domain controller answers for on IPC$ without having the share.
            link = None
        except TicketMissing:
            raise
        except _NEXT_TARGET:
            stale = cache.lookup(current, stale_ok=True)
            if stale is None:
                raise
            log.info("the namespace server of %s does not answer; using its referral from "
                     "before", unc_of(stale.prefix))
            return stale, None
    if link is not None and not getattr(link, "is_dfs", False):
        return None, link  # a plain share: the everyday case
    asked = current
    if link is None:
        # [MS-DFSC] 3.1.4.1: a server without the share (a domain controller for
        # \\domain\root) is asked for the root referral, \domain\root alone; the root's
        # targets are then asked about the links below.
        asked = current[:2]
        touch()
        link = connector.open(current[0], "IPC$")
    try:
        referral = ask(link, asked)
    except BaseException:
        _drop(link)
        raise
    is_root_share = getattr(link, "is_dfs", False)
    if referral is None:
        if is_root_share:
            return None, link  # a folder of the root share itself
        _drop(link)
        raise NotFound(f"{unc_of(current)}: no such share, and no DFS namespace answers for it")
    cache.add(referral)
    if is_root_share and referral.is_root and any(
        _key(_components(t)) == _key(current[:2]) for t in referral.targets
    ):
        return None, link  # a root referral naming this very share
    _drop(link)
    return referral, None


def _open_target(
    referral: Referral, current: tuple[str, ...], connector: Connector, touch: Callable[[], None]
) -> tuple[UncTarget, object]:
    """Connect to the first target of ``referral`` that answers (failover)."""
    failures: list[str] = []
    last: CscdError | None = None
    for target in list(referral.ordered()):
        nxt = referral.rewrite(current, target)
        touch()
        try:
            link = connector.open(nxt.server, nxt.share)
        except (AccessDenied, UpstreamUnavailable, UpstreamTimeout, NotFound) as exc:
            if isinstance(exc, (AccessDenied, TicketMissing)):
                raise  # another target would say the same
            failures.append(f"{target}: {exc}")
            last = exc
            continue
        referral.prefer(target)
        if failures:
            log.info("DFS: %s answers for %s; passed over: %s", target,
                     unc_of(referral.prefix), "; ".join(failures))
        return nxt, link
    assert last is not None
    if len(referral.targets) == 1:
        raise last
    raise type(last)(f"none of the {len(referral.targets)} targets of {unc_of(referral.prefix)} "
                     "answers: " + "; ".join(failures))


#: Statuses saying "no referral for this path": not a namespace, or a folder of the root
#: share itself (Samba answers OBJECT_PATH_NOT_FOUND for those).
_NO_REFERRAL = {0xC0000225, 0xC000003A, 0xC0000034, 0xC000019C, 0xC00000CC, 0xC0000010}


def ask_referral(link: object, call: object, components: tuple[str, ...],
                 check_server: Callable[[str], None]) -> Referral | None:
    """Ask ``link``'s server (FSCTL_DFS_GET_REFERRALS on its ``IPC$``) where ``components``
    (server, share, path...) lives; None if it has no referral for them. Blocking."""
    from smbprotocol.exceptions import SMBResponseException

    from cscd.upstream import smb_fsctl, smb_move

    assert isinstance(link, SmbLink)
    tree = link.tree
    if tree is None or link.is_dfs or not tree.share_name.upper().endswith("\\IPC$"):
        tree = smb_move.connect_tree(link, call, f"\\\\{link.host}\\IPC$")
    path = "\\" + "\\".join(components)
    try:
        reply = link.wait(link.send([smb_fsctl.referral_req(path)], call, tree=tree)[0], call)
    except SMBResponseException as exc:
        if int(exc.status) in _NO_REFERRAL:
            return None
        raise
    return parse_referral(smb_fsctl.ioctl_output(reply), components, check_server)

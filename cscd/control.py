"""The control socket: a small versioned JSON-lines API between ``cscd`` commands and the daemon.

Leaf-only imports (``cscd.errors``, ``cscd.events``): this module knows sockets and the
protocol, not the services. The daemon registers handlers — a dict of command name → ``async
fn(args) -> JSON-able result`` — and ``serve_control`` dispatches to them; ``cli.py`` uses
the blocking ``ControlClient``.

**Where.** ``$XDG_RUNTIME_DIR/cscd/control.sock`` for the default configuration
(``~/.config/cscd/cscd.yaml``), ``$XDG_RUNTIME_DIR/cscd/control-<hash>.sock`` for any other
configuration file (so two daemons of one user, e.g. tests or a second workstation, do not
meet). Without ``$XDG_RUNTIME_DIR`` (a system unit) the daemon listens on ``control.sock``
in its cache directory; the client also looks under ``/run/user/UID``. The directory is
0700, the socket 0600. Paths too long for ``sockaddr_un`` (108 bytes) are reached through
``/proc/self/fd``.

**Protocol, version 1.** One JSON object per line (UTF-8, at most ``MAX_LINE_BYTES``)::

    → {"v": 1, "id": 7, "cmd": "status", "args": {}}
    ← {"v": 1, "id": 7, "ok": true, "result": {...}}
    ← {"v": 1, "id": 7, "ok": false, "error": {"code": "unknown_command", "message": "..."}}

Requests on one connection are answered in order. Error codes: ``bad_request`` (not JSON,
not an object, wrong field types), ``unsupported_version``, ``unknown_command``,
``invalid_argument``, ``line_too_long`` (the connection is then closed),
``permission_denied`` (peer is neither the owner nor root; closed), ``busy`` (too many
connections; closed), ``not_configured`` (the command needs something the policy does not
give, e.g. a roaming profile), ``unavailable`` (the server did not answer; nothing was lost),
``failed`` (the handler raised a ``CscdError``: the message says why) and ``internal`` (a bug,
logged with its traceback). A malformed request never ends the connection's task with an
exception, let alone the daemon. Built in: ``hello`` (protocol version, pid, commands).

**Who.** ``SO_PEERCRED``: only the daemon's own uid and root are served; anyone else gets
one ``permission_denied`` reply and the connection is closed. File permissions (0700/0600)
already keep other users out; the credential check also covers a socket someone loosened.

Tasks: ``serve_control`` (named ``control`` by the daemon) runs one task per connection,
``control.conn-N``. Cancellation closes the listener and removes the socket file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import trio

from cscd.errors import CscdError
from cscd.events import EventRing, ring

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
#: Longest request line the server reads; a longer one is refused and the connection closed.
MAX_LINE_BYTES = 64 * 1024
#: Longest reply line the client reads (events and stats can be large).
MAX_REPLY_BYTES = 16 * 1024 * 1024
MAX_CONNECTIONS = 64
#: Longest wait of an ``events`` request with ``wait_s`` (long poll).
MAX_EVENT_WAIT_S = 30.0
SOCKET_NAME = "control.sock"
NOT_RUNNING_HINT = "start it with systemctl --user start cscd"

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ControlError(CscdError):
    """An error reply (server side: raise it from a handler; client side: what came back)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class DaemonNotRunning(ControlError):
    """No daemon answers on the socket (missing, or nobody listening)."""

    def __init__(self, path: Path | None, detail: str = "") -> None:
        where = f"no control socket at {path}" if path is not None else "no control socket found"
        super().__init__("not_running", f"cscd is not running ({detail or where}): {NOT_RUNNING_HINT}")
        self.path = path


# ---------------------------------------------------------------- where the socket lives


def default_config_path() -> Path:
    """``$XDG_CONFIG_HOME/cscd/cscd.yaml``, else ``~/.config/cscd/cscd.yaml``."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(base) / "cscd" / "cscd.yaml"


def _run_user_dir(uid: int) -> Path | None:
    """``/run/user/UID`` if it exists and belongs to ``uid`` (logind makes it at login)."""
    candidate = Path(f"/run/user/{uid}")
    try:
        st = candidate.stat()
    except OSError:
        return None
    return candidate if stat.S_ISDIR(st.st_mode) and st.st_uid == uid else None


def _socket_name(config_path: Path | None) -> str:
    if config_path is None:
        return SOCKET_NAME
    resolved = Path(os.path.abspath(config_path))
    if resolved == Path(os.path.abspath(default_config_path())):
        return SOCKET_NAME
    digest = hashlib.sha256(os.fsencode(resolved)).hexdigest()[:12]
    return f"control-{digest}.sock"


def socket_candidates(config_path: Path | None, cache_dir: Path | None, *, uid: int | None = None) -> list[Path]:
    """Where a daemon with this configuration may listen, most likely first (for the client).

    A daemon started by a system unit has no ``$XDG_RUNTIME_DIR`` and listens in its cache
    directory, while the user's shell has one: so the client tries every place. ``uid``:
    another user's daemon (root asking for ``--user NAME``): their ``/run/user/UID``, never
    the caller's ``$XDG_RUNTIME_DIR``.
    """
    out: list[Path] = []
    name = _socket_name(config_path)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and uid in (None, os.getuid()):
        out.append(Path(xdg) / "cscd" / name)
    run_user = _run_user_dir(os.getuid() if uid is None else uid)
    if run_user is not None and run_user / "cscd" / name not in out:
        out.append(run_user / "cscd" / name)
    if cache_dir is not None:
        out.append(Path(cache_dir) / SOCKET_NAME)
    return out


def socket_path(config_path: Path | None, cache_dir: Path) -> Path:
    """Where the daemon listens: under ``$XDG_RUNTIME_DIR`` when set, else in the cache dir.

    Not ``/run/user/UID`` without ``$XDG_RUNTIME_DIR``: logind removes it at the user's last
    logout, while a daemon of the system template keeps running.
    """
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "cscd" / _socket_name(config_path)
    return Path(cache_dir) / SOCKET_NAME


@contextlib.contextmanager
def _address(path: Path) -> Iterator[str]:
    """An AF_UNIX address for ``path``, through ``/proc/self/fd`` when the path is too long."""
    if len(os.fsencode(path)) < 100:
        yield str(path)
        return
    dirfd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{dirfd}/{path.name}"
    finally:
        os.close(dirfd)


# ---------------------------------------------------------------- server


def _reply(req_id: Any, result: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": req_id, "ok": True, "result": result}


def _error(req_id: Any, code: str, message: str) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": req_id, "ok": False,
            "error": {"code": code, "message": message}}


def argument(args: Mapping[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None,
             *, required: bool = False) -> Any:
    """One argument of a request, type-checked; raises ``ControlError('invalid_argument')``."""
    if name not in args or args[name] is None:
        if required:
            raise ControlError("invalid_argument", f"argument {name!r} is required")
        return default
    value = args[name]
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise ControlError("invalid_argument", f"argument {name!r} must be a number")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ControlError("invalid_argument", f"argument {name!r} must be of type {names}")
    return value


def events_handler(source: EventRing = ring, *, poll_s: float = 0.1) -> Handler:
    """The ``events`` command: ring events after ``after_seq`` / not older than ``since``
    (epoch seconds), at most ``limit``; with ``wait_s`` it waits (≤ 30 s) for a new one."""
    async def handler(args: dict[str, Any]) -> Any:
        after = argument(args, "after_seq", int, 0)
        since = argument(args, "since", (int, float))
        limit = argument(args, "limit", int)
        wait_s = min(float(argument(args, "wait_s", (int, float), 0)), MAX_EVENT_WAIT_S)
        if limit is not None and limit <= 0:
            raise ControlError("invalid_argument", "argument 'limit' must be positive")
        deadline = trio.current_time() + max(0.0, wait_s)
        while True:
            found = source.select(after_seq=after, since=since, limit=limit)
            if found or trio.current_time() >= deadline:
                break
            await trio.sleep(poll_s)
        return {"events": [e.to_json() for e in found], "last_seq": source.last_seq}
    return handler


def _peer_uid(sock: trio.socket.SocketType) -> tuple[int, int]:
    """(pid, uid) of the process at the other end, from ``SO_PEERCRED``."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", raw)
    return pid, uid


def _check_existing(path: Path) -> None:
    """Remove a stale socket file; refuse if a live daemon still answers on it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise CscdError(f"{path}: exists and is not a socket; remove it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as probe, \
            _address(path) as addr:
        probe.settimeout(1.0)
        try:
            probe.connect(addr)
        except OSError:
            os.unlink(path)  # nobody listens: left by a daemon that died
            return
    raise CscdError(f"{path}: another cscd daemon answers on this control socket")


def listen(path: Path) -> socket.socket:
    """Bind and listen on ``path`` (directory 0700, socket 0600), replacing a stale socket."""
    parent = path.parent
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(parent)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise CscdError(f"{parent}: the control socket's directory must be a directory owned by uid "
                        f"{os.geteuid()}")
    os.chmod(parent, 0o700)
    _check_existing(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with _address(path) as addr:
            sock.bind(addr)
        os.chmod(path, 0o600)
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return sock


class _Server:
    def __init__(self, handlers: Mapping[str, Handler], owner_uid: int) -> None:
        self.handlers = dict(handlers)
        self.owner_uid = owner_uid
        self.connections = 0

    async def hello(self, args: dict[str, Any]) -> Any:
        return {"protocol": PROTOCOL_VERSION, "pid": os.getpid(),
                "commands": sorted({"hello", *self.handlers})}

    async def dispatch(self, line: bytes) -> dict[str, Any]:
        """Answer one request line; never raises (except cancellation)."""
        try:
            req = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            return _error(None, "bad_request", f"not a JSON line: {exc}")
        if not isinstance(req, dict):
            return _error(None, "bad_request", "a request is a JSON object")
        req_id = req.get("id")
        if not isinstance(req_id, (str, int, float, type(None))) or isinstance(req_id, bool):
            return _error(None, "bad_request", "'id' must be a string, a number or null")
        version = req.get("v")
        if version != PROTOCOL_VERSION or isinstance(version, bool):
            return _error(req_id, "unsupported_version",
                          f"protocol version {version!r} is not supported; this daemon speaks "
                          f"version {PROTOCOL_VERSION}")
        cmd = req.get("cmd")
        args = req.get("args", {})
        if not isinstance(cmd, str):
            return _error(req_id, "bad_request", "'cmd' must be a string")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            return _error(req_id, "bad_request", "'args' must be a JSON object")
        handler = self.hello if cmd == "hello" else self.handlers.get(cmd)
        if handler is None:
            return _error(req_id, "unknown_command",
                          f"unknown command {cmd[:80]!r}; known: {', '.join(sorted({'hello', *self.handlers}))}")
        try:
            result = await handler(args)
            json.dumps(result)  # a handler bug must become an error reply, not a dead connection
        except ControlError as exc:
            return _error(req_id, exc.code, exc.message)
        except CscdError as exc:
            return _error(req_id, "failed", str(exc) or type(exc).__name__)
        except Exception:  # noqa: BLE001 - a bug in one handler must not end the daemon
            log.exception("control: command %s failed", cmd)
            return _error(req_id, "internal", f"internal error in {cmd}; see the daemon's log")
        return _reply(req_id, result)

    async def serve(self, stream: trio.SocketStream, n: int) -> None:
        self.connections += 1
        try:
            async with stream:
                await self._serve(stream, n)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("control: connection %d ended: %s", n, exc)
        finally:
            self.connections -= 1

    async def _serve(self, stream: trio.SocketStream, n: int) -> None:
        pid, uid = _peer_uid(stream.socket)
        if uid not in (self.owner_uid, 0):
            log.info("control: refused a connection from uid %d (pid %d)", uid, pid)
            await _refuse(stream, _error(None, "permission_denied",
                                         f"this cscd belongs to uid {self.owner_uid}; uid {uid} may not use it"))
            return
        if self.connections > MAX_CONNECTIONS:
            await _refuse(stream, _error(None, "busy", "too many control connections; try again"))
            return
        log.debug("control: connection %d from pid %d", n, pid)
        buf = bytearray()
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            buf += data
            too_long = False
            while (end := buf.find(b"\n")) >= 0 and not too_long:
                line = bytes(buf[:end])
                del buf[: end + 1]
                too_long = len(line) > MAX_LINE_BYTES
                if line.strip() and not too_long:
                    await _send(stream, await self.dispatch(line))
            if too_long or len(buf) > MAX_LINE_BYTES:
                await _refuse(stream, _error(None, "line_too_long",
                                             f"a request line may have at most {MAX_LINE_BYTES} bytes"))
                return


async def _send(stream: trio.SocketStream, message: dict[str, Any]) -> None:
    await stream.send_all(json.dumps(message, separators=(",", ":")).encode() + b"\n")


async def _refuse(stream: trio.SocketStream, message: dict[str, Any]) -> None:
    """Send a last error and end the connection so that the peer can read it.

    Closing a Unix socket with unread input resets the peer, which may then lose our reply:
    so shut our side, and read and drop what the peer still sends (briefly, boundedly).
    """
    await _send(stream, message)
    await stream.send_eof()
    with trio.move_on_after(1.0):
        dropped = 0
        while dropped < 16 * MAX_LINE_BYTES and (data := await stream.receive_some(65536)):
            dropped += len(data)


async def serve_control(path: Path, handlers: Mapping[str, Handler], *, owner_uid: int | None = None,
                        task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED) -> None:
    """Listen on ``path`` and serve requests until cancelled; ``started(path)`` once listening.

    Raises ``CscdError`` before ``started`` if the socket cannot be made (another daemon
    answers on it, its directory belongs to someone else). On cancellation the socket file
    is removed if it is still ours.
    """
    sock = listen(path)
    ino = os.stat(path).st_ino
    server = _Server(handlers, os.geteuid() if owner_uid is None else owner_uid)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    try:
        async with listener, trio.open_nursery() as nursery:
            log.info("control socket at %s", path)
            task_status.started(path)
            n = 0
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:  # EMFILE and friends: wait, do not spin or die
                    log.warning("control: accept failed: %s", exc)
                    await trio.sleep(0.1)
                    continue
                n += 1
                nursery.start_soon(server.serve, stream, n, name=f"control.conn-{n}")
    finally:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == ino:
                os.unlink(path)


# ---------------------------------------------------------------- client


class ControlClient:
    """A blocking client for ``cli.py``: one connection, one request at a time.

    ``call`` raises ``DaemonNotRunning`` when nobody listens, ``ControlError`` for an error
    reply or a timeout (code ``timeout``).
    """

    def __init__(self, candidates: list[Path] | Path, *, timeout_s: float = 10.0) -> None:
        self.candidates = [candidates] if isinstance(candidates, Path) else list(candidates)
        self.timeout_s = timeout_s
        self.path: Path | None = None
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._next_id = 1

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def connect(self) -> None:
        """Connect to the first candidate that answers."""
        tried = None
        stale: list[Path] = []
        for path in self.candidates:
            tried = tried or path
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            sock.settimeout(self.timeout_s)
            try:
                with _address(path) as addr:
                    sock.connect(addr)
            except ConnectionRefusedError:
                sock.close()
                stale.append(path)
                continue
            except (FileNotFoundError, NotADirectoryError):
                sock.close()
                continue
            except PermissionError:
                sock.close()
                raise ControlError("permission_denied",
                                   f"{path}: permission denied; this daemon belongs to another user") from None
            except OSError as exc:
                sock.close()
                raise DaemonNotRunning(path, f"{path}: {exc.strerror or exc}") from None
            self._sock, self.path = sock, path
            return
        if stale:
            raise DaemonNotRunning(stale[0], f"nobody answers at {stale[0]}, the socket of a daemon that "
                                   "stopped or was killed")
        where = ", ".join(str(c) for c in self.candidates) or "nowhere"
        raise DaemonNotRunning(tried, f"no control socket at {where}" if len(self.candidates) > 1 else "")

    def call(self, cmd: str, args: Mapping[str, Any] | None = None, *,
             timeout_s: float | None = None) -> Any:
        """Send one request and return its result."""
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        req_id = self._next_id
        self._next_id += 1
        line = json.dumps({"v": PROTOCOL_VERSION, "id": req_id, "cmd": cmd,
                           "args": dict(args or {})}).encode() + b"\n"
        self._sock.settimeout(self.timeout_s if timeout_s is None else timeout_s)
        try:
            self._sock.sendall(line)
            reply = self._read_line()
        except TimeoutError:
            self.close()
            raise ControlError("timeout", f"cscd did not answer {cmd} within "
                                          f"{self.timeout_s if timeout_s is None else timeout_s:g} s") from None
        except OSError as exc:
            self.close()
            raise DaemonNotRunning(self.path, f"the connection to {self.path} broke: "
                                               f"{exc.strerror or exc}") from None
        try:
            msg = json.loads(reply)
        except ValueError:
            raise ControlError("bad_reply", f"the daemon sent a line that is not JSON: {reply[:80]!r}") from None
        if not isinstance(msg, dict):
            raise ControlError("bad_reply", "the daemon sent a reply that is not an object")
        if msg.get("ok"):
            return msg.get("result")
        err = msg.get("error") or {}
        raise ControlError(str(err.get("code", "failed")), str(err.get("message", "the daemon refused")))

    def _read_line(self) -> bytes:
        assert self._sock is not None
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 1]
                return line
            if len(self._buf) > MAX_REPLY_BYTES:
                raise ControlError("bad_reply", "the daemon's reply is too long")
            data = self._sock.recv(1 << 20)
            if not data:
                raise ConnectionResetError("the daemon closed the connection")
            self._buf += data

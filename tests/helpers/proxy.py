"""A TCP proxy on loopback that can delay, hang, reset and refuse a link, and counts bytes.

Owns ``TcpProxy``: it listens on 127.0.0.1 (a free port) and forwards every connection to
one target, e.g. between the daemon and smbd. This kernel has no ``netem`` (FACTS.md), so
link faults in tests and benchmarks come from here:

- ``delay_s`` (or ``delay_to_server_s`` / ``delay_to_client_s``): every chunk is held for
  that long after it was read, per direction, in order. A stream is delayed, not throttled:
  chunks wait in a timestamped queue while later ones are already being read.
- ``hang()`` / ``unhang()``: stop forwarding in both directions without closing anything (a
  hung server); reading continues up to a bounded buffer, then TCP back-pressure applies.
- ``reset()``: close every live connection on both sides with RST (``SO_LINGER`` 0).
- ``refuse = True``: accept new connections and reset them at once;
  ``stop_listening()`` / ``resume_listening()``: close the listening socket so connects get
  ``ECONNREFUSED``, then listen again on the same port.
- ``bytes_to_server`` / ``bytes_to_client``: exact counts of bytes written to each side
  (what crossed the link), cleared by ``reset_counters()``.
- ``frames_to_server``: the client's NetBIOS session frames (the 4-byte length prefix of SMB2
  over TCP), counted as they are read, so one SMB request or one compound of them, signed or
  encrypted, is one frame; ``frame_times`` holds when each arrived (monotonic), for rates.
  Also cleared by ``reset_counters()``. Meaningless for anything but SMB.

Threading: one background thread runs a ``selectors`` loop over non-blocking sockets and
owns every socket and queue; it is not trio, so synchronous tests and benchmarks can use it
too. Control methods hand a function to that thread and wait until it has run, so when
``hang()`` or ``reset()`` returns the effect is in place. Counters sit behind a lock.
Bytes are counted when written, so bytes held by a delay or a hang are not yet counted.

Not supported: IPv6 listening, TLS, UDP, per-connection controls (every control applies to
all connections), bandwidth limits.
"""

from __future__ import annotations

import collections
import errno
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

__all__ = ["TcpProxy"]

T = TypeVar("T")

CHUNK_BYTES = 1 << 20
"""Largest single read from a socket."""
BUFFER_LIMIT_BYTES = 4 << 20
"""Bytes queued per direction before the proxy stops reading (back-pressure to the sender)."""
CONTROL_TIMEOUT_S = 10.0

_LINGER_RST = struct.pack("ii", 1, 0)
_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE


def _abort_socket(sock: socket.socket) -> None:
    """Close with RST instead of FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    except OSError:
        pass
    sock.close()


class _Pipe:
    """One direction of one connection: chunks read from ``src``, queued, written to ``dst``."""

    __slots__ = ("conn", "src", "dst", "to_server", "queue", "queued_bytes", "got_eof", "sent_eof",
                 "frame_left", "frame_head")

    def __init__(
        self, conn: _Conn, src: socket.socket, dst: socket.socket, to_server: bool
    ) -> None:
        self.conn = conn
        self.src = src
        self.dst = dst
        self.to_server = to_server
        # (monotonic time the chunk may be written, or 0.0 for "now"; bytes still to write)
        self.queue: collections.deque[tuple[float, memoryview]] = collections.deque()
        self.queued_bytes = 0
        self.got_eof = False
        self.sent_eof = False
        self.frame_left = 0  # bytes of the current frame's body not yet read
        self.frame_head = b""  # a length prefix split across reads


class _Conn:
    """A client connection and its connection to the target."""

    __slots__ = ("client", "server", "connected", "up", "down", "masks", "closed")

    def __init__(self, client: socket.socket, server: socket.socket, connected: bool) -> None:
        self.client = client
        self.server = server
        self.connected = connected
        self.up = _Pipe(self, client, server, to_server=True)
        self.down = _Pipe(self, server, client, to_server=False)
        self.masks: dict[socket.socket, int] = {client: 0, server: 0}
        self.closed = False


class TcpProxy:
    """Forward TCP connections from 127.0.0.1:``port`` to ``target``, with link faults.

    Starts listening and serving in the constructor; ``close()`` (or leaving the ``with``
    block) resets every live connection and stops the thread. ``host``/``port`` (and
    ``address``) are where clients connect. See the module docstring for the controls.
    An unexpected error inside the proxy thread makes the next control call and ``close()``
    raise ``RuntimeError``.
    """

    def __init__(
        self,
        target: tuple[str, int],
        *,
        delay_s: float = 0.0,
        listen_host: str = "127.0.0.1",
    ) -> None:
        infos = socket.getaddrinfo(target[0], target[1], type=socket.SOCK_STREAM)
        self._target_family, _, _, _, self._target_addr = infos[0]
        self.target = target
        self.delay_to_server_s = float(delay_s)
        self.delay_to_client_s = float(delay_s)
        self.refuse = False
        """When true, new connections are accepted and reset at once."""
        self.host = listen_host
        self._listener: socket.socket | None = self._listen(0)
        self.port: int = self._listener.getsockname()[1]
        self._hung = False
        self._conns: set[_Conn] = set()
        self._delayed: set[_Pipe] = set()
        self._counter_lock = threading.Lock()
        self._to_server = 0
        self._to_client = 0
        self._frame_times: list[float] = []
        self.accepted = 0
        """Connections accepted so far (including refused ones)."""
        self._commands: collections.deque[
            tuple[Callable[[], object], list[object], threading.Event]
        ] = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, _READ, "wake")
        self._sel.register(self._listener, _READ, "listen")
        self._closing = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"tcp-proxy:{self.port}", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------------ public API

    @property
    def address(self) -> tuple[str, int]:
        """Where clients connect: ``(host, port)``."""
        return (self.host, self.port)

    @property
    def delay_s(self) -> float:
        """The larger of the two per-direction delays; setting it sets both."""
        return max(self.delay_to_server_s, self.delay_to_client_s)

    @delay_s.setter
    def delay_s(self, value: float) -> None:
        self.delay_to_server_s = float(value)
        self.delay_to_client_s = float(value)

    @property
    def bytes_to_server(self) -> int:
        """Bytes written to the target since the start or the last ``reset_counters()``."""
        with self._counter_lock:
            return self._to_server

    @property
    def bytes_to_client(self) -> int:
        """Bytes written to clients since the start or the last ``reset_counters()``."""
        with self._counter_lock:
            return self._to_client

    @property
    def frames_to_server(self) -> int:
        """NetBIOS frames (SMB requests or compounds) the clients sent since the last reset."""
        with self._counter_lock:
            return len(self._frame_times)

    @property
    def frame_times(self) -> list[float]:
        """When each of those frames arrived (``time.monotonic()``), oldest first."""
        with self._counter_lock:
            return list(self._frame_times)

    def reset_counters(self) -> None:
        """Set the byte and frame counters to zero."""
        with self._counter_lock:
            self._to_server = 0
            self._to_client = 0
            self._frame_times = []

    @property
    def connections(self) -> int:
        """Live connections right now."""
        return self._call(lambda: len(self._conns))

    @property
    def is_hung(self) -> bool:
        return self._hung

    def hang(self) -> None:
        """Stop forwarding in both directions; connections stay open. Returns once in effect."""
        self._call(self._do_hang)

    def unhang(self) -> None:
        """Resume forwarding; data held meanwhile goes out in order (any delay still applies)."""
        self._call(self._do_unhang)

    def reset(self) -> int:
        """Close every live connection on both sides with RST; return how many there were."""
        return self._call(self._do_reset)

    def stop_listening(self) -> None:
        """Close the listening socket: new connects get ECONNREFUSED. Live connections stay."""
        self._call(self._do_stop_listening)

    def resume_listening(self) -> None:
        """Listen again on the same port after ``stop_listening()``."""
        self._call(self._do_resume_listening)

    def close(self) -> None:
        """Reset every connection, stop listening and join the thread. Idempotent."""
        if not self._closing:
            self._closing = True
            self._wake()
            self._thread.join(CONTROL_TIMEOUT_S)
            if self._thread.is_alive():
                raise RuntimeError(f"tcp proxy on port {self.port} did not stop")
            self._sel.close()
            self._wake_r.close()
            self._wake_w.close()
        if self._error is not None:
            raise RuntimeError(f"tcp proxy on port {self.port} failed") from self._error

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<TcpProxy {self.host}:{self.port} -> {self.target[0]}:{self.target[1]}"
            f" delay={self.delay_to_server_s:g}/{self.delay_to_client_s:g}s hung={self._hung}"
            f" refuse={self.refuse}>"
        )

    # ------------------------------------------------------------------ control plumbing

    def _listen(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, port))
        sock.listen(128)
        sock.setblocking(False)
        return sock

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # already a wake-up pending, or closing

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the proxy thread and return its result."""
        if self._error is not None:
            raise RuntimeError(f"tcp proxy on port {self.port} failed") from self._error
        if self._closing:
            raise RuntimeError(f"tcp proxy on port {self.port} is closed")
        if threading.current_thread() is self._thread:
            return fn()
        box: list[object] = []
        done = threading.Event()
        self._commands.append((fn, box, done))
        self._wake()
        if not done.wait(CONTROL_TIMEOUT_S):
            raise RuntimeError(f"tcp proxy on port {self.port} did not answer a control call")
        if self._error is not None:
            raise RuntimeError(f"tcp proxy on port {self.port} failed") from self._error
        return box[0]  # type: ignore[return-value]

    def _run_commands(self) -> None:
        while self._commands:
            fn, box, done = self._commands.popleft()
            try:
                box.append(fn())
            finally:
                done.set()

    # ------------------------------------------------------------------ the loop (proxy thread)

    def _run(self) -> None:
        try:
            while not self._closing:
                for key, mask in self._sel.select(self._next_timeout()):
                    data = key.data
                    if data == "wake":
                        try:
                            while self._wake_r.recv(4096):
                                pass
                        except BlockingIOError:
                            pass
                        self._run_commands()
                    elif data == "listen":
                        self._accept()
                    else:
                        self._service(data, key.fileobj, mask)  # type: ignore[arg-type]
                if self._delayed:
                    self._fire_due()
        except BaseException as exc:  # noqa: BLE001 - reported by the next control call
            self._error = exc
        finally:
            for conn in list(self._conns):
                self._abort(conn)
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            # Release anyone waiting on a control call.
            while self._commands:
                _, _, done = self._commands.popleft()
                done.set()

    def _next_timeout(self) -> float | None:
        if not self._delayed or self._hung:
            return None
        due = min(pipe.queue[0][0] for pipe in self._delayed)
        return max(0.0, due - time.monotonic())

    def _fire_due(self) -> None:
        now = time.monotonic()
        for pipe in list(self._delayed):
            if pipe.conn.closed or not pipe.queue or pipe.queue[0][0] <= now:
                self._delayed.discard(pipe)
                if not pipe.conn.closed and self._flush(pipe):
                    self._update(pipe.conn)

    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(64):
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. EMFILE or ECONNABORTED: the client will notice
            self.accepted += 1
            if self.refuse:
                _abort_socket(client)
                continue
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            server = socket.socket(self._target_family, socket.SOCK_STREAM)
            server.setblocking(False)
            server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = server.connect_ex(self._target_addr)
            if err not in (0, errno.EINPROGRESS):
                _abort_socket(server)
                _abort_socket(client)
                continue
            conn = _Conn(client, server, connected=(err == 0))
            self._conns.add(conn)
            self._update(conn)

    def _service(self, conn: _Conn, sock: socket.socket, mask: int) -> None:
        if conn.closed:
            return
        if mask & _WRITE:
            if sock is conn.server and not conn.connected:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    self._abort(conn)  # target refused: the client sees a reset
                    return
                conn.connected = True
            if not self._flush(conn.up if sock is conn.server else conn.down):
                return
        if mask & _READ and not conn.closed:
            if not self._read(conn.up if sock is conn.client else conn.down):
                return
        if not conn.closed:
            self._update(conn)

    def _read(self, pipe: _Pipe) -> bool:
        """Read one chunk into the pipe and try to forward it; False if the connection died."""
        try:
            data = pipe.src.recv(CHUNK_BYTES)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            self._abort(pipe.conn)
            return False
        if not data:
            pipe.got_eof = True
        else:
            if pipe.to_server:
                self._count_frames(pipe, data)
            delay_s = self.delay_to_server_s if pipe.to_server else self.delay_to_client_s
            due = time.monotonic() + delay_s if delay_s > 0 else 0.0
            pipe.queue.append((due, memoryview(data)))
            pipe.queued_bytes += len(data)
        return self._flush(pipe)

    def _count_frames(self, pipe: _Pipe, data: bytes) -> None:
        """Walk the NetBIOS length prefixes in ``data`` (type byte, 24-bit length)."""
        at, end, now = 0, len(data), time.monotonic()
        new = 0
        while at < end:
            if pipe.frame_left:
                step = min(pipe.frame_left, end - at)
                pipe.frame_left -= step
                at += step
                continue
            need = 4 - len(pipe.frame_head)
            pipe.frame_head += data[at:at + need]
            at += need
            if len(pipe.frame_head) == 4:
                pipe.frame_left = int.from_bytes(pipe.frame_head[1:], "big")
                pipe.frame_head = b""
                new += 1
        if new:
            with self._counter_lock:
                self._frame_times.extend([now] * new)

    def _flush(self, pipe: _Pipe) -> bool:
        """Write what is due; False if the connection died (it is then aborted)."""
        conn = pipe.conn
        if self._hung or (pipe.to_server and not conn.connected):
            return True
        now = 0.0
        sent = 0
        queue = pipe.queue
        try:
            while queue:
                due, view = queue[0]
                if due:
                    now = now or time.monotonic()
                    if due > now:
                        self._delayed.add(pipe)
                        break
                try:
                    n = pipe.dst.send(view)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    self._abort(conn)
                    return False
                sent += n
                if n < len(view):
                    queue[0] = (due, view[n:])
                    break
                queue.popleft()
        finally:
            if sent:
                pipe.queued_bytes -= sent
                with self._counter_lock:
                    if pipe.to_server:
                        self._to_server += sent
                    else:
                        self._to_client += sent
        if not queue and pipe.got_eof and not pipe.sent_eof:
            pipe.sent_eof = True
            try:
                pipe.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            if conn.up.sent_eof and conn.down.sent_eof:
                self._finish(conn)
                return False
        return True

    def _update(self, conn: _Conn) -> None:
        """Register exactly the events each socket of ``conn`` needs now."""
        if conn.closed:
            return
        if not conn.connected:
            self._set_mask(conn, conn.server, _WRITE)
            self._set_mask(conn, conn.client, self._read_mask(conn.up))
            return
        now = 0.0
        for sock, outgoing, incoming in (
            (conn.client, conn.up, conn.down),
            (conn.server, conn.down, conn.up),
        ):
            mask = self._read_mask(outgoing)
            if not self._hung and incoming.queue:
                due = incoming.queue[0][0]
                if due:
                    now = now or time.monotonic()
                if due <= now:
                    mask |= _WRITE
                else:
                    self._delayed.add(incoming)
            self._set_mask(conn, sock, mask)

    @staticmethod
    def _read_mask(pipe: _Pipe) -> int:
        return _READ if not pipe.got_eof and pipe.queued_bytes < BUFFER_LIMIT_BYTES else 0

    def _set_mask(self, conn: _Conn, sock: socket.socket, mask: int) -> None:
        old = conn.masks[sock]
        if mask == old:
            return
        if old == 0:
            self._sel.register(sock, mask, conn)
        elif mask == 0:
            self._sel.unregister(sock)
        else:
            self._sel.modify(sock, mask, conn)
        conn.masks[sock] = mask

    def _drop(self, conn: _Conn) -> None:
        conn.closed = True
        self._conns.discard(conn)
        self._delayed.discard(conn.up)
        self._delayed.discard(conn.down)
        for sock, mask in conn.masks.items():
            if mask:
                self._sel.unregister(sock)
        conn.masks = {conn.client: 0, conn.server: 0}

    def _finish(self, conn: _Conn) -> None:
        """Both directions ended cleanly: close normally."""
        self._drop(conn)
        conn.client.close()
        conn.server.close()

    def _abort(self, conn: _Conn) -> None:
        """Close both sides with RST."""
        if conn.closed:
            return
        self._drop(conn)
        _abort_socket(conn.client)
        _abort_socket(conn.server)

    # ------------------------------------------------------------------ control (proxy thread)

    def _do_hang(self) -> None:
        self._hung = True
        for conn in list(self._conns):
            self._update(conn)

    def _do_unhang(self) -> None:
        self._hung = False
        for conn in list(self._conns):
            if self._flush(conn.up) and self._flush(conn.down):
                self._update(conn)

    def _do_reset(self) -> int:
        conns = list(self._conns)
        for conn in conns:
            self._abort(conn)
        return len(conns)

    def _do_stop_listening(self) -> None:
        if self._listener is not None:
            self._sel.unregister(self._listener)
            self._listener.close()
            self._listener = None

    def _do_resume_listening(self) -> None:
        if self._listener is None:
            self._listener = self._listen(self.port)
            self._sel.register(self._listener, _READ, "listen")

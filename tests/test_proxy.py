"""The TCP proxy the fault tests and benchmarks rely on: exact counting, delay, hang, reset.

Checked against a tiny threaded echo server on loopback, with plain blocking sockets.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import xxhash

from tests.helpers.proxy import TcpProxy
from tests.helpers.wait import wait_for

MiB = 1 << 20


class EchoServer:
    """Echoes every byte back on each connection; half-closes after the client's EOF."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="echo-accept", daemon=True
        )
        self._accept_thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            t = threading.Thread(target=self._echo, args=(conn,), name="echo-conn", daemon=True)
            t.start()
            self._threads.append(t)

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(MiB):
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # reset by the proxy: that is what some tests do

    def close(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._accept_thread.join(5)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[TcpProxy]:
    with TcpProxy(echo.address) as p:
        yield p


def connect(proxy: TcpProxy, timeout_s: float = 10.0) -> socket.socket:
    sock = socket.create_connection(proxy.address, timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    parts: list[bytes] = []
    left = size
    while left:
        data = sock.recv(min(left, MiB))
        if not data:
            raise AssertionError(f"EOF with {left} of {size} bytes still to come")
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


def recv_until_eof(sock: socket.socket) -> bytes:
    parts: list[bytes] = []
    while data := sock.recv(MiB):
        parts.append(data)
    return b"".join(parts)


def connection_is_turned_away(proxy: TcpProxy) -> bool:
    """Connect and read: True if the connect or the first read fails with RST or EOF.

    An accepted-then-reset connection can fail in ``connect`` already (the RST may beat the
    client's check of the handshake) or at the first ``recv``.
    """
    try:
        with connect(proxy, timeout_s=5) as sock:
            return sock.recv(10) == b""
    except ConnectionResetError:
        return True


def round_trip(sock: socket.socket, message: bytes) -> bytes:
    sock.sendall(message)
    return recv_exactly(sock, len(message))


# ------------------------------------------------------------------ forwarding and counting


def test_bytes_are_forwarded_and_counted_exactly(proxy: TcpProxy) -> None:
    payload = os.urandom(3 * MiB + 7)
    with connect(proxy) as sock:
        sender = threading.Thread(
            target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR))
        )
        sender.start()
        echoed = recv_until_eof(sock)
        sender.join()
    assert echoed == payload
    wait_for(
        lambda: (proxy.bytes_to_server, proxy.bytes_to_client) == (len(payload), len(payload)),
        5,
        "counters match the bytes sent each way",
    )
    wait_for(lambda: proxy.connections == 0, 5, "the proxy closes a connection both sides ended")


def test_reset_counters_starts_from_zero(proxy: TcpProxy) -> None:
    with connect(proxy) as sock:
        assert round_trip(sock, b"a" * 100) == b"a" * 100
        wait_for(lambda: proxy.bytes_to_client == 100, 5, "first exchange counted")
        proxy.reset_counters()
        assert (proxy.bytes_to_server, proxy.bytes_to_client) == (0, 0)
        assert round_trip(sock, b"b" * 10) == b"b" * 10
        wait_for(
            lambda: (proxy.bytes_to_server, proxy.bytes_to_client) == (10, 10),
            5,
            "only the second exchange counted",
        )


def test_netbios_frames_are_counted_however_the_stream_is_cut(proxy: TcpProxy) -> None:
    """Three frames (one empty, one of 70,000 bytes) sent one byte at a time, then whole."""
    frames = [b"\x00" + len(body).to_bytes(3, "big") + body
              for body in (b"", os.urandom(70_000), b"smb")]
    stream = b"".join(frames)
    with connect(proxy) as sock:
        for i in range(0, 64):
            sock.sendall(stream[i:i + 1])  # the first prefixes split byte by byte
        sock.sendall(stream[64:])
        assert recv_exactly(sock, len(stream)) == stream
        wait_for(lambda: proxy.frames_to_server == 3, 5, "three frames counted")
        sock.sendall(stream)
        assert recv_exactly(sock, len(stream)) == stream
        wait_for(lambda: proxy.frames_to_server == 6, 5, "three more")
    times = proxy.frame_times
    assert len(times) == 6 and times == sorted(times)
    proxy.reset_counters()
    assert proxy.frames_to_server == 0


def test_many_connections_at_once(proxy: TcpProxy) -> None:
    count = 60
    results: dict[int, bool] = {}

    def client(i: int) -> None:
        payload = os.urandom(64 * 1024 + i)
        with connect(proxy) as sock:
            results[i] = round_trip(sock, payload) == payload

    threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {i: True for i in range(count)}
    expected = sum(64 * 1024 + i for i in range(count))
    wait_for(lambda: proxy.bytes_to_client == expected, 5, "every connection's bytes counted")


def test_unreachable_target_resets_the_client() -> None:
    spare = socket.create_server(("127.0.0.1", 0))
    closed_port = spare.getsockname()[1]
    spare.close()  # nothing listens there now
    with TcpProxy(("127.0.0.1", closed_port)) as proxy:
        assert connection_is_turned_away(proxy)


# ------------------------------------------------------------------ delay


def test_delay_applies_in_each_direction(proxy: TcpProxy) -> None:
    proxy.delay_s = 0.08
    with connect(proxy) as sock:
        start = time.monotonic()
        assert round_trip(sock, b"ping") == b"ping"
        elapsed = time.monotonic() - start
    assert elapsed >= 0.16
    assert elapsed < 2.0, "delay should not pile up"


def test_delay_is_latency_not_a_throttle(proxy: TcpProxy) -> None:
    """Ten messages 20 ms apart come back ~160 ms after each was sent, not one after another."""
    proxy.delay_s = 0.08
    with connect(proxy) as sock:
        start = time.monotonic()
        for i in range(10):
            sock.sendall(b"%02d" % i)
            time.sleep(0.02)  # pacing the sender, not waiting for a result
        echoed = recv_exactly(sock, 20)
        elapsed = time.monotonic() - start
    assert echoed == b"".join(b"%02d" % i for i in range(10)), "order kept"
    # Held one after another, the last message would arrive after 10 x 80 ms = 0.8 s.
    assert 0.16 + 9 * 0.02 <= elapsed < 0.7


def test_delay_can_be_set_per_direction(proxy: TcpProxy) -> None:
    proxy.delay_to_server_s = 0.15
    proxy.delay_to_client_s = 0.0
    with connect(proxy) as sock:
        start = time.monotonic()
        assert round_trip(sock, b"x") == b"x"
        elapsed = time.monotonic() - start
    assert 0.15 <= elapsed < 1.0


# ------------------------------------------------------------------ hang, reset, refuse


def test_hang_stops_traffic_without_closing(proxy: TcpProxy) -> None:
    with connect(proxy) as sock:
        assert round_trip(sock, b"before") == b"before"
        wait_for(lambda: proxy.bytes_to_client == 6, 5, "first exchange counted")
        proxy.hang()
        sock.sendall(b"during")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(100)  # neither data nor EOF: the link is hung, not closed
        assert proxy.connections == 1
        assert (proxy.bytes_to_server, proxy.bytes_to_client) == (6, 6)


def test_unhang_resumes_held_traffic(proxy: TcpProxy) -> None:
    with connect(proxy) as sock:
        proxy.hang()
        sock.sendall(b"held")
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recv(100)  # the proxy has read it by now, and holds it
        proxy.unhang()
        sock.settimeout(5)
        assert recv_exactly(sock, 4) == b"held"
        assert round_trip(sock, b"after") == b"after"


def test_reset_gives_the_client_econnreset(proxy: TcpProxy) -> None:
    with connect(proxy) as sock:
        assert round_trip(sock, b"hello") == b"hello"
        assert proxy.reset() == 1
        with pytest.raises(ConnectionResetError):
            sock.recv(100)
    assert proxy.connections == 0


def test_new_connections_work_after_reset(proxy: TcpProxy) -> None:
    with connect(proxy) as first:
        round_trip(first, b"1")
        proxy.reset()
    with connect(proxy) as second:
        assert round_trip(second, b"2") == b"2"


def test_refuse_resets_new_connections_but_keeps_live_ones(proxy: TcpProxy) -> None:
    with connect(proxy) as live:
        assert round_trip(live, b"live") == b"live"
        proxy.refuse = True
        assert connection_is_turned_away(proxy)
        assert round_trip(live, b"still") == b"still"
        proxy.refuse = False
        with connect(proxy) as again:
            assert round_trip(again, b"ok") == b"ok"


def test_stop_listening_makes_connects_fail_until_resumed(proxy: TcpProxy) -> None:
    proxy.stop_listening()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=5)
    proxy.resume_listening()
    with connect(proxy) as sock:
        assert round_trip(sock, b"back") == b"back"


# ------------------------------------------------------------------ throughput


def test_throughput_of_200_mib(proxy: TcpProxy) -> None:
    """Correctness of a large transfer both ways; the speed is printed, not asserted."""
    total = 200 * MiB
    block = os.urandom(4 * MiB)
    expected = xxhash.xxh3_128()
    for _ in range(total // len(block)):
        expected.update(block)
    received = xxhash.xxh3_128()
    got = 0

    with connect(proxy, timeout_s=60) as sock:

        def send_all() -> None:
            for _ in range(total // len(block)):
                sock.sendall(block)
            sock.shutdown(socket.SHUT_WR)

        start = time.monotonic()
        sender = threading.Thread(target=send_all, name="throughput-send")
        sender.start()
        while data := sock.recv(4 * MiB):
            received.update(data)
            got += len(data)
        elapsed = time.monotonic() - start
        sender.join()

    assert got == total
    assert received.digest() == expected.digest()
    wait_for(
        lambda: proxy.bytes_to_server == proxy.bytes_to_client == total, 5, "counted both ways"
    )
    print(
        f"\ntcp proxy: {total // MiB} MiB each way through an echo server in {elapsed:.2f} s, "
        f"{total / MiB / elapsed:.0f} MiB/s per direction"
    )

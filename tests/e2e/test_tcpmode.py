"""--mode tcp end to end: a real twistd relaying TLS clients to real plain TCP servers."""

from __future__ import annotations

import contextlib
import hashlib
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tlsproxy import proxyproto

from .proxyprocess import ProxyFactory, ProxyProcess, free_port

pytestmark = pytest.mark.e2e

Handler = Callable[[socket.socket], None]
TIMEOUT = 20.0


class TcpServer:
    """A loopback TCP server running ``handler`` on each connection, one thread each."""

    def __init__(self, handler: Handler) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.handler = handler
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        connection.settimeout(TIMEOUT)
        with connection:
            try:
                self.handler(connection)
            except BaseException as e:  # reported by the test, not lost in a thread
                self.errors.append(e)

    def close(self) -> None:
        self._stop.set()
        self._accepter.join(5)
        self.listener.close()
        for thread in self._threads:
            thread.join(5)


@contextlib.contextmanager
def tcp_server(handler: Handler) -> Iterator[TcpServer]:
    server = TcpServer(handler)
    try:
        yield server
    finally:
        server.close()
    assert not server.errors, server.errors


def echo(connection: socket.socket) -> None:
    while data := connection.recv(65536):
        connection.sendall(data)


def ping_pong(connection: socket.socket) -> None:
    """A Redis-like line protocol: PING → +PONG, QUIT → +OK and close."""
    lines = connection.makefile("rb")
    for line in lines:
        if line == b"PING\r\n":
            connection.sendall(b"+PONG\r\n")
        elif line == b"QUIT\r\n":
            connection.sendall(b"+OK\r\n")
            return
        else:
            connection.sendall(b"-ERR unknown command\r\n")


def recv_exactly(sock: ssl.SSLSocket | socket.socket, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = sock.recv(min(size, 65536))
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def start(proxy_factory: ProxyFactory, backend_url: str, *args: str) -> ProxyProcess:
    return proxy_factory("--mode", "tcp", "--backend", backend_url, *args, with_backend=False)


def test_echo_16_mib_both_ways(proxy_factory: ProxyFactory) -> None:
    """16 MiB through TLS to an echo server come back identical (checked by SHA-256)."""
    payload = hashlib.sha256(b"seed").digest() * (16 * 1024 * 1024 // 32)
    with tcp_server(echo) as server:
        proxy = start(proxy_factory, server.url)
        with proxy.connect(timeout=TIMEOUT) as tls:
            received = echo_through(tls, payload)
        assert len(received) == len(payload), proxy.output()
        assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


def echo_through(tls: ssl.SSLSocket, payload: bytes) -> bytes:
    """Send ``payload`` while reading the echo, in one thread (an SSL object is not thread-safe)."""
    tls.setblocking(False)
    view, sent, received = memoryview(payload), 0, bytearray()
    deadline = time.monotonic() + TIMEOUT * 3
    with selectors.DefaultSelector() as selector:
        selector.register(tls, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while len(received) < len(payload) and time.monotonic() < deadline:
            events = selector.select(timeout=1.0)
            if not events:
                continue
            with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLWantWriteError):
                while chunk := tls.recv(65536):
                    received += chunk
            if sent < len(payload):
                with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    sent += tls.send(view[sent : sent + 65536])
            else:
                selector.modify(tls, selectors.EVENT_READ)
    return bytes(received)


def test_line_protocol_round_trips(proxy_factory: ProxyFactory) -> None:
    """A Redis-like PING/+PONG exchange works, and the backend's close reaches the client."""
    with tcp_server(ping_pong) as server:
        proxy = start(proxy_factory, server.url)
        with proxy.connect(timeout=TIMEOUT) as tls:
            tls.sendall(b"PING\r\nPING\r\n")
            assert recv_exactly(tls, 14) == b"+PONG\r\n+PONG\r\n"
            tls.sendall(b"QUIT\r\n")
            assert recv_exactly(tls, 5) == b"+OK\r\n"
            assert tls.recv(100) == b""  # close_notify: a clean end, not a reset


def test_send_proxy_protocol_v2_names_the_client(proxy_factory: ProxyFactory) -> None:
    """The backend first receives a valid PROXY v2 header naming the client, then the bytes."""
    received: list[bytes] = []

    def record(connection: socket.socket) -> None:
        data = b""
        while not data.endswith(b"hello\n"):
            chunk = connection.recv(4096)
            if not chunk:
                break
            data += chunk
        received.append(data)
        connection.sendall(b"ok\n")

    with tcp_server(record) as server:
        proxy = start(proxy_factory, server.url, "--send-proxy-protocol", "v2")
        with proxy.connect(timeout=TIMEOUT) as tls:
            tls.sendall(b"hello\n")
            assert recv_exactly(tls, 3) == b"ok\n"
            client_port = tls.getsockname()[1]
    [data] = received
    parsed = proxyproto.parse(data)
    assert isinstance(parsed, proxyproto.Parsed), parsed
    assert parsed.source is not None
    assert parsed.destination is not None
    assert (str(parsed.source.ip), parsed.source.port) == ("127.0.0.1", client_port)
    assert (str(parsed.destination.ip), parsed.destination.port) == ("127.0.0.1", proxy.port)
    assert data[parsed.length :] == b"hello\n"


def test_refused_backend_closes_the_client_promptly(proxy_factory: ProxyFactory) -> None:
    """Nothing listens on the backend port: the client is closed at once, one log line."""
    proxy = start(proxy_factory, f"tcp://127.0.0.1:{free_port()}")
    began = time.monotonic()
    with proxy.connect(timeout=TIMEOUT) as tls:
        assert tls.recv(100) == b""
    assert time.monotonic() - began < 3
    assert proxy.wait_for_output(r"could not be reached \(connection refused\)")
    assert "Traceback" not in proxy.output()


def test_backend_half_close_lets_the_client_finish(proxy_factory: ProxyFactory) -> None:
    """The backend ends its sending side: the client sees close_notify and can still send."""
    got: list[bytes] = []

    def greet_then_listen(connection: socket.socket) -> None:
        connection.sendall(b"220 hello\r\n")
        connection.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := connection.recv(4096):
            data += chunk
        got.append(data)

    with tcp_server(greet_then_listen) as server:
        proxy = start(proxy_factory, server.url)
        with proxy.connect(timeout=TIMEOUT) as tls:
            assert recv_exactly(tls, 11) == b"220 hello\r\n"
            assert tls.recv(100) == b""  # close_notify from the proxy
            tls.sendall(b"late words\r\n")
            tls.unwrap().close()  # our close_notify: the backend sees its EOF
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
    assert got == [b"late words\r\n"]


def test_client_half_close_still_receives_the_answer(proxy_factory: ProxyFactory) -> None:
    """The client sends close_notify; the backend sees EOF, and its answer reaches the client."""

    def answer_at_eof(connection: socket.socket) -> None:
        data = b""
        while chunk := connection.recv(4096):
            data += chunk
        connection.sendall(b"got %d bytes\r\n" % len(data))

    with tcp_server(answer_at_eof) as server:
        proxy = start(proxy_factory, server.url)
        sock = proxy.connect_tcp(timeout=TIMEOUT)
        with sock:
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = proxy.ssl_context().wrap_bio(incoming, outgoing, server_hostname="localhost")

            def pump() -> bool:
                if outgoing.pending:
                    sock.sendall(outgoing.read())
                data = sock.recv(65536)
                if data:
                    incoming.write(data)
                else:
                    incoming.write_eof()
                return bool(data)

            for _ in range(100):  # bounded: a handshake is a few round trips
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    pump()
            tls.write(b"12345")
            with contextlib.suppress(ssl.SSLWantReadError):
                tls.unwrap()  # our close_notify; OpenSSL may still read after sending it
            sock.sendall(outgoing.read())
            answer = b""
            for _ in range(100):
                try:
                    answer += tls.read(4096)
                except ssl.SSLWantReadError:
                    if not pump():
                        break
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    break
            assert answer == b"got 5 bytes\r\n"

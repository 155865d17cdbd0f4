"""Failures are statuses or visible truncation, never tracebacks; bad clients harm no one else."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from .backend import (
    Backend,
    BackendConnection,
    ReceivedRequest,
    chunk,
    echo_responder,
    response,
)
from .proxyprocess import ProxyFactory, ProxyProcess, free_port
from .rawclient import ABORTED, STILL_OPEN, RawClient, request_bytes

pytestmark = pytest.mark.e2e


def assert_serves(proxy: ProxyProcess, path: str = "/healthy") -> None:
    """A normal client still gets a normal answer."""
    with proxy.client() as client:
        result = client.get(path)
    assert result.status_code == 200
    assert result.content == f"GET {path}\n".encode()


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_refused_backend_gives_502_naming_it(proxy_factory: ProxyFactory) -> None:
    """When nothing listens at the backend, clients get 502 with a page naming the backend URL."""
    port = free_port()
    backend_url = f"http://127.0.0.1:{port}"
    proxy = proxy_factory("--backend", backend_url)
    with proxy.client() as client:
        result = client.get("/down")
    assert result.status_code == 502
    assert backend_url in result.text


def test_backend_closing_without_answer_gives_502(proxy: ProxyProcess, backend: Backend) -> None:
    """A backend that accepts and hangs up before any response head yields 502."""

    def hang_up(conn: BackendConnection) -> None:
        conn.read_request()
        conn.close()

    backend.handle_connections(hang_up)
    with proxy.client() as client:
        result = client.get("/hangup")
    assert result.status_code == 502


def test_no_response_head_within_backend_timeout_gives_504(
    proxy_factory: ProxyFactory, backend: Backend
) -> None:
    """A backend that never answers gets the client a 504 after --backend-timeout."""

    def never_answer(conn: BackendConnection, request: ReceivedRequest) -> None:
        conn.backend.release.wait(30)

    backend.respond_with(never_answer)
    proxy = proxy_factory("--backend-timeout", "1")
    started = time.monotonic()
    with proxy.client() as client:
        result = client.get("/slow")
    elapsed = time.monotonic() - started
    assert result.status_code == 504
    assert 0.8 <= elapsed < 5, f"504 after {elapsed:.1f}s with --backend-timeout 1"


def test_slow_body_after_prompt_head_is_not_a_timeout(
    proxy_factory: ProxyFactory, backend: Backend
) -> None:
    """--backend-timeout bounds the wait for the head: a body that keeps coming is relayed whole."""

    def slow_body(conn: BackendConnection, request: ReceivedRequest) -> None:
        conn.send(response(b"200 OK", [(b"Transfer-Encoding", b"chunked")], content_length=False))
        for number in range(4):
            time.sleep(0.5)
            conn.send(chunk(b"part %d;" % number))
        conn.send(chunk(b""))

    backend.respond_with(slow_body)
    proxy = proxy_factory("--backend-timeout", "1")
    with proxy.client() as client:
        result = client.get("/trickle")
    assert result.status_code == 200
    assert result.content == b"part 0;part 1;part 2;part 3;"


def test_connect_timeout_gives_gateway_error(proxy_factory: ProxyFactory) -> None:
    """A backend whose accept queue is full (SYNs dropped) fails within --connect-timeout."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):  # fill the accept queue so further SYNs go unanswered
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.2)
        proxy = proxy_factory(
            "--backend",
            f"http://127.0.0.1:{port}",
            "--connect-timeout",
            "1",
            "--backend-timeout",
            "30",
        )
        started = time.monotonic()
        with proxy.client() as client:
            result = client.get("/blackhole")
        elapsed = time.monotonic() - started
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
    assert result.status_code in (502, 504)
    assert elapsed < 5, f"gave up only after {elapsed:.1f}s with --connect-timeout 1"


def die_after(framing: str) -> tuple[bytes, bytes]:
    """A response head announcing 10,000 bytes and the first part of its body."""
    if framing == "content-length":
        head = response(b"200 OK", [(b"Content-Length", b"10000")], content_length=False)
        return head, b"x" * 100
    head = response(b"200 OK", [(b"Transfer-Encoding", b"chunked")], content_length=False)
    return head, chunk(b"x" * 100)


def dying_responder(framing: str, how: str) -> Callable[[BackendConnection, ReceivedRequest], None]:
    """A backend that announces 10,000 body bytes, sends 100, then closes or resets."""
    head, part = die_after(framing)

    def die(conn: BackendConnection, request: ReceivedRequest) -> None:
        conn.send(head + part)
        time.sleep(0.2)
        if how == "close":
            conn.close()
        else:
            conn.abort()

    return die


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("how", ["close", "reset"])
def test_backend_death_mid_response_shows_truncation(
    proxy: ProxyProcess, backend: Backend, framing: str, how: str
) -> None:
    """When the backend dies mid-body, the client never gets a complete-looking response."""
    backend.respond_with(dying_responder(framing, how))
    with RawClient(proxy.connect()) as client:
        client.send(request_bytes("GET", "/dies"))
        result = client.read_response()
        assert result.status == 200
        assert not result.complete, "a truncated body was presented as complete"
        assert len(result.body) < 10000
        assert client.wait_closed(3) != STILL_OPEN
    with proxy.client() as client, pytest.raises(httpx.HTTPError):
        client.get("/dies")
    backend.respond_with(echo_responder)
    assert_serves(proxy)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_backend_death_mid_response_aborts_client_connection(
    proxy: ProxyProcess, backend: Backend, framing: str
) -> None:
    """The client connection is aborted (no TLS close_notify), as a dead backend would be seen."""
    backend.respond_with(dying_responder(framing, "close"))
    with RawClient(proxy.connect()) as client:
        client.send(request_bytes("GET", "/dies"))
        client.read_response()
        assert client.how_closed == ABORTED or client.wait_closed(3) == ABORTED, (
            f"connection ended with {client.how_closed or 'no close'}, not an abort"
        )


def test_garbage_tls_handshake_harms_no_one(proxy: ProxyProcess) -> None:
    """Random bytes instead of a ClientHello get the connection dropped; others are served."""
    with proxy.connect_tcp() as bad:
        bad.sendall(os.urandom(2048))
        bad.settimeout(5)
        with contextlib.suppress(OSError):
            while bad.recv(4096):
                pass
    assert_serves(proxy)
    assert "Traceback" not in proxy.output()


def test_plain_http_on_tls_port_harms_no_one(proxy: ProxyProcess, backend: Backend) -> None:
    """Plain HTTP sent to the TLS port is not forwarded, and other clients are served."""
    with proxy.connect_tcp() as plain:
        plain.sendall(b"GET /plain HTTP/1.1\r\nHost: localhost\r\n\r\n")
        plain.settimeout(5)
        with contextlib.suppress(OSError):
            while plain.recv(4096):
                pass
    assert_serves(proxy)
    assert [request.target for request in backend.requests] == [b"/healthy"]
    assert "Traceback" not in proxy.output()


def test_half_handshake_and_resets_harm_no_one(proxy: ProxyProcess) -> None:
    """Clients that reset mid-handshake, mid-head or mid-body leave the proxy serving others."""
    # A ClientHello, then a reset before the handshake completes.
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = proxy.ssl_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    sock = proxy.connect_tcp()
    sock.sendall(outgoing.read())
    reset(sock)
    # Half a head, then a reset.
    client = proxy.connect()
    client.sendall(b"GET /half HTTP/1.1\r\nHost: local")
    time.sleep(0.1)
    reset(client)
    # A head promising a body, part of the body, then a reset.
    client = proxy.connect()
    client.sendall(request_bytes("POST", "/partial", [("Content-Length", "100000")], b"x" * 500))
    time.sleep(0.2)
    reset(client)
    assert_serves(proxy)


def test_client_gone_mid_upload_closes_backend_connection(
    proxy: ProxyProcess, backend: Backend
) -> None:
    """When the client vanishes during its upload, the proxy lets go of the backend connection."""

    def read_forever(conn: BackendConnection, request: ReceivedRequest) -> None:
        conn.read_body(request)

    backend.respond_with(read_forever, read_bodies=False)
    client = proxy.connect()
    client.sendall(request_bytes("POST", "/up", [("Content-Length", "1000000")], b"x" * 1000))
    backend.wait_for_requests(1)
    reset(client)
    assert backend.wait_for_idle(5), "backend connection left open after the client vanished"


def test_client_gone_mid_download_stops_backend(proxy: ProxyProcess, backend: Backend) -> None:
    """When the client vanishes during a large download, the backend's connection is closed."""
    backend_stopped = threading.Event()

    def endless(conn: BackendConnection, request: ReceivedRequest) -> None:
        total = 1024 * 1024 * 1024
        conn.send(response(b"200 OK", [(b"Content-Length", b"%d" % total)], content_length=False))
        blob = b"y" * 65536
        try:
            for _ in range(total // len(blob)):
                conn.send(blob)
        except OSError:
            backend_stopped.set()

    backend.respond_with(endless)
    with RawClient(proxy.connect()) as client:
        client.send(request_bytes("GET", "/endless"))
        client.read_head()
        client.recv_some()
        reset(client.sock)
    assert backend_stopped.wait(5), "backend kept sending after the client was gone"


@pytest.fixture
def dribblers(proxy_factory: ProxyFactory) -> Iterator[list[ssl.SSLSocket]]:
    """Room for slowloris connections, closed at the end."""
    opened: list[ssl.SSLSocket] = []
    yield opened
    for sock in opened:
        sock.close()


def dribble(sockets: list[ssl.SSLSocket], stop: threading.Event, seconds: float) -> None:
    """Send a request head one byte per socket every 0.2 s, never finishing it."""
    data = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"s" * 1000
    deadline = time.monotonic() + seconds
    position = 0
    while not stop.is_set() and time.monotonic() < deadline and position < len(data):
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.send(data[position : position + 1])
        position += 1
        stop.wait(0.2)


def test_slowloris_does_not_delay_normal_clients(
    proxy: ProxyProcess, backend: Backend, dribblers: list[ssl.SSLSocket]
) -> None:
    """Twenty connections dribbling a head byte by byte do not slow a normal client."""
    dribblers.extend(proxy.connect() for _ in range(20))
    stop = threading.Event()
    thread = threading.Thread(target=dribble, args=(dribblers, stop, 10.0), daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        with proxy.client() as client:
            for number in range(10):
                started = time.monotonic()
                result = client.get(f"/normal/{number}")
                elapsed = time.monotonic() - started
                assert result.status_code == 200
                assert elapsed < 1.0, f"a normal request took {elapsed:.2f}s under slowloris"
    finally:
        stop.set()
        thread.join(5)
    assert all(request.target.startswith(b"/normal/") for request in backend.requests)


def test_header_timeout_closes_dribbling_connections(
    proxy_factory: ProxyFactory, backend: Backend, dribblers: list[ssl.SSLSocket]
) -> None:
    """With --header-timeout 1, a head still incomplete after a second is cut off, not forwarded."""
    proxy = proxy_factory("--header-timeout", "1")
    dribblers.extend(proxy.connect() for _ in range(3))
    stop = threading.Event()
    thread = threading.Thread(target=dribble, args=(dribblers, stop, 6.0), daemon=True)
    thread.start()
    try:
        client = RawClient(dribblers[0])
        outcome = client.wait_closed(4)
    finally:
        stop.set()
        thread.join(5)
    assert outcome != STILL_OPEN, "a dribbling connection outlived --header-timeout"
    assert backend.raw() == b""


def test_idle_timeout_closes_keep_alive_connection(
    proxy_factory: ProxyFactory, backend: Backend
) -> None:
    """With --idle-timeout 1, a kept-alive connection with no new request is closed."""
    proxy = proxy_factory("--idle-timeout", "1")
    with RawClient(proxy.connect()) as client:
        client.send(request_bytes("GET", "/once"))
        assert client.read_response().status == 200
        started = time.monotonic()
        outcome = client.wait_closed(4)
    assert outcome != STILL_OPEN, "idle connection outlived --idle-timeout"
    assert time.monotonic() - started >= 0.5


def test_max_connections_bounds_concurrent_clients(
    proxy_factory: ProxyFactory, backend: Backend
) -> None:
    """With --max-connections 3, a fourth client waits until one of the three leaves."""
    release = threading.Event()

    def held(conn: BackendConnection, request: ReceivedRequest) -> None:
        if request.target == b"/held":
            release.wait(10)
        conn.send(response(b"200 OK", body=request.target))

    backend.respond_with(held)
    proxy = proxy_factory("--max-connections", "3")
    holders = [RawClient(proxy.connect()) for _ in range(3)]
    try:
        for holder in holders:
            holder.send(request_bytes("GET", "/held"))
        backend.wait_for_requests(3)
        fourth = RawClient(proxy.connect_tcp(timeout=10))
        holders.append(fourth)
        fourth_result: list[bytes] = []

        def use_fourth() -> None:
            with contextlib.suppress(OSError, ConnectionError):
                fourth.sock = proxy.ssl_context().wrap_socket(
                    fourth.sock, server_hostname="localhost"
                )
                fourth.send(request_bytes("GET", "/fourth"))
                fourth_result.append(fourth.read_response().body)

        thread = threading.Thread(target=use_fourth, daemon=True)
        thread.start()
        time.sleep(1.0)
        assert len(backend.requests) == 3, "a fourth connection was served beyond the limit"
        release.set()
        for holder in holders[:3]:
            assert holder.read_response().body == b"/held"
            holder.close()
        thread.join(10)
        assert fourth_result == [b"/fourth"], "the waiting client was not served after a slot freed"
    finally:
        release.set()
        for holder in holders:
            holder.close()

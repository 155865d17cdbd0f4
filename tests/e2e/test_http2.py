"""HTTP/2 end to end: real twistd, real h2 clients (httpx, curl, h2load, a raw h2 socket)."""

from __future__ import annotations

import contextlib
import hashlib
import random
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.exceptions import ProtocolError

from .backend import Backend, BackendConnection, ReceivedRequest, chunk, response, wait_until
from .proxyprocess import ProxyFactory, ProxyProcess, free_port

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
BIG = 20 * MiB


@pytest.fixture(scope="module")
def big_body() -> bytes:
    """20 MiB of incompressible, reproducible bytes."""
    return random.Random(2020).randbytes(BIG)


def pieces(data: bytes, size: int = 256 * 1024) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield bytes(view[start : start + size])


def h2_client(proxy: ProxyProcess, *, timeout: float = 30.0) -> httpx.Client:
    """An httpx client that speaks HTTP/2 only (httpx sets ALPN itself)."""
    return httpx.Client(
        base_url=proxy.url,
        verify=proxy.ssl_context(alpn=False),
        http1=False,
        http2=True,
        timeout=timeout,
    )


def alpn_choice(proxy: ProxyProcess) -> str | None:
    context = proxy.ssl_context(alpn=False)
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        proxy.connect_tcp() as sock,
        context.wrap_socket(sock, server_hostname="localhost") as tls,
    ):
        return tls.selected_alpn_protocol()


@dataclass
class Stream:
    """What a raw h2 client saw on one stream."""

    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    ended: bool = False
    reset: int | None = None

    @property
    def status(self) -> bytes:
        return dict(self.headers).get(b":status", b"")


class RawH2:
    """An h2 connection object over one TLS socket, driven step by step by the test."""

    def __init__(self, proxy: ProxyProcess, *, timeout: float = 10.0) -> None:
        context = proxy.ssl_context(alpn=False)
        context.set_alpn_protocols(["h2"])
        raw = proxy.connect_tcp(timeout)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        self.streams: dict[int, Stream] = {}
        self.terminated: ConnectionTerminated | None = None
        self.closed = False
        self.auto_ack = True
        self.flush()

    def __enter__(self) -> RawH2:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(
        self, path: str, *, method: bytes = b"GET", headers: list[tuple[bytes, bytes]] | None = None
    ) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        fields = [
            (b":method", method),
            (b":scheme", b"https"),
            (b":authority", b"localhost"),
            (b":path", path.encode()),
            *(headers or []),
        ]
        self.h2.send_headers(stream_id, fields, end_stream=True)
        self.streams[stream_id] = Stream()
        self.flush()
        return stream_id

    def read_until(self, done: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Read and handle frames until ``done()`` or the connection ends; whether done."""
        deadline = time.monotonic() + timeout
        while not done():
            if self.closed or time.monotonic() > deadline:
                return done()
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, ssl.SSLError, OSError):
                continue
            if not data:
                self.closed = True
                continue
            try:
                events = self.h2.receive_data(data)
            except ProtocolError:  # h2 reads nothing after a GOAWAY
                self.closed = True
                continue
            for event in events:
                self._handle(event)
            self.flush()
        return True

    def _handle(self, event: object) -> None:
        if isinstance(event, ConnectionTerminated):
            self.terminated = event
            return
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if stream is None:
            return
        if isinstance(event, ResponseReceived):
            stream.headers = list(event.headers or [])
        elif isinstance(event, DataReceived):
            stream.body += event.data or b""
            if self.auto_ack and event.stream_id:
                self.h2.acknowledge_received_data(
                    event.flow_controlled_length or 0, event.stream_id
                )
        elif isinstance(event, TrailersReceived):
            stream.trailers = list(event.headers or [])
        elif isinstance(event, StreamEnded):
            stream.ended = True
        elif isinstance(event, StreamReset):
            stream.reset = event.error_code


# --- bodies both ways -------------------------------------------------------------------------


def hashing_responder(conn: BackendConnection, request: ReceivedRequest) -> None:
    """Read the body as it arrives and answer with its length and SHA-256."""
    digest = hashlib.sha256()
    length = 0
    for piece in conn.iter_body(request):
        digest.update(piece)
        length += len(piece)
    conn.send(response(b"200 OK", body=b"%d %s" % (length, digest.hexdigest().encode())))


@pytest.mark.parametrize("framing", ["content-length", "streamed"])
def test_20_mib_upload_over_h2_arrives_intact(
    proxy: ProxyProcess, backend: Backend, big_body: bytes, framing: str
) -> None:
    """A 20 MiB request body over HTTP/2 (with or without content-length) reaches the
    backend byte for byte."""
    backend.respond_with(hashing_responder, read_bodies=False)
    content = big_body if framing == "content-length" else pieces(big_body)
    with h2_client(proxy, timeout=60.0) as client:
        result = client.post("/upload", content=content)
    assert result.http_version == "HTTP/2"
    assert result.status_code == 200
    assert result.content == b"%d %s" % (BIG, hashlib.sha256(big_body).hexdigest().encode())
    (request,) = backend.requests
    expected = b"Content-Length" if framing == "content-length" else b"Transfer-Encoding"
    assert request.header(expected.decode())


def test_20_mib_download_over_h2_arrives_intact(
    proxy: ProxyProcess, backend: Backend, big_body: bytes
) -> None:
    """A 20 MiB chunked response reaches an HTTP/2 client byte for byte."""

    def respond(conn: BackendConnection, request: ReceivedRequest) -> None:
        conn.send(response(b"200 OK", [(b"Transfer-Encoding", b"chunked")], content_length=False))
        for piece in pieces(big_body):
            conn.send(chunk(piece))
        conn.send(chunk(b""))

    backend.respond_with(respond)
    digest = hashlib.sha256()
    length = 0
    with h2_client(proxy, timeout=60.0) as client, client.stream("GET", "/big") as result:
        assert result.http_version == "HTTP/2"
        for piece in result.iter_raw():
            digest.update(piece)
            length += len(piece)
    assert length == BIG
    assert digest.hexdigest() == hashlib.sha256(big_body).hexdigest()


# --- many streams, one connection -------------------------------------------------------------


def test_fifty_concurrent_streams_on_one_connection(proxy: ProxyProcess, backend: Backend) -> None:
    """Fifty requests on one HTTP/2 connection are all at the backend at the same time."""
    count = 50
    gate = threading.Barrier(count, timeout=15)

    def respond(conn: BackendConnection, request: ReceivedRequest) -> None:
        gate.wait()  # answers only once every request has arrived: they run concurrently
        conn.send(response(b"200 OK", body=request.target))

    backend.respond_with(respond)
    with RawH2(proxy) as client:
        ids = [client.request(f"/n/{i}") for i in range(count)]
        assert client.read_until(lambda: all(client.streams[i].ended for i in ids), 20)
    assert [bytes(client.streams[i].body) for i in ids] == [
        f"/n/{i}".encode() for i in range(count)
    ]
    assert backend.max_active_connections >= count


def test_slow_reader_on_one_stream_does_not_stall_another(
    proxy: ProxyProcess, backend: Backend
) -> None:
    """A stream whose client reads nothing waits on its own window; another stream on the same
    connection is answered meanwhile, and the stalled backend is paused, not buffered."""
    total = 64 * MiB
    sent = [0]
    blob = random.Random(3).randbytes(MiB)

    def respond(conn: BackendConnection, request: ReceivedRequest) -> None:
        if request.target == b"/small":
            conn.send(response(b"200 OK", body=b"small"))
            return
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        conn.send(response(b"200 OK", [(b"Content-Length", b"%d" % total)], content_length=False))
        while sent[0] < total:
            conn.send(blob)
            sent[0] += len(blob)

    backend.respond_with(respond)
    with RawH2(proxy) as client:
        client.auto_ack = False  # the client takes nothing of any stream's data...
        client.h2.increment_flow_control_window(16 * MiB)  # ...but, like browsers, opens the
        client.flush()  # connection's window wide, so that one stream cannot use it all up
        big = client.request("/big")
        assert client.read_until(lambda: len(client.streams[big].body) >= 65535, 10)
        small = client.request("/small")
        assert client.read_until(lambda: client.streams[small].ended, 5)
        assert bytes(client.streams[small].body) == b"small"
        time.sleep(1.0)
        assert sent[0] < 16 * MiB, f"the backend wrote {sent[0]} bytes for a stalled stream"
        assert len(client.streams[big].body) == 65535  # exactly the client's stream window


# --- responses: trailers, errors, resets ------------------------------------------------------


def test_backend_trailers_reach_an_h2_client(proxy: ProxyProcess, backend: Backend) -> None:
    """Trailers of a chunked backend response arrive as a trailing HEADERS frame."""

    def respond(conn: BackendConnection, request: ReceivedRequest) -> None:
        conn.send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
            + chunk(b"data")
            + b"0\r\nX-Checksum: 1234\r\n\r\n"
        )

    backend.respond_with(respond)
    with RawH2(proxy) as client:
        stream = client.request("/t", headers=[(b"te", b"trailers")])
        assert client.read_until(lambda: client.streams[stream].ended)
    assert client.streams[stream].trailers == [(b"x-checksum", b"1234")]
    assert bytes(client.streams[stream].body) == b"data"
    assert backend.requests[0].header("TE") == [b"trailers"]


def test_unreachable_backend_is_a_502_over_h2(proxy_factory: ProxyFactory) -> None:
    """A backend that refuses connections gives the HTTP/2 client a 502 that says so."""
    proxy = proxy_factory("--backend", f"http://127.0.0.1:{free_port()}")
    with h2_client(proxy) as client:
        result = client.get("/")
    assert (result.http_version, result.status_code) == ("HTTP/2", 502)
    assert "could not connect to the backend" in result.text


def test_slow_backend_is_a_504_over_h2(proxy_factory: ProxyFactory, backend: Backend) -> None:
    """A backend slower than --backend-timeout gives the HTTP/2 client a 504."""
    release = backend.release

    def never(conn: BackendConnection, request: ReceivedRequest) -> None:
        release.wait(10)

    backend.respond_with(never)
    proxy = proxy_factory("--backend-timeout", "1")
    with h2_client(proxy) as client:
        result = client.get("/slow")
    assert (result.http_version, result.status_code) == ("HTTP/2", 504)


def test_client_reset_mid_response_frees_the_backend(proxy: ProxyProcess, backend: Backend) -> None:
    """RST_STREAM from the client in the middle of a response closes that backend connection."""
    blob = b"x" * MiB

    def respond(conn: BackendConnection, request: ReceivedRequest) -> None:
        if request.target != b"/endless":  # the request after the reset: small and quick
            conn.send(response(b"200 OK", [], b"after"))
            return
        conn.send(
            response(b"200 OK", [(b"Content-Length", b"%d" % (1024 * MiB))], content_length=False)
        )
        for _ in range(1024):
            conn.send(blob)

    backend.respond_with(respond)
    with RawH2(proxy) as client:
        stream = client.request("/endless")
        assert client.read_until(lambda: len(client.streams[stream].body) > 0)
        backend.wait_for_connections(1)
        client.h2.reset_stream(stream, ErrorCodes.CANCEL)
        client.flush()
        assert backend.wait_for_idle(10), "the backend connection stayed open after RST_STREAM"
        other = client.request("/after")  # the connection itself is fine
        assert client.read_until(lambda: client.streams[other].ended)


# --- ALPN and other clients -------------------------------------------------------------------


def test_alpn_picks_h2_and_no_http2_turns_it_off(
    proxy: ProxyProcess, proxy_factory: ProxyFactory
) -> None:
    """By default ALPN picks h2; with --no-http2 it picks http/1.1 and HTTP/1.1 serves."""
    assert alpn_choice(proxy) == "h2"
    plain = proxy_factory("--no-http2")
    assert alpn_choice(plain) == "http/1.1"
    with httpx.Client(
        base_url=plain.url, verify=plain.ssl_context(alpn=False), http2=True, timeout=10
    ) as client:
        result = client.get("/x")
    assert (result.http_version, result.status_code) == ("HTTP/1.1", 200)


def test_rapid_reset_flood_gets_goaway_and_others_are_served(
    proxy: ProxyProcess, backend: Backend
) -> None:
    """A client opening and resetting streams as fast as it can gets GOAWAY ENHANCE_YOUR_CALM;
    another client on its own connection is served all the while."""
    with RawH2(proxy) as attacker:
        for _ in range(400):
            stream = attacker.h2.get_next_available_stream_id()
            attacker.h2.send_headers(
                stream,
                [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost"),
                 (b":path", b"/flood")],
                end_stream=True,
            )  # fmt: skip
            attacker.h2.reset_stream(stream, ErrorCodes.CANCEL)
        with contextlib.suppress(OSError):  # the proxy may have closed already
            attacker.flush()
        attacker.read_until(lambda: attacker.terminated is not None, 10)
        assert attacker.terminated is not None
        assert attacker.terminated.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    with h2_client(proxy) as client:
        result = client.get("/innocent")
    assert (result.status_code, result.text) == (200, "GET /innocent\n")


def test_curl_http2_gets_an_h2_response(proxy: ProxyProcess, backend: Backend) -> None:
    """curl --http2 negotiates h2 and gets the backend's answer."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    assert proxy.ca_path is not None
    done = subprocess.run(
        [curl, "-sS", "--http2", "--cacert", str(proxy.ca_path), "-w", "\n%{http_version}",
         f"https://localhost:{proxy.port}/curl"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "GET /curl\n\n2"


def test_h2load_many_streams_all_succeed(proxy: ProxyProcess, backend: Backend) -> None:
    """h2load with 4 connections of 20 concurrent streams each: every request succeeds."""
    h2load = shutil.which("h2load")
    if h2load is None:
        pytest.skip("h2load is not installed (apt-get install nghttp2-client)")
    done = subprocess.run(
        [h2load, "-n", "2000", "-c", "4", "-m", "20", f"https://127.0.0.1:{proxy.port}/load"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2000 succeeded, 0 failed, 0 errored" in done.stdout, done.stdout
    assert wait_until(lambda: len(backend.requests) == 2000, 5)

"""Bodies stream both ways: large bodies intact, data moves before it is complete, back-pressure."""

from __future__ import annotations

import hashlib
import random
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from .backend import Backend, BackendConnection, ReceivedRequest, chunk, response
from .proxyprocess import ProxyProcess
from .rawclient import RawClient, request_bytes

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
BIG = 20 * MiB
PIECE = 256 * 1024


@pytest.fixture(scope="module")
def big_body() -> bytes:
    """20 MiB of incompressible, reproducible bytes."""
    return random.Random(20).randbytes(BIG)


def pieces(data: bytes, size: int = PIECE) -> Iterator[bytes]:
    """``data`` in slices of ``size`` bytes."""
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield bytes(view[start : start + size])


def hashing_responder(conn: BackendConnection, request: ReceivedRequest) -> None:
    """Read the body as it arrives and answer with its length and SHA-256."""
    digest = hashlib.sha256()
    length = 0
    for piece in conn.iter_body(request):
        digest.update(piece)
        length += len(piece)
    conn.send(response(b"200 OK", body=b"%d %s" % (length, digest.hexdigest().encode())))


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_20_mib_upload_arrives_intact(
    proxy: ProxyProcess, backend: Backend, big_body: bytes, framing: str
) -> None:
    """A 20 MiB request body reaches the backend byte for byte (checked by SHA-256)."""
    backend.respond_with(hashing_responder, read_bodies=False)
    content: bytes | Iterator[bytes] = big_body if framing == "content-length" else pieces(big_body)
    with proxy.client(timeout=60.0) as client:
        result = client.post("/upload", content=content)
    assert result.status_code == 200
    expected = b"%d %s" % (BIG, hashlib.sha256(big_body).hexdigest().encode())
    assert result.content == expected


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_20_mib_download_arrives_intact(
    proxy: ProxyProcess, backend: Backend, big_body: bytes, framing: str
) -> None:
    """A 20 MiB response body reaches the client byte for byte (checked by SHA-256)."""

    def respond(conn: BackendConnection, request: ReceivedRequest) -> None:
        if framing == "content-length":
            conn.send(response(b"200 OK", [(b"Content-Length", b"%d" % BIG)], content_length=False))
            for piece in pieces(big_body):
                conn.send(piece)
        else:
            conn.send(
                response(b"200 OK", [(b"Transfer-Encoding", b"chunked")], content_length=False)
            )
            for piece in pieces(big_body):
                conn.send(chunk(piece))
            conn.send(chunk(b""))

    backend.respond_with(respond)
    digest = hashlib.sha256()
    length = 0
    with proxy.client(timeout=60.0) as client, client.stream("GET", "/download") as result:
        assert result.status_code == 200
        for piece in result.iter_raw():
            digest.update(piece)
            length += len(piece)
    assert length == BIG
    assert digest.hexdigest() == hashlib.sha256(big_body).hexdigest()


def test_response_streams_before_backend_finishes(proxy: ProxyProcess, backend: Backend) -> None:
    """The client reads the first chunk while the backend is still waiting to send the last."""
    client_got_first = threading.Event()
    last_sent_after_client_got_first: list[bool] = []

    def respond(conn: BackendConnection, request: ReceivedRequest) -> None:
        conn.send(response(b"200 OK", [(b"Transfer-Encoding", b"chunked")], content_length=False))
        conn.send(chunk(b"first chunk;"))
        last_sent_after_client_got_first.append(client_got_first.wait(10))
        conn.send(chunk(b"last chunk") + chunk(b""))

    backend.respond_with(respond)
    with proxy.client() as client, client.stream("GET", "/stream") as result:
        assert result.status_code == 200
        chunks = result.iter_raw()
        received = next(chunks)
        assert received == b"first chunk;"[: len(received)]
        client_got_first.set()
        received += b"".join(chunks)
    assert received == b"first chunk;last chunk"
    assert last_sent_after_client_got_first == [True]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_upload_streams_before_client_finishes(
    proxy: ProxyProcess, backend: Backend, framing: str
) -> None:
    """The backend reads the first part of a body while the client still holds back the rest."""
    backend_got_first = threading.Event()
    first, rest = b"first part;", b"rest of the body"

    def respond(conn: BackendConnection, request: ReceivedRequest) -> None:
        body = b""
        for piece in conn.iter_body(request):
            body += piece
            if len(body) >= len(first):
                backend_got_first.set()
        conn.send(response(b"200 OK", body=body))

    backend.respond_with(respond, read_bodies=False)
    if framing == "content-length":
        headers = [("Content-Length", str(len(first) + len(rest)))]
        first_bytes, rest_bytes = first, rest
    else:
        headers = [("Transfer-Encoding", "chunked")]
        first_bytes, rest_bytes = chunk(first), chunk(rest) + chunk(b"")
    with RawClient(proxy.connect()) as client:
        client.send(request_bytes("POST", "/upload", headers) + first_bytes)
        reached = backend_got_first.wait(10)
        client.send(rest_bytes)
        result = client.read_response()
    assert reached, "the backend saw nothing of the body until the client finished it"
    assert result.body == first + rest


def test_slow_client_pauses_backend(proxy: ProxyProcess, backend: Backend) -> None:
    """A client that stops reading stops the backend's writes; proxy memory stays flat."""
    total = 96 * MiB
    sent = [0]
    backend_done = threading.Event()
    blob = random.Random(1).randbytes(MiB)

    def respond(conn: BackendConnection, request: ReceivedRequest) -> None:
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        conn.send(response(b"200 OK", [(b"Content-Length", b"%d" % total)], content_length=False))
        try:
            while sent[0] < total:
                conn.send(blob[: min(len(blob), total - sent[0])])
                sent[0] += min(len(blob), total - sent[0])
        finally:
            backend_done.set()

    backend.respond_with(respond)
    rss_before = proxy.rss_bytes()
    sock = proxy.connect_tcp()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    tls = proxy.ssl_context().wrap_socket(sock, server_hostname="localhost")
    with RawClient(tls) as client:
        client.send(request_bytes("GET", "/big"))
        client.read_head()
        time.sleep(2.0)  # the client reads nothing; the backend should block soon
        stalled_at = sent[0]
        rss_stalled = proxy.rss_bytes()
        received = len(client.recv_some())
        while received < total:
            data = client.recv_some()
            assert data, "response ended early"
            received += len(data)
    assert backend_done.wait(10)
    assert stalled_at < 32 * MiB, f"backend wrote {stalled_at} bytes to a stalled client"
    assert rss_stalled - rss_before < 32 * MiB, "proxy buffered the body in memory"


def test_slow_backend_pauses_client(proxy: ProxyProcess, backend: Backend) -> None:
    """A backend that stops reading stops the client's upload; proxy memory stays flat."""
    total = 96 * MiB
    sent = [0]
    start_reading = threading.Event()
    blob = random.Random(2).randbytes(MiB)

    def respond(conn: BackendConnection, request: ReceivedRequest) -> None:
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        start_reading.wait(20)
        length = sum(len(piece) for piece in conn.iter_body(request))
        conn.send(response(b"200 OK", body=b"%d" % length))

    backend.respond_with(respond, read_bodies=False)
    rss_before = proxy.rss_bytes()
    sock = proxy.connect_tcp()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    tls = proxy.ssl_context().wrap_socket(sock, server_hostname="localhost")
    outcome: list[bytes | BaseException] = []

    def upload() -> None:
        try:
            with RawClient(tls) as client:
                client.send(request_bytes("POST", "/big", [("Content-Length", str(total))]))
                while sent[0] < total:
                    size = min(len(blob), total - sent[0])
                    client.send(blob[:size])
                    sent[0] += size
                outcome.append(client.read_response().body)
        except BaseException as error:  # reported by the test thread below
            outcome.append(error)

    uploader = threading.Thread(target=upload, daemon=True)
    uploader.start()
    time.sleep(2.0)  # the backend reads nothing; the client should block soon
    stalled_at = sent[0]
    rss_stalled = proxy.rss_bytes()
    start_reading.set()
    uploader.join(30)
    assert outcome == [b"%d" % total]
    assert stalled_at < 32 * MiB, f"client wrote {stalled_at} bytes to a stalled backend"
    assert rss_stalled - rss_before < 32 * MiB, "proxy buffered the body in memory"

"""SIGTERM drains a real twistd process: in-flight exchanges finish, then it exits 0."""

from __future__ import annotations

import signal
import time

import pytest
from hyperframe.frame import DataFrame, Frame, HeadersFrame

from .backend import Backend, slow_backend
from .proxyprocess import ProxyFactory
from .rawclient import ABORTED, CLEAN_CLOSE, RawClient, request_bytes
from .test_http2 import RawH2


def test_sigterm_finishes_in_flight_response_then_exits_0(
    proxy_factory: ProxyFactory, backend: Backend
) -> None:
    """After SIGTERM, new connections are refused, an idle keep-alive connection is closed at
    once, a slow in-flight response still completes (with Connection: close), and the process
    exits with status 0."""
    go_on = slow_backend(backend)
    proxy = proxy_factory()
    with RawClient(proxy.connect()) as idle, RawClient(proxy.connect()) as busy:
        idle.send(request_bytes(target="/first"))
        assert idle.read_response().status == 200
        busy.send(request_bytes(target="/slow"))
        backend.wait_for_requests(2)

        proxy.process.send_signal(signal.SIGTERM)
        assert idle.wait_closed(2) == CLEAN_CLOSE
        assert proxy.refuses_connections(3.0)
        assert proxy.process.poll() is None  # still draining the slow exchange

        go_on.set()
        answer = busy.read_response()
        assert answer.status == 200
        assert answer.body == b"slow but complete"
        assert answer.header("Connection") == [b"close"]
        assert busy.wait_closed(2) == CLEAN_CLOSE
    assert proxy.process.wait(5) == 0
    assert "draining 2 connection(s)" in proxy.output()


def test_drain_timeout_cuts_off_what_is_left(proxy_factory: ProxyFactory, backend: Backend) -> None:
    """With --drain-timeout 1, a response that would take 10 s is aborted (the client sees a
    reset, not a clean end) and the process exits 0 within about 2 s of SIGTERM."""
    go_on = slow_backend(backend)
    proxy = proxy_factory("--drain-timeout", "1")
    try:
        with RawClient(proxy.connect()) as busy:
            busy.send(request_bytes(target="/slow"))
            backend.wait_for_requests(1)
            sent = time.monotonic()
            proxy.process.send_signal(signal.SIGTERM)
            assert busy.wait_closed(5) == ABORTED
            assert proxy.process.wait(5) == 0
            assert time.monotonic() - sent < 2.5
    finally:
        go_on.set()
    assert "--drain-timeout passed: aborting 1 connection(s)" in proxy.output()


def test_drain_at_the_connection_limit_leaves_no_traceback(
    proxy_factory: ProxyFactory, backend: Backend
) -> None:
    """At --max-connections the ports stop reading; connections ending during the drain must
    not ask the closed ports to read again (that was an "Unhandled Error" traceback)."""
    go_on = slow_backend(backend)
    proxy = proxy_factory("--max-connections", "2", "--drain-timeout", "5")
    with RawClient(proxy.connect()) as idle, RawClient(proxy.connect()) as busy:
        idle.send(request_bytes(target="/first"))
        assert idle.read_response().status == 200
        busy.send(request_bytes(target="/slow"))
        backend.wait_for_requests(2)
        proxy.process.send_signal(signal.SIGTERM)
        assert idle.wait_closed(2) == CLEAN_CLOSE
        go_on.set()
        assert busy.read_response().status == 200
    assert proxy.process.wait(5) == 0
    assert "Unhandled Error" not in proxy.output()
    assert "Traceback" not in proxy.output()


def _stream_after_goaway(
    client: RawH2, stream_id: int, timeout: float = 5.0
) -> tuple[dict[bytes, bytes], bytes, bool]:
    """Headers, body and whether it ended, of one stream, read frame by frame.

    The h2 library refuses every frame after a GOAWAY, so the frames that finish a stream the
    server let run are parsed here with hyperframe (h2's own framing layer).
    """
    buffer = bytearray()
    headers: dict[bytes, bytes] = {}
    body = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        client.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = client.sock.recv(65536)
        except TimeoutError:
            continue
        if not data:
            break
        buffer += data
        while len(buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(bytes(buffer[:9])))
            if len(buffer) < 9 + length:
                break
            frame.parse_body(memoryview(bytes(buffer[9 : 9 + length])))
            del buffer[: 9 + length]
            if frame.stream_id != stream_id:
                continue
            if isinstance(frame, HeadersFrame):
                headers = dict(client.h2.decoder.decode(frame.data, raw=True))
            elif isinstance(frame, DataFrame):
                body += frame.data
            if "END_STREAM" in frame.flags:
                return headers, bytes(body), True
    return headers, bytes(body), False


@pytest.mark.timeout(60)
def test_h2_stream_in_flight_completes_after_goaway(
    proxy_factory: ProxyFactory, backend: Backend
) -> None:
    """After SIGTERM an HTTP/2 client gets GOAWAY (NO_ERROR) and its in-flight stream still
    completes; the process then exits 0."""
    go_on = slow_backend(backend)
    proxy = proxy_factory()
    with RawH2(proxy) as client:
        stream_id = client.request("/slow")
        backend.wait_for_requests(1)
        proxy.process.send_signal(signal.SIGTERM)
        assert client.read_until(lambda: client.terminated is not None, timeout=5)
        assert client.terminated is not None
        assert client.terminated.error_code == 0
        assert client.terminated.last_stream_id == stream_id
        go_on.set()
        headers, body, ended = _stream_after_goaway(client, stream_id)
        assert ended
        assert headers[b":status"] == b"200"
        assert body == b"slow but complete"
    assert proxy.process.wait(5) == 0

"""Smuggling attempts and oversized heads: a status, a closed connection, nothing forwarded.

Every request here carries the marker ``SMUGGLED`` (in its target or in a body that a lenient
parser would read as a second request); the backend must never see a byte of it.
"""

from __future__ import annotations

import contextlib

import pytest

from .backend import Backend
from .proxyprocess import ProxyFactory, ProxyProcess
from .rawclient import STILL_OPEN, RawClient, request_bytes

pytestmark = pytest.mark.e2e

SECOND = b"GET /SMUGGLED HTTP/1.1\r\nHost: localhost\r\n\r\n"


def head(*lines: bytes, body: bytes = b"") -> bytes:
    """A raw request from its lines, each ended with CRLF, then a blank line and ``body``."""
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


REQUEST_LINE = b"POST /SMUGGLED HTTP/1.1"
HOST = b"Host: localhost"

CASES: dict[str, bytes] = {
    "content-length-and-chunked": head(
        REQUEST_LINE,
        HOST,
        b"Content-Length: 4",
        b"Transfer-Encoding: chunked",
        body=b"0\r\n\r\n" + SECOND,
    ),
    "chunked-and-content-length": head(
        REQUEST_LINE,
        HOST,
        b"Transfer-Encoding: chunked",
        b"Content-Length: 50",
        body=b"0\r\n\r\n" + SECOND,
    ),
    "differing-content-lengths": head(
        REQUEST_LINE,
        HOST,
        b"Content-Length: 5",
        b"Content-Length: 6",
        body=b"hello!" + SECOND,
    ),
    "repeated-content-length": head(
        REQUEST_LINE,
        HOST,
        b"Content-Length: 5",
        b"Content-Length: 5",
        body=b"hello" + SECOND,
    ),
    "content-length-list": head(
        REQUEST_LINE,
        HOST,
        b"Content-Length: 5, 5",
        body=b"hello" + SECOND,
    ),
    "content-length-plus-sign": head(
        REQUEST_LINE,
        HOST,
        b"Content-Length: +5",
        body=b"hello" + SECOND,
    ),
    "content-length-negative": head(
        REQUEST_LINE,
        HOST,
        b"Content-Length: -1",
        body=SECOND,
    ),
    "content-length-not-a-number": head(
        REQUEST_LINE,
        HOST,
        b"Content-Length: 5x",
        body=b"hello" + SECOND,
    ),
    "gzip-then-chunked": head(
        REQUEST_LINE,
        HOST,
        b"Transfer-Encoding: gzip, chunked",
        body=b"0\r\n\r\n" + SECOND,
    ),
    "identity": head(
        REQUEST_LINE,
        HOST,
        b"Transfer-Encoding: identity",
        body=SECOND,
    ),
    "chunked-then-identity": head(
        REQUEST_LINE,
        HOST,
        b"Transfer-Encoding: chunked, identity",
        body=b"0\r\n\r\n" + SECOND,
    ),
    "unknown-coding": head(
        REQUEST_LINE,
        HOST,
        b"Transfer-Encoding: xchunked",
        body=b"0\r\n\r\n" + SECOND,
    ),
    "repeated-transfer-encoding": head(
        REQUEST_LINE,
        HOST,
        b"Transfer-Encoding: chunked",
        b"Transfer-Encoding: chunked",
        body=b"0\r\n\r\n" + SECOND,
    ),
    "vertical-tab-before-chunked": head(
        REQUEST_LINE,
        HOST,
        b"Transfer-Encoding:\x0bchunked",
        body=b"0\r\n\r\n" + SECOND,
    ),
    "obs-fold": head(
        b"GET /SMUGGLED HTTP/1.1",
        HOST,
        b"X-Folded: first",
        b" continued",
    ),
    "obs-fold-on-transfer-encoding": head(
        REQUEST_LINE,
        HOST,
        b"Transfer-Encoding:",
        b" chunked",
        body=b"0\r\n\r\n" + SECOND,
    ),
    "space-before-colon": head(
        REQUEST_LINE,
        HOST,
        b"Content-Length : 5",
        body=b"hello" + SECOND,
    ),
    "tab-before-colon": head(
        REQUEST_LINE,
        HOST,
        b"Transfer-Encoding\t: chunked",
        body=b"0\r\n\r\n" + SECOND,
    ),
    "bare-lf-everywhere": b"GET /SMUGGLED HTTP/1.1\nHost: localhost\n\n",
    "bare-lf-in-one-header": (
        b"GET /SMUGGLED HTTP/1.1\r\nHost: localhost\r\nX-A: 1\nX-B: 2\r\n\r\n"
    ),
    "bare-cr-in-value": head(b"GET /SMUGGLED HTTP/1.1", HOST, b"X-A: one\rtwo"),
    "nul-in-value": head(b"GET /SMUGGLED HTTP/1.1", HOST, b"X-A: one\x00two"),
    "control-char-in-value": head(b"GET /SMUGGLED HTTP/1.1", HOST, b"X-A: one\x01two"),
    "space-in-name": head(b"GET /SMUGGLED HTTP/1.1", HOST, b"X Bad: 1"),
    "quote-in-name": head(b"GET /SMUGGLED HTTP/1.1", HOST, b'X"Bad: 1'),
    "nul-in-name": head(b"GET /SMUGGLED HTTP/1.1", HOST, b"X\x00Bad: 1"),
    "empty-name": head(b"GET /SMUGGLED HTTP/1.1", HOST, b": no name"),
    "missing-host": head(b"GET /SMUGGLED HTTP/1.1", b"X-A: 1"),
    "repeated-host": head(b"GET /SMUGGLED HTTP/1.1", HOST, b"Host: other.example"),
}


def assert_rejected(client: RawClient, backend: Backend, status: int) -> None:
    """The client got ``status``, the connection then closed, and the backend saw nothing."""
    result = client.read_response()
    assert result.status == status, result.head
    assert client.wait_closed(3) != STILL_OPEN, f"connection left open after {status}"
    assert backend.raw() == b"", "a rejected request was forwarded"


@pytest.mark.parametrize("raw", list(CASES.values()), ids=list(CASES))
def test_ambiguous_request_is_rejected_and_never_forwarded(
    proxy: ProxyProcess, backend: Backend, raw: bytes
) -> None:
    """Framing or header syntax a parser could read two ways gets 400, a close, and no forward."""
    with RawClient(proxy.connect()) as client:
        client.send(raw)
        assert_rejected(client, backend, 400)
    with proxy.client() as after:
        assert after.get("/after").status_code == 200, "proxy unhealthy after a rejection"
    assert b"SMUGGLED" not in backend.raw()


def test_rejection_after_keep_alive_request_does_not_forward_the_bad_one(
    proxy: ProxyProcess, backend: Backend
) -> None:
    """On a kept-alive connection, a smuggling attempt after a good request is still stopped."""
    with RawClient(proxy.connect()) as client:
        client.send(request_bytes("GET", "/first"))
        assert client.read_response().status == 200
        client.send(CASES["content-length-and-chunked"])
        result = client.read_response()
        assert result.status == 400
        assert client.wait_closed(3) != STILL_OPEN
    assert [request.target for request in backend.requests] == [b"/first"]
    assert b"SMUGGLED" not in backend.raw()


def send_tolerantly(client: RawClient, data: bytes) -> None:
    """Send ``data``; the proxy may stop reading (and reset) once it has seen enough."""
    with contextlib.suppress(OSError):
        client.send(data)


def test_oversized_head_gets_431(proxy: ProxyProcess, backend: Backend) -> None:
    """A request head beyond the default 64 KiB gets 431 and is not forwarded."""
    filler = [(f"X-Filler-{n}", "f" * 1000) for n in range(80)]
    with RawClient(proxy.connect()) as client:
        send_tolerantly(client, request_bytes("GET", "/SMUGGLED", filler))
        assert_rejected(client, backend, 431)


def test_head_limit_follows_max_header_bytes(proxy_factory: ProxyFactory, backend: Backend) -> None:
    """``--max-header-bytes 4096``: a 3 KB head is served, a 5 KB head gets 431."""
    proxy = proxy_factory("--max-header-bytes", "4096")
    with RawClient(proxy.connect()) as client:
        client.send(request_bytes("GET", "/fits", [("X-Filler", "f" * 3000)]))
        assert client.read_response().status == 200
    assert [request.target for request in backend.requests] == [b"/fits"]
    with RawClient(proxy.connect()) as client:
        send_tolerantly(client, request_bytes("GET", "/SMUGGLED", [("X-Filler", "f" * 5000)]))
        result = client.read_response()
        assert result.status == 431
        assert client.wait_closed(3) != STILL_OPEN
    assert b"SMUGGLED" not in backend.raw()


def test_overlong_uri_gets_414(proxy: ProxyProcess, backend: Backend) -> None:
    """A request target longer than the whole head limit gets 414 and is not forwarded."""
    target = "/SMUGGLED?" + "q" * (70 * 1024)
    with RawClient(proxy.connect()) as client:
        send_tolerantly(client, request_bytes("GET", target))
        assert_rejected(client, backend, 414)


def test_overlong_uri_limit_follows_max_header_bytes(
    proxy_factory: ProxyFactory, backend: Backend
) -> None:
    """``--max-header-bytes 4096``: a 5 KB request target gets 414, not 431."""
    proxy = proxy_factory("--max-header-bytes", "4096")
    with RawClient(proxy.connect()) as client:
        send_tolerantly(client, request_bytes("GET", "/SMUGGLED?" + "q" * 5000))
        assert_rejected(client, backend, 414)

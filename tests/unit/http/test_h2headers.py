"""tlsproxy.http.h2headers: HTTP/2 request heads rebuilt as HTTP/1.1 for the backend."""

from __future__ import annotations

import pytest

from tests.unit.harness import FRONT_PORT
from tlsproxy.http.h2headers import backend_request
from tlsproxy.http.headers import ClientInfo, Header, HeadRejected

CLIENT = ClientInfo.for_peer("203.0.113.7", FRONT_PORT, ())


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([(b":method", b"CONNECT"), (b":authority", b"example.com")], 405),
        ([(b":method", b"GET"), (b":path", b"/" + b"a" * 20000), (b":authority", b"x")], 414),
        ([(b":method", b"GET"), (b":path", b"/"), (b":authority", b"a"), (b"host", b"b")], 400),
        ([(b":method", b"GET"), (b":path", b"/")], 400),
        ([(b":method", b"GET"), (b":path", b"http://other/"), (b":authority", b"a")], 400),
        ([(b":method", b"GET"), (b":path", b"/"), (b":authority", b"a"), (b"host", b"a")], None),
        ([(b":method", b"GET"), (b":path", b"/"), (b":authority", b"A"), (b"host", b"a")], None),
        ([(b":method", b"GET"), (b":path", b"/"), (b"host", b"a")], None),
    ],
)
def test_request_head_rules(headers: list[Header], status: int | None) -> None:
    """CONNECT is refused, targets are bounded, Host must agree with :authority (one of them
    must be there), and absolute targets must name that host."""
    if status is None:
        request = backend_request(headers, client=CLIENT, prefix=b"", ended=True)
        assert request.head.lower().startswith(b"get / http/1.1\r\nhost: a\r\n")
        assert request.head.count(b"host: ") == 1
        return
    with pytest.raises(HeadRejected) as caught:
        backend_request(headers, client=CLIENT, prefix=b"", ended=True)
    assert caught.value.status == status


def test_path_prefix_applies_to_http2() -> None:
    """A --backend path prefix is put before the path, and dot segments are refused."""
    request = backend_request(
        [(b":method", b"GET"), (b":path", b"/x?y"), (b":authority", b"a")],
        client=CLIENT,
        prefix=b"/app",
        ended=True,
    )
    assert request.head.startswith(b"GET /app/x?y HTTP/1.1\r\n")
    with pytest.raises(HeadRejected, match="dot segments"):
        backend_request(
            [(b":method", b"GET"), (b":path", b"/../etc"), (b":authority", b"a")],
            client=CLIENT,
            prefix=b"/app",
            ended=True,
        )

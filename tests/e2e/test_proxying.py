"""Proxying HTTP/1.1 end to end: methods, framing, headers, keep-alive, the backend URL."""

from __future__ import annotations

import socket
import threading

import pytest

from .backend import (
    Backend,
    BackendConnection,
    BackendStarter,
    ReceivedRequest,
    chunk,
    response,
)
from .proxyprocess import ProxyFactory, ProxyProcess
from .rawclient import STILL_OPEN, RawClient, request_bytes

pytestmark = pytest.mark.e2e


def parse_forwarded(value: bytes) -> list[dict[str, str]]:
    """RFC 7239 ``Forwarded`` elements as dicts (parameter names lower-cased, quotes removed)."""
    elements = []
    for element in value.decode("latin-1").split(","):
        pairs = {}
        for pair in element.split(";"):
            name, _, param = pair.strip().partition("=")
            pairs[name.lower()] = param.strip().strip('"')
        elements.append(pairs)
    return elements


@pytest.mark.parametrize(
    "method", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "PURGE"]
)
def test_every_method_is_forwarded(proxy: ProxyProcess, backend: Backend, method: str) -> None:
    """Any method, standard or extension, reaches the backend unchanged with its body."""
    body = b"payload for " + method.encode() if method in {"POST", "PUT", "PATCH"} else b""
    with proxy.client() as client:
        result = client.request(method, "/m", content=body)
    assert result.status_code == 200
    assert result.content == method.encode() + b" /m\n"
    (received,) = backend.requests
    assert received.method == method.encode()
    assert received.body == body


def test_head_response_is_framed_without_body(proxy: ProxyProcess) -> None:
    """A HEAD response keeps the backend's Content-Length but carries no body bytes."""
    with RawClient(proxy.connect()) as client:
        client.send(request_bytes("HEAD", "/h"))
        head = client.read_response(b"HEAD")
        assert head.status == 200
        assert head.header("Content-Length") == [b"%d" % len(b"HEAD /h\n")]
        client.send(request_bytes("GET", "/after-head"))
        after = client.read_response()
    assert after.body == b"GET /after-head\n"


BODILESS = {
    "204": response(b"204 No Content", [(b"ETag", b'"v1"')], content_length=False),
    "304": response(b"304 Not Modified", [(b"ETag", b'"v1"')], content_length=False),
    "304-with-length": response(
        b"304 Not Modified",
        [(b"ETag", b'"v1"'), (b"Content-Length", b"1234")],
        content_length=False,
    ),
    "head-chunked": response(
        b"200 OK",
        [(b"ETag", b'"v1"'), (b"Transfer-Encoding", b"chunked")],
        content_length=False,
    ),
}


@pytest.mark.parametrize("case", list(BODILESS))
def test_bodiless_responses_are_framed_without_body(
    proxy: ProxyProcess, backend: Backend, case: str
) -> None:
    """204, 304 and HEAD responses end at their head whatever length fields they carry."""
    method = "HEAD" if case.startswith("head") else "GET"

    def respond(conn: BackendConnection, request: ReceivedRequest) -> None:
        if request.target == b"/empty":
            conn.send(BODILESS[case])
        else:
            conn.send(response(b"200 OK", body=b"next"))

    backend.respond_with(respond)
    with RawClient(proxy.connect()) as client:
        client.send(request_bytes(method, "/empty"))
        first = client.read_response(method.encode())
        client.send(request_bytes("GET", "/next"))
        second = client.read_response()
    assert first.status_line == BODILESS[case].split(b"\r\n", 1)[0]
    assert first.header("ETag") == [b'"v1"']
    assert second.body == b"next"


def test_interim_103_is_forwarded_before_final_response(
    proxy: ProxyProcess, backend: Backend
) -> None:
    """A 1xx (103 Early Hints) from the backend reaches the client, then the final response."""

    def respond(conn: BackendConnection, request: ReceivedRequest) -> None:
        conn.send(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        conn.send(response(b"200 OK", body=b"final"))

    backend.respond_with(respond)
    with RawClient(proxy.connect()) as client:
        client.send(request_bytes("GET", "/hints"))
        interim = client.read_response(skip_1xx=False)
        final = client.read_response()
    assert interim.status == 103
    assert interim.header("Link") == [b"</style.css>; rel=preload"]
    assert final.status == 200
    assert final.body == b"final"


def test_expect_100_continue_is_answered_by_backend(proxy: ProxyProcess, backend: Backend) -> None:
    """The proxy forwards ``Expect: 100-continue`` and leaves the 100 to the backend."""
    backend_saw_head = threading.Event()
    allow_continue = threading.Event()

    def respond(conn: BackendConnection, request: ReceivedRequest) -> None:
        backend_saw_head.set()
        allow_continue.wait(10)
        conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = conn.read_body(request)
        conn.send(response(b"201 Created", body=b"got " + body))

    backend.respond_with(respond, read_bodies=False)
    with RawClient(proxy.connect()) as client:
        client.send(
            request_bytes("PUT", "/upload", [("Content-Length", "5"), ("Expect", "100-continue")])
        )
        assert backend_saw_head.wait(10), "the request head never reached the backend"
        assert client.poll(0.5) == b"", "proxy answered before the backend did"
        assert not client.eof, "proxy closed the connection while waiting for 100"
        allow_continue.set()
        interim = client.read_response(skip_1xx=False)
        assert interim.status == 100
        client.send(b"hello")
        final = client.read_response()
    assert final.status == 201
    assert final.body == b"got hello"
    (received,) = backend.requests
    assert received.header("Expect") == [b"100-continue"]


def test_expect_100_continue_final_answer_from_backend(
    proxy: ProxyProcess, backend: Backend
) -> None:
    """A backend that refuses an expected body (417) is heard by the client, who sends none."""

    def refuse(conn: BackendConnection, request: ReceivedRequest) -> None:
        conn.send(response(b"417 Expectation Failed", [(b"Connection", b"close")], b"no"))
        conn.close()

    backend.respond_with(refuse, read_bodies=False)
    with RawClient(proxy.connect()) as client:
        client.send(
            request_bytes(
                "PUT", "/upload", [("Content-Length", "100000"), ("Expect", "100-continue")]
            )
        )
        result = client.read_response()
    assert result.status == 417
    assert result.body == b"no"


@pytest.mark.parametrize(
    "status", [b"299 Custom Thing", b"404 Nope Not Here", b"200 Fine By Me", b"503 "]
)
def test_status_code_and_reason_pass_through(
    proxy: ProxyProcess, backend: Backend, status: bytes
) -> None:
    """The status code and reason phrase reach the client exactly as the backend sent them."""
    backend.respond_with(lambda conn, request: conn.send(response(status, body=b"x")))
    with RawClient(proxy.connect()) as client:
        client.send(request_bytes("GET", "/status"))
        result = client.read_response()
    assert result.status_line == b"HTTP/1.1 " + status


def test_repeated_set_cookie_kept_separate_and_in_order(
    proxy: ProxyProcess, backend: Backend
) -> None:
    """Several Set-Cookie fields (with commas in their values) stay separate and in order."""
    cookies = [
        b"a=1; Path=/; Expires=Wed, 21 Oct 2037 07:28:00 GMT",
        b"b=2; HttpOnly",
        b"c=3, still c; Secure",
    ]
    headers = [(b"Set-Cookie", cookie) for cookie in cookies]
    backend.respond_with(lambda conn, request: conn.send(response(b"200 OK", headers, b"ok")))
    with RawClient(proxy.connect()) as client:
        client.send(request_bytes("GET", "/cookies"))
        result = client.read_response()
    assert result.header("Set-Cookie") == cookies


def test_repeated_request_headers_kept_separate_and_in_order(
    proxy: ProxyProcess, backend: Backend
) -> None:
    """Repeated request fields reach the backend as separate lines in the order sent."""
    with RawClient(proxy.connect()) as client:
        client.send(
            request_bytes("GET", "/", [("X-Multi", "a"), ("X-Other", "o"), ("X-Multi", "b, c")])
        )
        assert client.read_response().status == 200
    (received,) = backend.requests
    assert received.header("X-Multi") == [b"a", b"b, c"]


@pytest.mark.parametrize(
    "target",
    [
        "/a%2Fb/../c?x=%20&y",
        "/./double//slash/%2e%2E/?q=a+b&q=%2B&&",
        "/caf%C3%A9;matrix=1?empty=&=novalue",
        "/?",
    ],
)
def test_request_target_passes_byte_for_byte(
    proxy: ProxyProcess, backend: Backend, target: str
) -> None:
    """The request target is neither normalised, decoded nor re-encoded."""
    with RawClient(proxy.connect()) as client:
        client.send(request_bytes("GET", target))
        assert client.read_response().status == 200
    (received,) = backend.requests
    assert received.target == target.encode()


def test_host_is_preserved(proxy: ProxyProcess, backend: Backend) -> None:
    """The client's Host reaches the backend unchanged and is echoed in X-Forwarded-Host."""
    with RawClient(proxy.connect()) as client:
        client.send(request_bytes("GET", "/", host="App.Example:8443"))
        assert client.read_response().status == 200
    (received,) = backend.requests
    assert received.header("Host") == [b"App.Example:8443"]
    assert received.header("X-Forwarded-Host") == [b"App.Example:8443"]


def test_forwarded_headers_are_set(proxy: ProxyProcess, backend: Backend) -> None:
    """The backend learns client address, https, Host and port (X-Forwarded-* and Forwarded)."""
    with proxy.client() as client:
        assert client.get("/fwd").status_code == 200
    (received,) = backend.requests
    host = f"127.0.0.1:{proxy.port}".encode()
    assert received.header("Host") == [host]
    assert received.only("X-Forwarded-For") == b"127.0.0.1"
    assert received.only("X-Forwarded-Proto") == b"https"
    assert received.only("X-Forwarded-Host") == host
    assert received.only("X-Forwarded-Port") == str(proxy.port).encode()
    (element,) = parse_forwarded(received.only("Forwarded"))
    assert element["for"] == "127.0.0.1"
    assert element["proto"] == "https"
    assert element["host"] == host.decode()


SPOOFED = [
    ("X-Forwarded-For", "6.6.6.6"),
    ("X-Forwarded-Proto", "http"),
    ("X-Forwarded-Host", "evil.example"),
    ("X-Forwarded-Port", "1"),
    ("Forwarded", "for=6.6.6.6;proto=http;host=evil.example"),
]


@pytest.mark.parametrize(
    "extra", [[], ["--trusted-proxy", "10.0.0.0/8"]], ids=["no-trusted", "other-range-trusted"]
)
def test_untrusted_client_forwarded_headers_are_replaced(
    proxy_factory: ProxyFactory, backend: Backend, extra: list[str]
) -> None:
    """Forwarding headers from a peer outside --trusted-proxy are replaced, not passed on."""
    proxy = proxy_factory(*extra)
    with RawClient(proxy.connect()) as client:
        client.send(request_bytes("GET", "/", SPOOFED, host="site.example"))
        assert client.read_response().status == 200
    (received,) = backend.requests
    assert received.only("X-Forwarded-For") == b"127.0.0.1"
    assert received.only("X-Forwarded-Proto") == b"https"
    assert received.only("X-Forwarded-Host") == b"site.example"
    assert received.only("X-Forwarded-Port") == str(proxy.port).encode()
    (element,) = parse_forwarded(received.only("Forwarded"))
    assert element["for"] == "127.0.0.1"
    assert b"6.6.6.6" not in received.head
    assert b"evil.example" not in received.head


def test_trusted_proxy_forwarded_headers_are_appended(
    proxy_factory: ProxyFactory, backend: Backend
) -> None:
    """A peer inside --trusted-proxy keeps its X-Forwarded-For/Forwarded; ours is appended."""
    proxy = proxy_factory("--trusted-proxy", "127.0.0.0/8")
    with RawClient(proxy.connect()) as client:
        client.send(request_bytes("GET", "/", SPOOFED, host="site.example"))
        assert client.read_response().status == 200
    (received,) = backend.requests
    forwarded_for = b", ".join(received.header("X-Forwarded-For"))
    assert [part.strip() for part in forwarded_for.split(b",")] == [b"6.6.6.6", b"127.0.0.1"]
    elements = parse_forwarded(b", ".join(received.header("Forwarded")))
    assert [element["for"] for element in elements] == ["6.6.6.6", "127.0.0.1"]
    assert elements[-1]["proto"] == "https"


def test_hop_by_hop_request_headers_are_removed(proxy: ProxyProcess, backend: Backend) -> None:
    """Connection and the fields it names, Keep-Alive, Proxy-Connection and Trailer stop here."""
    sent = [
        ("Connection", "keep-alive, X-Hop-One, x-hop-two"),
        ("X-Hop-One", "1"),
        ("X-Hop-Two", "2"),
        ("Keep-Alive", "timeout=5, max=100"),
        ("Proxy-Connection", "keep-alive"),
        ("Trailer", "X-Checksum"),
        ("X-End-To-End", "kept"),
    ]
    with RawClient(proxy.connect()) as client:
        client.send(request_bytes("GET", "/hop", sent))
        assert client.read_response().status == 200
    (received,) = backend.requests
    for name in ("X-Hop-One", "X-Hop-Two", "Keep-Alive", "Proxy-Connection", "Trailer"):
        assert received.header(name) == [], f"{name} was forwarded"
    connection = b",".join(received.header("Connection")).lower()
    assert b"x-hop" not in connection
    assert received.header("X-End-To-End") == [b"kept"]


@pytest.mark.parametrize(
    ("sent", "forwarded"),
    [("trailers", [b"trailers"]), ("gzip", []), ("deflate;q=0.5", [])],
)
def test_te_is_removed_except_trailers(
    proxy: ProxyProcess, backend: Backend, sent: str, forwarded: list[bytes]
) -> None:
    """``TE: trailers`` is passed on; any other TE value is hop-by-hop and removed."""
    with RawClient(proxy.connect()) as client:
        client.send(request_bytes("GET", "/te", [("TE", sent)]))
        assert client.read_response().status == 200
    (received,) = backend.requests
    assert received.header("TE") == forwarded


def test_h2c_upgrade_request_is_not_forwarded(proxy: ProxyProcess, backend: Backend) -> None:
    """An ``Upgrade: h2c`` offer (meaningless over TLS) is stripped and answered normally."""
    sent = [
        ("Connection", "Upgrade, HTTP2-Settings"),
        ("Upgrade", "h2c"),
        ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
    ]
    with RawClient(proxy.connect()) as client:
        client.send(request_bytes("GET", "/upgrade", sent))
        result = client.read_response()
    assert result.status == 200
    (received,) = backend.requests
    assert received.header("Upgrade") == []
    assert received.header("HTTP2-Settings") == []


def test_hop_by_hop_response_headers_are_removed(proxy: ProxyProcess, backend: Backend) -> None:
    """Fields the backend marks hop-by-hop (Connection, Keep-Alive) do not reach the client."""
    headers = [
        (b"Connection", b"X-Resp-Hop"),
        (b"X-Resp-Hop", b"secret"),
        (b"Keep-Alive", b"timeout=99"),
        (b"X-Resp-End", b"kept"),
    ]
    backend.respond_with(lambda conn, request: conn.send(response(b"200 OK", headers, b"ok")))
    with RawClient(proxy.connect()) as client:
        client.send(request_bytes("GET", "/"))
        result = client.read_response()
    assert result.header("X-Resp-Hop") == []
    assert result.header("Keep-Alive") != [b"timeout=99"]
    assert result.header("X-Resp-End") == [b"kept"]


def test_chunked_request_body_is_forwarded(proxy: ProxyProcess, backend: Backend) -> None:
    """A chunked upload reaches the backend complete, with exactly one framing."""
    body = chunk(b"hello ") + b"3;ext=1\r\nwor\r\n" + chunk(b"ld") + b"0\r\n\r\n"
    with RawClient(proxy.connect()) as client:
        client.send(request_bytes("POST", "/chunked", [("Transfer-Encoding", "chunked")], body))
        assert client.read_response().status == 200
    (received,) = backend.requests
    assert received.body == b"hello world"
    framings = len(received.header("Content-Length")) + len(received.header("Transfer-Encoding"))
    assert framings == 1


def test_content_length_request_body_is_forwarded(proxy: ProxyProcess, backend: Backend) -> None:
    """A Content-Length upload reaches the backend with the same length."""
    with proxy.client() as client:
        assert client.post("/cl", content=b"x" * 1000).status_code == 200
    (received,) = backend.requests
    assert received.body == b"x" * 1000


@pytest.mark.parametrize("framing", ["chunked", "close-delimited", "content-length"])
def test_response_body_framings_are_relayed(
    proxy: ProxyProcess, backend: Backend, framing: str
) -> None:
    """Chunked, close-delimited and Content-Length response bodies all arrive complete."""
    parts = [b"first part,", b"second part,", b"last"]

    def respond(conn: BackendConnection, request: ReceivedRequest) -> None:
        if framing == "chunked":
            head = response(b"200 OK", [(b"Transfer-Encoding", b"chunked")], content_length=False)
            conn.send(head + b"".join(chunk(part) for part in parts) + chunk(b""))
        elif framing == "close-delimited":
            conn.send(response(b"200 OK", [(b"Connection", b"close")], content_length=False))
            for part in parts:
                conn.send(part)
            conn.close()
        else:
            conn.send(response(b"200 OK", body=b"".join(parts)))

    backend.respond_with(respond)
    with proxy.client() as client:
        for _ in range(2):  # the second request proves the connection state survived
            result = client.get("/framing")
            assert result.status_code == 200
            assert result.content == b"".join(parts)


def test_keep_alive_reuses_client_and_backend_connections(
    proxy: ProxyProcess, backend: Backend
) -> None:
    """Thirty requests on one TLS connection all succeed over few backend connections."""
    with RawClient(proxy.connect()) as client:
        for number in range(30):
            client.send(request_bytes("GET", f"/ka/{number}"))
            result = client.read_response()
            assert result.body == f"GET /ka/{number}\n".encode()
    assert len(backend.requests) == 30
    assert backend.connections_accepted <= 2


def test_httpx_pool_requests_share_one_backend_connection(
    proxy: ProxyProcess, backend: Backend
) -> None:
    """Sequential requests from a pooling client reuse the backend connection."""
    with proxy.client() as client:
        for number in range(20):
            assert client.get(f"/pool/{number}").status_code == 200
    assert backend.connections_accepted <= 2


def test_pipelined_requests_are_answered_in_order(proxy: ProxyProcess) -> None:
    """Requests sent back to back before any answer get their responses in order."""
    with RawClient(proxy.connect()) as client:
        client.send(b"".join(request_bytes("GET", f"/pipe/{n}") for n in range(3)))
        bodies = [client.read_response().body for _ in range(3)]
    assert bodies == [b"GET /pipe/0\n", b"GET /pipe/1\n", b"GET /pipe/2\n"]


def test_client_connection_close_is_honoured(proxy: ProxyProcess) -> None:
    """``Connection: close`` from the client gets its response, then the connection ends."""
    with RawClient(proxy.connect()) as client:
        client.send(request_bytes("GET", "/bye", [("Connection", "close")]))
        assert client.read_response().body == b"GET /bye\n"
        assert client.wait_closed(3) != STILL_OPEN


def test_http10_request_without_host_is_served(proxy: ProxyProcess) -> None:
    """An HTTP/1.0 request needs no Host; it is answered and the connection then closes."""
    with RawClient(proxy.connect()) as client:
        client.send(request_bytes("GET", "/old", host=None, version="HTTP/1.0"))
        result = client.read_response()
        assert result.status == 200
        assert result.body == b"GET /old\n"
        assert client.wait_closed(3) != STILL_OPEN


def test_backend_closing_after_each_response_is_handled(
    proxy: ProxyProcess, backend: Backend
) -> None:
    """A backend that closes after every response costs the client nothing: all requests succeed."""

    def respond(conn: BackendConnection, request: ReceivedRequest) -> None:
        conn.send(response(b"200 OK", [(b"Connection", b"close")], b"once"))
        conn.close()

    backend.respond_with(respond)
    with proxy.client() as client:
        for _ in range(5):
            result = client.get("/close")
            assert result.status_code == 200
            assert result.content == b"once"
    assert backend.connections_accepted == 5


def test_backend_path_prefix_is_prepended(proxy_factory: ProxyFactory, backend: Backend) -> None:
    """``--backend http://host:port/prefix`` sends ``/x?y`` to the backend as ``/prefix/x?y``."""
    proxy = proxy_factory("--backend", backend.url + "/prefix")
    with proxy.client() as client:
        assert client.get("/x?y=1").status_code == 200
    (received,) = backend.requests
    assert received.target == b"/prefix/x?y=1"


@pytest.mark.parametrize(
    ("host", "family"),
    [("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)],
    ids=["ipv4-backend", "ipv6-backend"],
)
def test_localhost_backend_reaches_either_loopback(
    proxy_factory: ProxyFactory,
    backend_factory: BackendStarter,
    host: str,
    family: socket.AddressFamily,
) -> None:
    """``--backend http://localhost:PORT`` reaches a backend on 127.0.0.1 or on ::1 alone."""
    only = backend_factory(host=host, family=family)
    proxy = proxy_factory("--backend", f"http://localhost:{only.port}")
    with proxy.client() as client:
        for _ in range(2):
            result = client.get("/lh")
            assert result.status_code == 200
            assert result.content == b"GET /lh\n"

"""tlsproxy.http.h1 with a real pool and exchange, in memory: what the client and backend see."""

from __future__ import annotations

import ipaddress

import pytest

from tests.unit.harness import (
    BACKEND_TIMEOUT,
    HEADER_TIMEOUT,
    IDLE_TIMEOUT,
    Backend,
    Client,
    Proxy,
    header_values,
    request,
    response,
    split_head,
)
from tlsproxy.backendpool import IDLE_SECONDS

FORWARDED_FOR_CLIENT = (
    b"X-Forwarded-For: 203.0.113.7\r\n"
    b'Forwarded: for=203.0.113.7;host="example.com";proto=https\r\n'
    b"X-Forwarded-Proto: https\r\n"
    b"X-Forwarded-Port: 8443\r\n"
    b"X-Forwarded-Host: example.com\r\n"
)


@pytest.fixture
def proxy() -> Proxy:
    return Proxy()


def forwarded(proxy: Proxy, client: Client, data: bytes) -> tuple[Backend, bytes]:
    """Send ``data`` from ``client``; accept the backend connection; what the backend got."""
    client.send(data)
    backend = proxy.accept()
    return backend, backend.received()


def exchange(proxy: Proxy, data: bytes, answer: bytes) -> tuple[Client, Backend, bytes]:
    """One request through a fresh client connection and backend connection."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, data)
    backend.send(answer)
    return client, backend, client.received()


def status_line(data: bytes) -> bytes:
    return split_head(data)[0][0]


# --- the request head the backend sees ------------------------------------------------------


def test_get_is_forwarded_with_exact_bytes(proxy: Proxy) -> None:
    """A GET reaches the backend as HTTP/1.1 with Host kept, hop-by-hop headers gone, and
    X-Forwarded-* and Forwarded describing the client."""
    client = proxy.connect()
    _, sent = forwarded(
        proxy,
        client,
        b"GET /path?q=1 HTTP/1.1\r\n"
        b"Host: example.com\r\n"
        b"User-Agent: curl/8\r\n"
        b"Connection: keep-alive, X-Hop\r\n"
        b"X-Hop: secret\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"TE: trailers, deflate\r\n"
        b"Trailer: X-Sum\r\n"
        b"Upgrade: h2c\r\n"
        b"Accept: */*\r\n"
        b"\r\n",
    )
    assert sent == (
        b"GET /path?q=1 HTTP/1.1\r\n"
        b"Host: example.com\r\n"
        b"User-Agent: curl/8\r\n"
        b"Accept: */*\r\n"
        b"TE: trailers\r\n" + FORWARDED_FOR_CLIENT + b"\r\n"
    )


def test_untrusted_clients_forwarding_headers_are_replaced(proxy: Proxy) -> None:
    """X-Forwarded-* and Forwarded from a peer outside --trusted-proxy are dropped and rewritten."""
    client = proxy.connect("203.0.113.7")
    _, sent = forwarded(
        proxy,
        client,
        request(
            headers=[
                b"X-Forwarded-For: 10.9.9.9",
                b"Forwarded: for=10.9.9.9",
                b"X-Forwarded-Proto: http",
                b"X-Forwarded-Host: evil.example",
                b"X-Forwarded-Port: 80",
            ]
        ),
    )
    assert b"10.9.9.9" not in sent
    assert b"evil.example" not in sent
    assert header_values(sent, b"X-Forwarded-For") == [b"203.0.113.7"]
    assert header_values(sent, b"X-Forwarded-Proto") == [b"https"]
    assert header_values(sent, b"X-Forwarded-Host") == [b"example.com"]
    assert header_values(sent, b"X-Forwarded-Port") == [b"8443"]


def test_trusted_peers_forwarding_headers_are_extended() -> None:
    """A peer inside --trusted-proxy has its X-Forwarded-For and Forwarded appended to, and the
    X-Forwarded-Proto/Host/Port it set kept."""
    proxy = Proxy(trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),))
    client = proxy.connect("10.1.2.3")
    _, sent = forwarded(
        proxy,
        client,
        request(
            headers=[
                b"X-Forwarded-For: 198.51.100.1",
                b"Forwarded: for=198.51.100.1;proto=https",
                b"X-Forwarded-Host: app.example",
                b"X-Forwarded-Proto: https",
                b"X-Forwarded-Port: 443",
            ]
        ),
    )
    assert header_values(sent, b"X-Forwarded-For") == [b"198.51.100.1, 10.1.2.3"]
    assert header_values(sent, b"Forwarded") == [
        b'for=198.51.100.1;proto=https, for=10.1.2.3;host="example.com";proto=https'
    ]
    assert header_values(sent, b"X-Forwarded-Host") == [b"app.example"]
    assert header_values(sent, b"X-Forwarded-Port") == [b"443"]


def test_ipv6_client_is_described_in_both_forwarding_styles(proxy: Proxy) -> None:
    """An IPv6 client appears bare in X-Forwarded-For and quoted in brackets in Forwarded."""
    client = proxy.connect("2001:db8::7")
    _, sent = forwarded(proxy, client, request())
    assert header_values(sent, b"X-Forwarded-For") == [b"2001:db8::7"]
    assert header_values(sent, b"Forwarded")[0].startswith(b'for="[2001:db8::7]";')


def test_request_target_is_passed_byte_for_byte(proxy: Proxy) -> None:
    """The request target reaches the backend exactly as sent: no decoding or normalising."""
    target = b"/a/../b/%2e%2E/%2F?x=%20&y=+#"
    client = proxy.connect()
    _, sent = forwarded(proxy, client, request(target[:-1]))
    assert status_line(sent) == b"GET " + target[:-1] + b" HTTP/1.1"


def test_backend_path_prefix_is_prepended() -> None:
    """--backend http://host:port/app sends /x to the backend as /app/x."""
    proxy = Proxy(backend_url="http://127.0.0.1:8000/app/")
    client = proxy.connect()
    _, sent = forwarded(proxy, client, request(b"/x?y=1"))
    assert status_line(sent) == b"GET /app/x?y=1 HTTP/1.1"


def test_asterisk_target_gets_no_path_prefix() -> None:
    """OPTIONS * is not a path, so the path prefix is not put in front of it."""
    proxy = Proxy(backend_url="http://127.0.0.1:8000/app")
    client = proxy.connect()
    _, sent = forwarded(proxy, client, request(b"*", method=b"OPTIONS"))
    assert status_line(sent) == b"OPTIONS * HTTP/1.1"


def test_absolute_form_request_reaches_the_backend_in_origin_form() -> None:
    """GET http://host/x?y with that Host goes to the backend as GET /x?y (prefixed), which is
    all many app servers understand."""
    proxy = Proxy(backend_url="http://127.0.0.1:8000/app")
    client = proxy.connect()
    _, sent = forwarded(
        proxy, client, request(b"http://localhost:8443/x?y", host=b"localhost:8443")
    )
    assert status_line(sent) == b"GET /app/x?y HTTP/1.1"
    assert header_values(sent, b"Host") == [b"localhost:8443"]


def test_absolute_form_naming_another_host_gets_400(proxy: Proxy) -> None:
    """An absolute URL for a host other than the Host header is refused, not forwarded."""
    client = proxy.connect()
    client.send(request(b"http://internal.example/admin", host=b"example.com"))
    assert status_line(client.received()) == b"HTTP/1.1 400 Bad Request"
    assert proxy.connects == []


@pytest.mark.parametrize("target", [b"/%2e%2e/admin", b"/..#x"])
def test_dot_segments_under_a_path_prefix_get_400(target: bytes) -> None:
    """Under --backend http://host:port/public, /%2e%2e/admin is refused: the backend would
    resolve it to /admin, outside the prefix. The parser lets a fragment through, so a dot
    segment before one counts too."""
    proxy = Proxy(backend_url="http://127.0.0.1:8000/public")
    client = proxy.connect()
    client.send(request(target))
    assert status_line(client.received()) == b"HTTP/1.1 400 Bad Request"
    assert proxy.connects == []


def test_http10_request_without_host_is_forwarded_as_http11(proxy: Proxy) -> None:
    """An HTTP/1.0 request may omit Host; it goes to the backend as HTTP/1.1, which needs one,
    so it names the backend itself (as nginx's default proxy Host does)."""
    client = proxy.connect()
    _, sent = forwarded(proxy, client, request(host=None, version=b"HTTP/1.0"))
    lines, _ = split_head(sent)
    assert lines[0] == b"GET / HTTP/1.1"
    assert header_values(sent, b"Host") == [proxy.pool.address.authority]
    assert header_values(sent, b"Forwarded") == [b"for=203.0.113.7;proto=https"]


# --- request bodies -------------------------------------------------------------------------


def test_content_length_body_streams_as_it_arrives(proxy: Proxy) -> None:
    """Each piece of a Content-Length body is forwarded when it arrives, not when it is complete."""
    client = proxy.connect()
    backend, sent = forwarded(
        proxy, client, request(method=b"POST", headers=[b"Content-Length: 10"], body=b"01234")
    )
    assert header_values(sent, b"Content-Length") == [b"10"]
    assert sent.endswith(b"\r\n\r\n01234")
    client.send(b"56789")
    assert backend.received() == b"56789"


def test_chunked_body_is_rechunked_with_trailers(proxy: Proxy) -> None:
    """A chunked request body reaches the backend chunked, chunk by chunk, trailers included."""
    client = proxy.connect()
    backend, sent = forwarded(
        proxy,
        client,
        request(
            method=b"POST", headers=[b"Transfer-Encoding: chunked"], body=b"5;ext=1\r\nhello\r\n"
        ),
    )
    assert header_values(sent, b"Transfer-Encoding") == [b"chunked"]
    assert sent.endswith(b"\r\n\r\n5\r\nhello\r\n")
    client.send(b"0\r\nX-Sum: abc\r\n\r\n")
    assert backend.received() == b"0\r\nX-Sum: abc\r\n\r\n"


def test_request_trailers_cannot_carry_routing_or_forwarding_fields(proxy: Proxy) -> None:
    """Trailers pass only if a header of that name could: X-Forwarded-For, Host and
    Authorization in a trailer are dropped (they would slip past the head's checks), a
    checksum passes."""
    client = proxy.connect()
    backend, _ = forwarded(
        proxy, client, request(method=b"POST", headers=[b"Transfer-Encoding: chunked"])
    )
    client.send(
        b"1\r\nx\r\n0\r\n"
        b"X-Forwarded-For: 10.0.0.1\r\nHost: evil.example\r\nAuthorization: Basic YTpi\r\n"
        b"X-Checksum: abc\r\n\r\n"
    )
    assert backend.received() == b"1\r\nx\r\n0\r\nX-Checksum: abc\r\n\r\n"


def test_content_length_request_trailer_never_reaches_the_backend(proxy: Proxy) -> None:
    """A Content-Length trailer is malformed (the parser refuses it): the half-sent request is
    abandoned on both sides, and the backend never sees the request end or the trailer."""
    client = proxy.connect()
    backend, _ = forwarded(
        proxy, client, request(method=b"POST", headers=[b"Transfer-Encoding: chunked"])
    )
    client.send(b"1\r\nx\r\n0\r\nContent-Length: 5\r\nX-Checksum: abc\r\n\r\n")
    got = backend.received()
    assert b"Content-Length" not in got
    assert b"0\r\n" not in got
    assert backend.aborted
    assert client.aborted


def test_body_sent_while_connecting_follows_the_head(proxy: Proxy) -> None:
    """Body bytes that arrive before the backend connection exists are sent right after the
    head once it does, and the client is not read meanwhile."""
    client = proxy.connect()
    client.send(request(method=b"PUT", headers=[b"Content-Length: 6"], body=b"abc"))
    assert client.reading_paused
    backend = proxy.accept()
    assert backend.received().endswith(b"\r\n\r\nabc")
    assert not client.reading_paused
    client.send(b"def")
    assert backend.received() == b"def"


# --- the response the client sees -----------------------------------------------------------


def test_status_and_reason_are_passed_through_as_sent(proxy: Proxy) -> None:
    """An unusual status code and reason phrase reach the client unchanged."""
    _, _, got = exchange(proxy, request(), response(b"299 Quite Fine, Thanks", body=b"x"))
    assert status_line(got) == b"HTTP/1.1 299 Quite Fine, Thanks"


def test_repeated_set_cookie_headers_are_kept_separate_and_in_order(proxy: Proxy) -> None:
    """Several Set-Cookie headers stay several headers, in the backend's order."""
    cookies = [b"b=2; Path=/", b"a=1, c=3", b"z=26; Expires=Wed, 21 Oct 2026 07:28:00 GMT"]
    _, _, got = exchange(
        proxy, request(), response(headers=[b"Set-Cookie: " + c for c in cookies], body=b"")
    )
    assert header_values(got, b"Set-Cookie") == cookies


def test_content_length_response_is_passed_and_streamed(proxy: Proxy) -> None:
    """A Content-Length response keeps its length; its body reaches the client piece by piece."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, request())
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Type: text/plain\r\n\r\n01234")
    assert client.received() == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\n01234"
    )
    backend.send(b"56789")
    assert client.received() == b"56789"


def test_chunked_response_is_rechunked_with_trailers(proxy: Proxy) -> None:
    """A chunked backend response reaches an HTTP/1.1 client chunked, with its trailers."""
    _, _, got = exchange(
        proxy,
        request(),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Sum: 42\r\nX-Other: y\r\n\r\n",
    )
    assert got == (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 42\r\nX-Other: y\r\n\r\n"
    )


def test_response_trailers_cannot_set_cookies_or_controls(proxy: Proxy) -> None:
    """Response trailers lose what only a head may carry (Set-Cookie, Cache-Control,
    Connection); a checksum passes."""
    _, _, got = exchange(
        proxy,
        request(),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n"
        b"Set-Cookie: session=evil\r\nCache-Control: public\r\nConnection: close\r\n"
        b"X-Checksum: abc\r\n\r\n",
    )
    assert got.endswith(b"\r\n\r\n2\r\nhi\r\n0\r\nX-Checksum: abc\r\n\r\n")
    assert b"evil" not in got


def test_close_delimited_response_is_chunked_for_http11_client(proxy: Proxy) -> None:
    """A backend response that ends with the connection is chunked for the client, and ends
    (with the last chunk) when the backend closes."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, request())
    backend.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nsome")
    backend.send(b"thing")
    backend.close()
    assert client.received() == (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nsome\r\n5\r\nthing\r\n0\r\n\r\n"
    )
    assert not client.closing


def test_close_delimited_response_cut_by_a_reset_aborts_the_client(proxy: Proxy) -> None:
    """A reset is not how a close-delimited body ends: the client is aborted with no last chunk,
    so it cannot take the truncated body for the whole one."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, request())
    backend.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart-of-a-long-body")
    backend.die()
    assert client.received() == (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n13\r\npart-of-a-long-body\r\n"
    )
    assert client.reset
    assert not client.transport.disconnecting  # no TLS close_notify either


def test_hop_by_hop_response_headers_are_removed(proxy: Proxy) -> None:
    """Connection, Keep-Alive, Upgrade and the headers Connection names stay at the backend."""
    _, _, got = exchange(
        proxy,
        request(),
        response(
            headers=[
                b"Connection: keep-alive, X-Internal",
                b"Keep-Alive: timeout=5",
                b"X-Internal: 1",
                b"Upgrade: h2c",
                b"X-Kept: 2",
            ],
            body=b"ok",
        ),
    )
    assert got == b"HTTP/1.1 200 OK\r\nX-Kept: 2\r\nContent-Length: 2\r\n\r\nok"


def test_head_response_has_content_length_and_no_body_and_reuses_connection(
    proxy: Proxy,
) -> None:
    """A response to HEAD keeps its Content-Length, carries no body, and its backend connection
    serves the next request."""
    client, backend, got = exchange(
        proxy, request(method=b"HEAD"), b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
    )
    assert got == b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
    client.send(request(b"/next"))
    assert proxy.pending_connects == 0
    assert status_line(backend.received()) == b"GET /next HTTP/1.1"
    backend.send(response(body=b"abc"))
    assert client.received().endswith(b"\r\n\r\nabc")


def test_head_response_with_connection_close_is_not_reused(proxy: Proxy) -> None:
    """A response to HEAD whose backend said Connection: close does not go back to the pool."""
    client, backend, _ = exchange(
        proxy,
        request(method=b"HEAD"),
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
    )
    client.send(request(b"/next"))
    assert backend.received() == b""
    assert proxy.pending_connects == 1


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
def test_bodyless_statuses_get_no_body_framing(proxy: Proxy, status: bytes) -> None:
    """204 and 304 responses reach the client without a body or chunked framing, and the
    connection is reused."""
    client, backend, got = exchange(
        proxy, request(), b"HTTP/1.1 " + status + b'\r\nETag: "x"\r\n\r\n'
    )
    assert got == b"HTTP/1.1 " + status + b'\r\nETag: "x"\r\n\r\n'
    client.send(request(b"/next"))
    assert proxy.pending_connects == 0
    assert status_line(backend.received()) == b"GET /next HTTP/1.1"


def test_304_keeps_content_length_of_the_representation(proxy: Proxy) -> None:
    """A 304's Content-Length describes the cached representation and is passed on, with no body."""
    client, backend, got = exchange(
        proxy, request(), b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n"
    )
    assert got == b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n"
    client.send(request(b"/next"))
    assert status_line(backend.received()) == b"GET /next HTTP/1.1"


def test_100_continue_is_left_to_the_backend(proxy: Proxy) -> None:
    """Expect: 100-continue is forwarded, and the backend's 100 reaches the client before the body
    is sent."""
    client = proxy.connect()
    backend, sent = forwarded(
        proxy,
        client,
        request(method=b"POST", headers=[b"Content-Length: 4", b"Expect: 100-continue"]),
    )
    assert header_values(sent, b"Expect") == [b"100-continue"]
    assert client.received() == b""
    backend.send(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert client.received() == b"HTTP/1.1 100 Continue\r\n\r\n"
    client.send(b"data")
    assert backend.received() == b"data"
    backend.send(response(b"201 Created"))
    assert status_line(client.received()) == b"HTTP/1.1 201 Created"


def test_103_early_hints_reach_the_client_before_the_response(proxy: Proxy) -> None:
    """A 103 with its Link headers is forwarded, then the final response."""
    _, _, got = exchange(
        proxy,
        request(),
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nLink: </b.js>; rel=preload\r\n"
        b"\r\n" + response(body=b"hi"),
    )
    assert got == (
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nLink: </b.js>; rel=preload\r\n"
        b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    )


def test_interim_responses_are_not_sent_to_http10_clients(proxy: Proxy) -> None:
    """HTTP/1.0 clients do not understand 1xx, so they only get the final response."""
    _, _, got = exchange(
        proxy,
        request(version=b"HTTP/1.0"),
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + response(body=b"hi"),
    )
    assert status_line(got) == b"HTTP/1.1 200 OK"
    assert b"103" not in got


def test_http10_client_gets_close_delimited_body_for_chunked_response(proxy: Proxy) -> None:
    """An HTTP/1.0 client cannot read chunked: it gets the plain body, ended by closing."""
    client, _, got = exchange(
        proxy,
        request(version=b"HTTP/1.0", headers=[b"Connection: keep-alive"]),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    assert got == b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello"
    assert client.closing
    assert not client.aborted


def test_http10_keep_alive_client_keeps_its_connection(proxy: Proxy) -> None:
    """An HTTP/1.0 client that asked for keep-alive gets it for a Content-Length response."""
    client, _, got = exchange(
        proxy,
        request(version=b"HTTP/1.0", headers=[b"Connection: keep-alive"]),
        response(body=b"hi"),
    )
    assert header_values(got, b"Connection") == [b"keep-alive"]
    assert not client.closing


def test_client_connection_close_is_honoured(proxy: Proxy) -> None:
    """A client that sent Connection: close gets it back and the connection closes after."""
    client, _, got = exchange(proxy, request(headers=[b"Connection: close"]), response(body=b"x"))
    assert header_values(got, b"Connection") == [b"close"]
    assert client.closing


# --- keep-alive and pipelining --------------------------------------------------------------


def test_second_request_reuses_the_backend_connection(proxy: Proxy) -> None:
    """Keep-alive on both sides: the next request on the client connection goes out on the
    pooled backend connection."""
    client, backend, _ = exchange(proxy, request(b"/1"), response(body=b"1"))
    client.send(request(b"/2"))
    assert proxy.pending_connects == 0
    assert status_line(backend.received()) == b"GET /2 HTTP/1.1"


def test_another_client_reuses_the_pooled_backend_connection(proxy: Proxy) -> None:
    """The pool is shared: a second client's request uses the first client's idle backend
    connection."""
    exchange(proxy, request(b"/1"), response(body=b"1"))
    other = proxy.connect("198.51.100.2")
    other.send(request(b"/2"))
    assert proxy.pending_connects == 0
    assert len(proxy.connects) == 1


def test_backend_connection_close_is_not_reused(proxy: Proxy) -> None:
    """A backend response with Connection: close keeps its connection out of the pool."""
    client, backend, _ = exchange(
        proxy, request(), response(headers=[b"Connection: close"], body=b"x")
    )
    client.send(request(b"/2"))
    assert proxy.pending_connects == 1
    assert backend.received() == b""


def test_stale_idle_backend_connection_is_not_reused(proxy: Proxy) -> None:
    """A connection idle longer than the pool's limit is closed instead of used."""
    client, backend, _ = exchange(proxy, request(), response(body=b"x"))
    proxy.clock.advance(IDLE_SECONDS + 0.1)
    client.send(request(b"/2"))
    assert proxy.pending_connects == 1
    assert backend.closing


def test_pipelined_requests_are_answered_in_order(proxy: Proxy) -> None:
    """Pipelined requests go to the backend one at a time and their answers come back in order."""
    client = proxy.connect()
    backend, sent = forwarded(proxy, client, request(b"/1") + request(b"/2"))
    assert status_line(sent) == b"GET /1 HTTP/1.1"
    assert backend.received() == b""  # the second waits for the first
    assert client.reading_paused
    backend.send(response(body=b"one"))
    assert client.received().endswith(b"one")
    assert status_line(backend.received()) == b"GET /2 HTTP/1.1"
    backend.send(response(body=b"two"))
    assert client.received().endswith(b"two")
    assert not client.reading_paused


def test_pipelined_requests_keep_their_own_methods(proxy: Proxy) -> None:
    """Each pipelined request is forwarded with its own method, whatever was parsed after it."""
    client = proxy.connect()
    backend, _ = forwarded(
        proxy, client, request(b"/1") + request(b"/2", method=b"HEAD") + request(b"/3")
    )
    backend.send(response(body=b"one"))
    assert status_line(backend.received()) == b"HEAD /2 HTTP/1.1"


def test_pipelined_http10_request_is_answered_as_http10(proxy: Proxy) -> None:
    """A pipelined HTTP/1.0 request gets a response an HTTP/1.0 client can read (no chunked
    framing), even when an HTTP/1.1 request was parsed after it."""
    client = proxy.connect()
    backend, _ = forwarded(
        proxy,
        client,
        request(b"/1") + request(b"/2", version=b"HTTP/1.0") + request(b"/3"),
    )
    backend.send(response(body=b"1"))
    client.received()
    backend.received()
    backend.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\n")
    got = client.received()
    assert header_values(got, b"Transfer-Encoding") == []
    assert got.endswith(b"\r\n\r\ntwo")


def test_pipelined_requests_keep_their_own_connection_semantics(proxy: Proxy) -> None:
    """A pipelined keep-alive request is not closed because a later one says Connection: close."""
    client = proxy.connect()
    backend, _ = forwarded(
        proxy,
        client,
        request(b"/1") + request(b"/2") + request(b"/3", headers=[b"Connection: close"]),
    )
    backend.send(response(body=b"1"))
    backend.received()
    backend.send(response(body=b"2"))
    assert status_line(backend.received()) == b"GET /3 HTTP/1.1"


def test_pipelined_request_never_gets_bytes_that_followed_the_previous_response(
    proxy: Proxy,
) -> None:
    """An unrequested response after the first one in the same backend read is not taken as
    the answer to the next pipelined request: that request goes out on a fresh connection and
    gets its own answer (no response desync)."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, request(b"/one") + request(b"/two"))
    backend.send(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n\xc3\xa9!"
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL"
    )
    assert client.received() == b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n\xc3\xa9!"
    assert backend.received() == b""
    assert backend.aborted
    fresh = proxy.accept()
    assert status_line(fresh.received()) == b"GET /two HTTP/1.1"
    fresh.send(response(body=b"two"))
    got = client.received()
    assert got == b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo"


# --- requests that must not pass ------------------------------------------------------------

SMUGGLING = {
    "content-length with transfer-encoding": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n"
    ),
    "differing content-length": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
    ),
    "repeated content-length": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
    ),
    "content-length list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
    "signed content-length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
    "unknown transfer coding": (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"),
    "identity transfer coding": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n"
    ),
    "chunked then identity": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
    ),
    "chunked twice in one header": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"
    ),
    "transfer-encoding repeated": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "xchunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n",
    "whitespace before colon": b"GET / HTTP/1.1\r\nHost: a\r\nX-A : one\r\n\r\n",
    "whitespace before colon on transfer-encoding": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc"
    ),
    "bare LF line ends": b"GET / HTTP/1.1\nHost: a\n\n",
    "bare LF in a header": b"GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n",
    "bare CR in a value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n",
    "NUL in a value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n",
    "invalid character in a name": b"GET / HTTP/1.1\r\nHost: a\r\nX(A): b\r\n\r\n",
    "space in the target": b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
    "missing Host": b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n",
    "repeated Host": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "unknown version": b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
}


@pytest.mark.parametrize("data", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_ambiguous_request_gets_400_and_close_and_never_reaches_backend(
    proxy: Proxy, data: bytes
) -> None:
    """Each smuggling vector is answered 400 with Connection: close, the connection closes, and
    no backend connection is even opened."""
    client = proxy.connect()
    client.send(data)
    got = client.received()
    assert status_line(got) == b"HTTP/1.1 400 Bad Request"
    assert header_values(got, b"Connection") == [b"close"]
    assert client.closing
    assert proxy.connects == []


def test_ambiguous_request_sends_nothing_on_a_pooled_connection(proxy: Proxy) -> None:
    """With an idle backend connection ready, a rejected request still writes nothing to it."""
    _, backend, _ = exchange(proxy, request(), response(body=b"x"))
    other = proxy.connect()
    other.send(SMUGGLING["content-length with transfer-encoding"])
    assert status_line(other.received()) == b"HTTP/1.1 400 Bad Request"
    assert backend.received() == b""


def test_ambiguous_pipelined_request_never_reaches_backend(proxy: Proxy) -> None:
    """A smuggling attempt pipelined behind a good request is not forwarded; the good request is
    answered and the connection then closes."""
    client = proxy.connect()
    backend, sent = forwarded(
        proxy, client, request(b"/good") + SMUGGLING["content-length with transfer-encoding"]
    )
    assert status_line(sent) == b"GET /good HTTP/1.1"
    backend.send(response(body=b"ok"))
    assert client.received().endswith(b"ok")
    assert backend.received() == b""
    assert client.closing


def test_http10_request_with_transfer_encoding_closes_after(proxy: Proxy) -> None:
    """RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing; the
    connection must close after it, even if the client asked for keep-alive."""
    client = proxy.connect()
    backend, _ = forwarded(
        proxy,
        client,
        b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    backend.send(response(body=b"ok"))
    assert client.closing


def test_error_page_for_rejected_request_says_why(proxy: Proxy) -> None:
    """The 400 page is a short plain-text body with the reason, framed by Content-Length."""
    client = proxy.connect()
    client.send(SMUGGLING["missing Host"])
    lines, body = split_head(client.received())
    assert b"Content-Type: text/plain; charset=utf-8" in lines
    assert b"Content-Length: %d" % len(body) in lines
    assert body == b"400 Bad Request\n\nmissing Host header\n"


def test_oversized_head_in_one_read_gets_431() -> None:
    """A request head larger than --max-header-bytes is refused with 431, then the close."""
    proxy = Proxy(max_header_bytes=4096)
    client = proxy.connect()
    client.send(request(headers=[b"X-Big: " + b"a" * 5000]))
    got = client.received()
    assert status_line(got) == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert client.closing
    assert proxy.connects == []


def test_oversized_head_dribbled_in_gets_431_before_it_ends() -> None:
    """A head that keeps growing is refused once past the limit, without waiting for its end."""
    proxy = Proxy(max_header_bytes=4096)
    client = proxy.connect()
    client.send(b"GET / HTTP/1.1\r\nHost: a\r\n")
    for _ in range(50):
        client.send(b"X-Filler: " + b"f" * 100 + b"\r\n")
        if client.closing:
            break
    assert status_line(client.received()) == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert proxy.connects == []


def test_too_many_header_fields_get_431(proxy: Proxy) -> None:
    """More header fields than the limit are refused with 431, however small they are."""
    client = proxy.connect()
    client.send(request(headers=[b"X-%d: 1" % i for i in range(300)]))
    assert status_line(client.received()) == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert client.closing
    assert proxy.connects == []


def test_long_uri_gets_414(proxy: Proxy) -> None:
    """A request target over 16 KiB is refused with 414."""
    client = proxy.connect()
    client.send(request(b"/" + b"a" * (17 * 1024)))
    assert status_line(client.received()).startswith(b"HTTP/1.1 414 ")
    assert client.closing
    assert proxy.connects == []


def test_request_trailers_are_limited_like_a_head() -> None:
    """Trailers of a chunked request count against --max-header-bytes: a client cannot grow
    memory without bound by sending trailer fields forever."""
    proxy = Proxy(max_header_bytes=4096)
    client = proxy.connect()
    backend, _ = forwarded(
        proxy,
        client,
        request(method=b"POST", headers=[b"Transfer-Encoding: chunked"], body=b"0\r\n"),
    )
    for i in range(100):
        client.send(b"X-Trailer-%d: %s\r\n" % (i, b"t" * 100))
        if client.closing:
            break
    assert client.closing
    assert backend.received() == b""


def test_connect_method_gets_405(proxy: Proxy) -> None:
    """CONNECT is refused with 405: this is a reverse proxy, not a tunnel to anywhere."""
    client = proxy.connect()
    client.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert status_line(client.received()) == b"HTTP/1.1 405 Method Not Allowed"
    assert client.closing
    assert proxy.connects == []


def test_malformed_chunk_mid_body_aborts_both_sides(proxy: Proxy) -> None:
    """A broken chunk after the head was forwarded aborts the client and the backend connection,
    so the backend never sees a request completed by guesswork."""
    client = proxy.connect()
    backend, _ = forwarded(
        proxy,
        client,
        request(method=b"POST", headers=[b"Transfer-Encoding: chunked"], body=b"3\r\nabc\r\n"),
    )
    client.send(b"zz\r\n")
    assert client.aborted
    assert backend.aborted


# --- failures become statuses ---------------------------------------------------------------


def test_connect_refused_gets_502_naming_the_backend(proxy: Proxy) -> None:
    """A refused backend connection is a 502 whose page names the backend URL and says it is not
    answering; the client connection stays usable."""
    client = proxy.connect()
    client.send(request())
    proxy.refuse()
    lines, body = split_head(client.received())
    assert lines[0] == b"HTTP/1.1 502 Bad Gateway"
    assert b"http://127.0.0.1:8000" in body
    assert b"connection refused" in body
    assert not client.closing
    client.send(request(b"/again"))
    assert proxy.pending_connects == 1


def test_connect_timeout_is_passed_to_the_connection_attempt() -> None:
    """--connect-timeout bounds the TCP connection attempt to the backend."""
    proxy = Proxy(connect_timeout=2.5)
    proxy.connect().send(request())
    host, port, _factory, timeout, _bind = proxy.connects[0]
    assert (host, port, timeout) == ("127.0.0.1", 8000, 2.5)


def test_connect_timeout_gets_502_saying_so(proxy: Proxy) -> None:
    """A backend connection attempt that times out is a 502 that says it timed out."""
    from twisted.internet.error import TimeoutError as ConnectTimeout

    client = proxy.connect()
    client.send(request())
    proxy.refuse(ConnectTimeout())
    got = client.received()
    assert status_line(got) == b"HTTP/1.1 502 Bad Gateway"
    assert b"connection timed out" in got


def test_head_request_502_has_no_body(proxy: Proxy) -> None:
    """An error answer to HEAD carries no body, or the client would read it as the next response."""
    client = proxy.connect()
    client.send(request(method=b"HEAD"))
    proxy.refuse()
    lines, body = split_head(client.received())
    assert lines[0] == b"HTTP/1.1 502 Bad Gateway"
    assert body == b""


def test_head_request_504_has_no_body(proxy: Proxy) -> None:
    """A 504 answering HEAD carries no body either."""
    client = proxy.connect()
    forwarded(proxy, client, request(method=b"HEAD"))
    proxy.clock.advance(BACKEND_TIMEOUT + 1)
    lines, body = split_head(client.received())
    assert lines[0] == b"HTTP/1.1 504 Gateway Timeout"
    assert body == b""


def test_backend_closing_before_answering_gets_502(proxy: Proxy) -> None:
    """A fresh backend connection closed without a response is a 502 that says so."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, request())
    backend.close()
    got = client.received()
    assert status_line(got) == b"HTTP/1.1 502 Bad Gateway"
    assert b"closed the connection without answering" in got
    assert proxy.pending_connects == 0  # a fresh connection is not retried


def test_bodyless_request_on_reused_connection_is_retried_once(proxy: Proxy) -> None:
    """A pooled connection the backend had closed meanwhile costs a bodyless request nothing:
    it is sent again on a new connection."""
    client, first, _ = exchange(proxy, request(b"/1"), response(body=b"1"))
    client.send(request(b"/2"))
    first.received()
    first.close()
    second = proxy.accept()
    assert status_line(second.received()) == b"GET /2 HTTP/1.1"
    second.send(response(body=b"two"))
    assert client.received().endswith(b"\r\n\r\ntwo")


def test_retry_happens_only_once(proxy: Proxy) -> None:
    """If the retried request's new connection also closes unanswered, the client gets 502."""
    client, first, _ = exchange(proxy, request(b"/1"), response(body=b"1"))
    client.send(request(b"/2"))
    first.close()
    second = proxy.accept()
    second.close()
    assert status_line(client.received()) == b"HTTP/1.1 502 Bad Gateway"
    assert proxy.pending_connects == 0


def test_request_with_body_on_reused_connection_is_not_retried(proxy: Proxy) -> None:
    """A request with a body is never sent twice: its unanswered close is a 502."""
    client, first, _ = exchange(proxy, request(b"/1"), response(body=b"1"))
    client.send(request(b"/2", method=b"POST", headers=[b"Content-Length: 2"], body=b"hi"))
    first.close()
    assert status_line(client.received()) == b"HTTP/1.1 502 Bad Gateway"
    assert proxy.pending_connects == 0


def test_slow_backend_gets_504_after_backend_timeout(proxy: Proxy) -> None:
    """No response head within --backend-timeout is a 504, and the backend connection is dropped."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, request())
    proxy.clock.advance(BACKEND_TIMEOUT - 1)
    assert client.received() == b""
    proxy.clock.advance(1.5)
    got = client.received()
    assert status_line(got) == b"HTTP/1.1 504 Gateway Timeout"
    assert b"--backend-timeout" in got
    assert backend.aborted


def test_steady_response_outlasting_backend_timeout_is_not_cut(proxy: Proxy) -> None:
    """--backend-timeout is time without progress: a response that keeps coming may take longer."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, request())
    backend.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(4):
        proxy.clock.advance(BACKEND_TIMEOUT / 2)
        backend.send(b"1\r\nx\r\n")
    backend.send(b"0\r\n\r\n")
    assert not client.aborted
    assert client.received().endswith(b"1\r\nx\r\n0\r\n\r\n")


def test_steady_upload_outlasting_backend_timeout_is_not_cut(proxy: Proxy) -> None:
    """An upload that keeps coming is not answered 504 while the backend waits for its end."""
    client = proxy.connect()
    backend, _ = forwarded(
        proxy, client, request(method=b"PUT", headers=[b"Content-Length: 4"], body=b"a")
    )
    for part in (b"b", b"c", b"d"):
        proxy.clock.advance(BACKEND_TIMEOUT / 2)
        client.send(part)
    assert client.received() == b""
    assert backend.received() == b"bcd"


def test_backend_stalling_mid_response_aborts_the_client(proxy: Proxy) -> None:
    """A response that stops making progress for --backend-timeout after its head is cut off by
    aborting the client, so the truncation shows."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, request())
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    proxy.clock.advance(BACKEND_TIMEOUT + 1)
    assert client.aborted
    assert backend.aborted


def test_backend_dying_mid_response_aborts_the_client(proxy: Proxy) -> None:
    """A backend that dies after the response head has gone out gets the client aborted, never a
    silently short body."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, request())
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    backend.die()
    assert client.aborted


def test_truncation_resets_tcp_under_tls(proxy: Proxy) -> None:
    """A cut-short response resets the TCP connection itself: a TLS close_notify would tell the
    client that the truncated body ended cleanly."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, request())
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    backend.die()
    assert client.reset
    assert not client.transport.disconnecting  # TLS was not asked to close (and send close_notify)
    proxy.clock.advance(0)
    assert proxy.closed == [client.protocol]


def test_backend_dying_mid_chunked_response_aborts_the_client(proxy: Proxy) -> None:
    """The same for a chunked response: no last chunk is made up, the client is aborted."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, request())
    backend.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    backend.close()
    assert client.aborted
    assert not client.received().endswith(b"0\r\n\r\n")


def test_malformed_backend_response_gets_502(proxy: Proxy) -> None:
    """A backend that does not speak HTTP gets the client a 502 and loses its connection."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, request())
    backend.send(b"SSH-2.0-OpenSSH_9.6\r\n")
    got = client.received()
    assert status_line(got) == b"HTTP/1.1 502 Bad Gateway"
    assert b"malformed response" in got
    assert backend.aborted


def test_backend_response_with_length_and_chunked_gets_502(proxy: Proxy) -> None:
    """A backend response framed both ways is not passed on (the client could be desynchronised)."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, request())
    backend.send(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    )
    got = client.received()
    assert status_line(got) == b"HTTP/1.1 502 Bad Gateway"
    assert b"hello" not in got


def test_backend_response_with_a_coding_under_chunked_gets_502(proxy: Proxy) -> None:
    """Transfer-Encoding: gzip, chunked is not de-chunked into gzip the client was not told
    about: 502, saying only chunked is passed on."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, request())
    backend.send(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    lines, body = split_head(client.received())
    assert lines[0] == b"HTTP/1.1 502 Bad Gateway"
    assert b"'gzip, chunked'" in body
    assert b"only chunked" in body
    assert b"hello" not in body
    assert backend.aborted


def test_unrequested_switching_protocols_gets_502_and_drops_the_connection(
    proxy: Proxy,
) -> None:
    """A 101 to a request that did not ask to upgrade is not passed on (the client would stop
    speaking HTTP): the client gets 502 and the connection is not pooled."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, request())
    backend.send(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
    )
    got = client.received()
    assert status_line(got) == b"HTTP/1.1 502 Bad Gateway"
    assert b"HTTP/1.1 101" not in got
    assert header_values(got, b"Upgrade") == []
    assert backend.aborted
    proxy.connect("198.51.100.2").send(request(b"/next"))
    assert proxy.pending_connects == 1


def test_backend_bytes_after_a_complete_response_close_that_connection(proxy: Proxy) -> None:
    """Bytes from a backend connection that has no request outstanding make it unusable."""
    client, backend, _ = exchange(proxy, request(), response(body=b"x"))
    backend.send(b"HTTP/1.1 200 OK\r\n")
    assert backend.closing
    proxy.clock.advance(0)
    client.send(request(b"/2"))
    assert proxy.pending_connects == 1


# --- back-pressure --------------------------------------------------------------------------


def test_slow_client_pauses_the_backend(proxy: Proxy) -> None:
    """When the client's transport pauses us, the backend connection stops being read; resuming
    resumes it."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, request())
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst")
    client.protocol.pauseProducing()
    assert backend.reading_paused
    client.protocol.resumeProducing()
    assert not backend.reading_paused


def test_client_paused_while_connecting_pauses_new_backend_connection(proxy: Proxy) -> None:
    """A client that is not reading when the backend connection is made gets it paused at once."""
    client = proxy.connect()
    client.send(request())
    client.protocol.pauseProducing()
    backend = proxy.accept()
    assert backend.reading_paused


def test_slow_backend_pauses_the_client(proxy: Proxy) -> None:
    """When the backend's transport pauses us, the client stops being read; resuming resumes it."""
    client = proxy.connect()
    backend, _ = forwarded(
        proxy, client, request(method=b"POST", headers=[b"Content-Length: 100"], body=b"x")
    )
    backend.connection.pauseProducing()
    assert client.reading_paused
    backend.connection.resumeProducing()
    assert not client.reading_paused


def test_client_not_reading_its_response_is_dropped_after_idle_timeout(proxy: Proxy) -> None:
    """A client that stops reading mid-response is aborted after --idle-timeout, not kept."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, request())
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst")
    client.protocol.pauseProducing()
    proxy.clock.advance(BACKEND_TIMEOUT + 1)  # no backend timeout while the client is the slow one
    assert not client.aborted
    proxy.clock.advance(IDLE_TIMEOUT)
    assert client.aborted


# --- timeouts on the client side ------------------------------------------------------------


def test_incomplete_head_gets_408_after_header_timeout(proxy: Proxy) -> None:
    """A request head still incomplete after --header-timeout gets 408 and the connection closes."""
    client = proxy.connect()
    client.send(b"GET / HTTP/1.1\r\nHost: a\r\n")
    proxy.clock.advance(HEADER_TIMEOUT - 1)
    assert not client.closing
    proxy.clock.advance(1.5)
    assert status_line(client.received()) == b"HTTP/1.1 408 Request Timeout"
    assert client.transport.disconnecting
    assert not client.aborted
    assert proxy.connects == []


def test_dribbling_head_is_not_extended_by_each_byte(proxy: Proxy) -> None:
    """A head sent a byte at a time still has only --header-timeout in all (slowloris)."""
    client = proxy.connect()
    client.send(b"GET / HTTP/1.1\r\n")
    for _ in range(int(HEADER_TIMEOUT) + 2):
        proxy.clock.advance(1)
        if client.closing:
            break
        client.send(b"X")
    assert client.closing


def test_silent_connection_is_closed_cleanly_after_header_timeout(proxy: Proxy) -> None:
    """A connection that never sends a byte is closed after --header-timeout with TLS
    close_notify, not reset, and without a 408 for a request it never began."""
    client = proxy.connect()
    proxy.clock.advance(HEADER_TIMEOUT - 1)
    assert not client.closing
    proxy.clock.advance(1.5)
    assert client.transport.disconnecting
    assert not client.aborted
    assert client.received() == b""


def test_idle_keep_alive_connection_is_closed_cleanly_after_idle_timeout(proxy: Proxy) -> None:
    """Between requests, a connection is kept for --idle-timeout and then closed with TLS
    close_notify (a clean end the client can tell from a failure), not reset."""
    client, _, _ = exchange(proxy, request(), response(body=b"x"))
    proxy.clock.advance(IDLE_TIMEOUT - 1)
    assert not client.closing
    proxy.clock.advance(1.5)
    assert client.transport.disconnecting
    assert not client.aborted
    assert client.received() == b""


def test_request_body_stalling_past_backend_timeout_gets_408(proxy: Proxy) -> None:
    """A client that stops sending its announced body is the slow one: after --backend-timeout
    it gets 408 (not a 504 blaming the backend), the connection closes and the half-sent
    request is abandoned at the backend."""
    client = proxy.connect()
    backend, _ = forwarded(
        proxy,
        client,
        request(method=b"POST", headers=[b"Content-Length: 100"], body=b"x" * 10),
    )
    proxy.clock.advance(BACKEND_TIMEOUT - 1)
    assert client.received() == b""
    proxy.clock.advance(1.5)
    got = client.received()
    assert status_line(got) == b"HTTP/1.1 408 Request Timeout"
    assert header_values(got, b"Connection") == [b"close"]
    assert client.transport.disconnecting
    assert not client.aborted
    assert backend.aborted


def test_closed_connection_is_reported_and_untracked(proxy: Proxy) -> None:
    """When a client connection ends, the factory's callback hears of it once."""
    client = proxy.connect()
    client.leave()
    assert proxy.closed == [client.protocol]


# --- the client going away ------------------------------------------------------------------


def test_client_leaving_mid_response_aborts_the_backend_connection(proxy: Proxy) -> None:
    """A client gone mid-exchange takes its backend connection down with it, out of the pool."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, request())
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst")
    client.leave()
    assert backend.aborted
    proxy.clock.advance(0)
    proxy.connect().send(request())
    assert proxy.pending_connects == 1


def test_client_leaving_while_connecting_pools_the_new_connection(proxy: Proxy) -> None:
    """A connection made for a client that has left is kept for the next request, unused."""
    client = proxy.connect()
    client.send(request())
    client.leave()
    backend = proxy.accept()
    assert backend.received() == b""
    assert not backend.closing
    proxy.connect().send(request(b"/next"))
    assert proxy.pending_connects == 0
    assert status_line(backend.received()) == b"GET /next HTTP/1.1"


def test_connect_failure_after_client_left_writes_nothing(proxy: Proxy) -> None:
    """A backend that refuses after the client has gone produces no 502 for nobody."""
    client = proxy.connect()
    client.send(request())
    client.leave()
    proxy.refuse()
    assert client.transport.late_writes == []


# --- the access log -------------------------------------------------------------------------


def test_each_exchange_is_logged_in_combined_log_format() -> None:
    """A proxied request leaves one Combined Log Format line with its status and body size."""
    proxy = Proxy(log_access=True)
    client = proxy.connect()
    backend, _ = forwarded(
        proxy,
        client,
        request(b"/page?x=1", headers=[b"Referer: https://ref.example/", b"User-Agent: curl/8"]),
    )
    proxy.clock.advance(1)
    backend.send(response(b"201 Created", body=b"12345"))
    assert proxy.log_lines() == [
        '203.0.113.7 - - [01/Jun/2026:12:00:01 +0000] "GET /page?x=1 HTTP/1.1" 201 5 '
        '"https://ref.example/" "curl/8"'
    ]


def test_error_statuses_are_logged_with_their_body_size() -> None:
    """A 502 is logged as 502 with the size of the error page's body, not of the whole response."""
    proxy = Proxy(log_access=True)
    client = proxy.connect()
    client.send(request())
    proxy.refuse()
    _, body = split_head(client.received())
    [line] = proxy.log_lines()
    assert f'"GET / HTTP/1.1" 502 {len(body)} "-" "-"' in line


# --- upgrades (websockets and any other protocol switch) ------------------------------------

WEBSOCKET_HEADERS = [
    b"Connection: keep-alive, Upgrade",
    b"Upgrade: websocket",
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    b"Sec-WebSocket-Version: 13",
    b"Sec-WebSocket-Protocol: chat, superchat",
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
    b"Origin: https://example.com",
]
WEBSOCKET_REQUEST = request(b"/ws", headers=WEBSOCKET_HEADERS)
SWITCHED = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    b"Sec-WebSocket-Protocol: chat\r\n"
    b"\r\n"
)
CLIENT_FRAME = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"  # masked text "Hello"
BACKEND_FRAME = b"\x81\x05Hello"  # unmasked text "Hello"


def tunnel_idle(seconds: float) -> Proxy:
    """A proxy whose upgraded connections close after ``seconds`` of silence."""
    from dataclasses import replace

    proxy = Proxy()
    proxy.settings = replace(proxy.settings, tunnel_idle_timeout=seconds)
    return proxy


def tunnel(proxy: Proxy, *, client_extra: bytes = b"") -> tuple[Client, Backend]:
    """A websocket through ``proxy``: the 101 has been passed on and read by the client."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, WEBSOCKET_REQUEST + client_extra)
    backend.send(SWITCHED)
    assert status_line(client.received()) == b"HTTP/1.1 101 Switching Protocols"
    return client, backend


def test_upgrade_request_reaches_the_backend_asking_the_same(proxy: Proxy) -> None:
    """A websocket request reaches the backend with ``Connection: Upgrade`` and ``Upgrade:
    websocket``, and its Sec-WebSocket-* and Origin headers unchanged and in order."""
    client = proxy.connect()
    _, sent = forwarded(proxy, client, WEBSOCKET_REQUEST)
    assert status_line(sent) == b"GET /ws HTTP/1.1"
    assert header_values(sent, b"Connection") == [b"Upgrade"]
    assert header_values(sent, b"Upgrade") == [b"websocket"]
    lines, body = split_head(sent)
    passed = [line for line in lines if line.startswith((b"Sec-WebSocket-", b"Origin:"))]
    assert passed == WEBSOCKET_HEADERS[2:]
    assert header_values(sent, b"Content-Length") == []
    assert header_values(sent, b"X-Forwarded-Proto") == [b"https"]
    assert body == b""


def test_any_upgrade_token_is_passed_on(proxy: Proxy) -> None:
    """An Upgrade other than websocket is asked of the backend just the same."""
    client = proxy.connect()
    _, sent = forwarded(
        proxy, client, request(headers=[b"Connection: upgrade", b"Upgrade: example/1, tls/1.3"])
    )
    assert header_values(sent, b"Upgrade") == [b"example/1, tls/1.3"]
    assert header_values(sent, b"Connection") == [b"Upgrade"]


def test_101_reaches_the_client_saying_what_the_connection_becomes(proxy: Proxy) -> None:
    """The client gets the backend's 101 with ``Connection: Upgrade``, the backend's Upgrade
    and Sec-WebSocket-* headers, and no body framing."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, WEBSOCKET_REQUEST)
    backend.send(SWITCHED)
    got = client.received()
    lines, rest = split_head(got)
    assert lines[0] == b"HTTP/1.1 101 Switching Protocols"
    assert header_values(got, b"Connection") == [b"Upgrade"]
    assert header_values(got, b"Upgrade") == [b"websocket"]
    assert header_values(got, b"Sec-WebSocket-Accept") == [b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="]
    assert header_values(got, b"Sec-WebSocket-Protocol") == [b"chat"]
    assert header_values(got, b"Content-Length") == []
    assert header_values(got, b"Transfer-Encoding") == []
    assert rest == b""


def test_101_without_connection_upgrade_still_switches(proxy: Proxy) -> None:
    """A backend 101 that names Upgrade but forgets ``Connection: upgrade`` still switches, and
    the client is told ``Connection: Upgrade`` all the same."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, WEBSOCKET_REQUEST)
    backend.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n" + BACKEND_FRAME)
    got = client.received()
    assert header_values(got, b"Connection") == [b"Upgrade"]
    assert split_head(got)[1] == BACKEND_FRAME
    client.send(CLIENT_FRAME)
    assert backend.received() == CLIENT_FRAME


def test_after_101_bytes_pass_both_ways_untouched(proxy: Proxy) -> None:
    """After the switch, each read from either side reaches the other byte for byte, in order,
    however much it looks like HTTP."""
    client, backend = tunnel(proxy)
    client.send(CLIENT_FRAME)
    assert backend.received() == CLIENT_FRAME
    backend.send(BACKEND_FRAME)
    assert client.received() == BACKEND_FRAME
    client.send(b"GET / HTTP/1.1\r\n\r\n")
    client.send(b"\x00\xff" * 1000)
    assert backend.received() == b"GET / HTTP/1.1\r\n\r\n" + b"\x00\xff" * 1000
    backend.send(b"HTTP/1.1 200 OK\r\n\r\n")
    backend.send(b"\r\n0\r\n")
    assert client.received() == b"HTTP/1.1 200 OK\r\n\r\n\r\n0\r\n"
    assert proxy.pending_connects == 0


def test_backend_bytes_in_the_same_read_as_the_101_follow_it(proxy: Proxy) -> None:
    """Frames the backend sent in the same read as its 101 reach the client right after the
    101 head, not lost and not parsed as HTTP."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, WEBSOCKET_REQUEST)
    backend.send(SWITCHED + BACKEND_FRAME + b"HTTP/1.1 200 OK\r\n\r\n")
    _, rest = split_head(client.received())
    assert rest == BACKEND_FRAME + b"HTTP/1.1 200 OK\r\n\r\n"


def test_client_bytes_right_after_its_request_wait_for_the_switch(proxy: Proxy) -> None:
    """Bytes the client sent right behind its upgrade request are neither parsed as HTTP nor
    sent before the backend agreed; after the 101 they reach the backend first."""
    client = proxy.connect()
    backend, sent = forwarded(proxy, client, WEBSOCKET_REQUEST + CLIENT_FRAME)
    assert split_head(sent)[1] == b""
    backend.send(SWITCHED)
    assert backend.received() == CLIENT_FRAME
    got = client.received()
    assert status_line(got) == b"HTTP/1.1 101 Switching Protocols"
    assert got.count(b"HTTP/1.1 ") == 1  # no error page for the frame
    client.send(b"next")
    assert backend.received() == b"next"


def test_client_bytes_in_a_later_read_before_the_101_reach_the_backend(proxy: Proxy) -> None:
    """Bytes the client sent after its upgrade request but in a read of their own (TLS hands
    over every record of a TCP read, even after reading was paused) reach the backend after the
    101, and the tunnel then reads the client again."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, WEBSOCKET_REQUEST)
    client.send(CLIENT_FRAME)
    assert backend.received() == b""
    backend.send(SWITCHED)
    assert status_line(client.received()) == b"HTTP/1.1 101 Switching Protocols"
    assert backend.received() == CLIENT_FRAME
    assert not client.reading_paused


def test_client_is_not_read_until_the_backend_answers_the_upgrade(proxy: Proxy) -> None:
    """While the backend has not answered an upgrade request the client is not read (what it
    sends next is not HTTP); after the 101 it is read again."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, WEBSOCKET_REQUEST)
    assert client.reading_paused
    backend.send(SWITCHED)
    assert not client.reading_paused


def test_client_not_reading_the_tunnel_pauses_the_backend(proxy: Proxy) -> None:
    """In the tunnel, when the client's transport pauses us the backend is not read; resuming
    the client resumes the backend."""
    client, backend = tunnel(proxy)
    client.protocol.pauseProducing()
    assert backend.reading_paused
    client.protocol.resumeProducing()
    assert not backend.reading_paused


def test_backend_not_reading_the_tunnel_pauses_the_client(proxy: Proxy) -> None:
    """In the tunnel, when the backend's transport pauses us the client is not read; resuming
    the backend resumes the client."""
    client, backend = tunnel(proxy)
    backend.connection.pauseProducing()
    assert client.reading_paused
    backend.connection.resumeProducing()
    assert not client.reading_paused


@pytest.mark.parametrize(
    "answer",
    [
        response(b"400 Bad Request", body=b"not a websocket endpoint"),
        response(b"200 OK", body=b"plain page"),
        response(b"403 Forbidden", headers=[b"Transfer-Encoding: chunked"], content_length=False)
        + b"4\r\nnope\r\n0\r\n\r\n",
    ],
    ids=["400", "200", "403-chunked"],
)
def test_refused_upgrade_is_answered_and_the_connection_stays_http(
    proxy: Proxy, answer: bytes
) -> None:
    """A backend that answers an upgrade request with anything but 101 has that response passed
    on, and the same client connection then carries an ordinary request to the backend."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, WEBSOCKET_REQUEST)
    backend.send(answer)
    got = client.received()
    expected_status = answer.split(b"\r\n", 1)[0]
    assert status_line(got) == expected_status
    assert header_values(got, b"Upgrade") == []
    assert not client.closing
    assert not client.reading_paused
    client.send(request(b"/next"))
    assert status_line(backend.received()) == b"GET /next HTTP/1.1"
    backend.send(response(body=b"next page"))
    assert client.received().endswith(b"\r\n\r\nnext page")
    assert proxy.pending_connects == 0


def test_request_sent_behind_a_refused_upgrade_is_served_as_http(proxy: Proxy) -> None:
    """A request the client sent in the same read right behind a refused upgrade request is
    parsed as HTTP once the refusal has gone out, and answered on the same connection."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, WEBSOCKET_REQUEST + request(b"/after"))
    backend.send(response(b"426 Upgrade Required", body=b"no"))
    assert status_line(backend.received()) == b"GET /after HTTP/1.1"
    backend.send(response(body=b"after"))
    got = client.received()
    assert got.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    assert got.endswith(b"\r\n\r\nafter")
    assert got.count(b"HTTP/1.1 ") == 2


def test_connection_after_a_refused_upgrade_idles_for_idle_timeout(proxy: Proxy) -> None:
    """After a refused upgrade the connection is an ordinary idle keep-alive connection: kept
    for --idle-timeout (not --backend-timeout), then closed cleanly."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, WEBSOCKET_REQUEST)
    backend.send(response(b"403 Forbidden", body=b"no"))
    client.received()
    proxy.clock.advance(IDLE_TIMEOUT - 1)
    assert not client.closing
    proxy.clock.advance(1.5)
    assert client.transport.disconnecting
    assert not client.aborted


def test_101_without_upgrade_header_gets_502(proxy: Proxy) -> None:
    """A 101 that does not say what it switches to is not passed on: the client gets 502."""
    client = proxy.connect()
    backend, _ = forwarded(proxy, client, WEBSOCKET_REQUEST)
    backend.send(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\r\n")
    got = client.received()
    assert status_line(got) == b"HTTP/1.1 502 Bad Gateway"
    assert b"101" not in got.split(b"\r\n", 1)[0]
    assert backend.aborted


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_upgrade_request_with_a_body_gets_400_and_its_body_is_never_a_request(
    proxy: Proxy, chunked: bool
) -> None:
    """An upgrade request with a body is refused with 400 and close: nothing reaches the
    backend, and its body is not read as a request of its own (which would smuggle it past
    the checks)."""
    smuggled = request(b"/admin", host=b"internal")
    if chunked:
        framing = b"Transfer-Encoding: chunked"
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled)
    else:
        framing = b"Content-Length: %d" % len(smuggled)
        body = smuggled
    client = proxy.connect()
    client.send(
        request(
            b"/form",
            method=b"POST",
            headers=[b"Connection: Upgrade", b"Upgrade: websocket", framing],
            body=body,
        )
    )
    got = client.received()
    assert status_line(got) == b"HTTP/1.1 400 Bad Request"
    assert header_values(got, b"Connection") == [b"close"]
    assert got.count(b"HTTP/1.1 ") == 1
    assert client.closing
    assert proxy.connects == []


def test_http10_upgrade_request_is_forwarded_without_upgrade(proxy: Proxy) -> None:
    """HTTP/1.0 has no protocol switching: its Upgrade header is dropped, and a 101 to it is
    refused with 502."""
    client = proxy.connect()
    backend, sent = forwarded(
        proxy, client, request(headers=WEBSOCKET_HEADERS, version=b"HTTP/1.0")
    )
    assert header_values(sent, b"Upgrade") == []
    assert header_values(sent, b"Connection") == []
    backend.send(SWITCHED)
    got = client.received()
    assert b" 502 " in got.split(b"\r\n", 1)[0]
    assert header_values(got, b"Upgrade") == []


def test_h2c_upgrade_is_not_forwarded(proxy: Proxy) -> None:
    """``Upgrade: h2c`` (cleartext HTTP/2) means nothing over TLS: the backend gets a plain
    request without Upgrade or HTTP2-Settings, and the connection stays HTTP/1.1."""
    client = proxy.connect()
    backend, sent = forwarded(
        proxy,
        client,
        request(
            headers=[
                b"Connection: Upgrade, HTTP2-Settings",
                b"Upgrade: h2c",
                b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
            ]
        ),
    )
    assert header_values(sent, b"Upgrade") == []
    assert header_values(sent, b"Connection") == []
    assert header_values(sent, b"HTTP2-Settings") == []
    backend.send(response(body=b"h1"))
    assert client.received().endswith(b"\r\n\r\nh1")
    client.send(request(b"/next"))
    assert status_line(backend.received()) == b"GET /next HTTP/1.1"


def test_client_leaving_the_tunnel_closes_the_backend_cleanly(proxy: Proxy) -> None:
    """A client that goes away mid-tunnel has the backend connection closed (FIN after what was
    already written, not a reset), and that connection is never pooled."""
    client, backend = tunnel(proxy)
    client.send(CLIENT_FRAME)
    client.leave()
    assert backend.received() == CLIENT_FRAME
    assert backend.closing
    assert not backend.aborted
    proxy.clock.advance(0)
    assert backend.transport.lost is not None
    proxy.connect().send(request(b"/next"))
    assert proxy.pending_connects == 1


def test_backend_closing_the_tunnel_closes_the_client_with_close_notify(proxy: Proxy) -> None:
    """A backend that closes mid-tunnel has its last bytes delivered, then the client's
    connection closed with TLS close_notify (clean), not reset."""
    client, backend = tunnel(proxy)
    backend.send(b"\x88\x02\x03\xe8")  # a websocket close frame, code 1000
    backend.close()
    assert client.received() == b"\x88\x02\x03\xe8"
    assert client.transport.disconnecting
    assert not client.reset
    assert not client.aborted


def test_backend_dying_in_the_tunnel_closes_the_client(proxy: Proxy) -> None:
    """A backend connection reset mid-tunnel ends the client's connection too."""
    client, backend = tunnel(proxy)
    backend.die()
    assert client.closing
    proxy.clock.advance(0)
    assert client.transport.lost is not None


def test_backend_half_close_closes_the_client_but_still_forwards_its_bytes(proxy: Proxy) -> None:
    """A backend that stops sending (TCP half-close) gets the client's side closed with
    close_notify, while what the client still sends reaches the backend until the client ends,
    which then closes the backend."""
    client, backend = tunnel(proxy)
    backend.send(b"last from backend")
    backend.connection.readConnectionLost()
    assert client.received() == b"last from backend"
    assert client.transport.disconnecting
    assert not client.reset
    assert not backend.closing
    client.send(b"still from client")
    assert backend.received() == b"still from client"
    proxy.clock.advance(0)
    client.leave()
    assert backend.closing
    assert not backend.aborted


def test_silent_tunnel_is_closed_after_tunnel_idle_timeout() -> None:
    """With --tunnel-idle-timeout, a tunnel silent both ways that long is closed on both sides:
    the client with close_notify, the backend with FIN."""
    proxy = tunnel_idle(5.0)
    client, backend = tunnel(proxy)
    proxy.clock.advance(4)
    assert not client.closing
    proxy.clock.advance(1.5)
    assert client.transport.disconnecting
    assert not client.reset
    assert backend.closing
    assert not backend.aborted


@pytest.mark.parametrize("side", ["client", "backend"])
def test_traffic_either_way_postpones_tunnel_idle_timeout(side: str) -> None:
    """Each chunk, from the client or from the backend, starts the tunnel's idle time over."""
    proxy = tunnel_idle(5.0)
    client, backend = tunnel(proxy)
    for _ in range(4):
        proxy.clock.advance(4)
        if side == "client":
            client.send(CLIENT_FRAME)
        else:
            backend.send(BACKEND_FRAME)
    assert not client.closing
    proxy.clock.advance(4)
    assert not client.closing
    proxy.clock.advance(1.5)
    assert client.closing
    assert backend.closing


def test_tunnel_without_idle_timeout_outlives_every_other_timeout(proxy: Proxy) -> None:
    """Without --tunnel-idle-timeout (the default) a silent tunnel is never closed: neither
    --idle-timeout nor --backend-timeout applies to it."""
    client, backend = tunnel(proxy)
    proxy.clock.advance(IDLE_TIMEOUT + BACKEND_TIMEOUT + HEADER_TIMEOUT)
    proxy.clock.advance(24 * 3600)
    assert not client.closing
    assert not backend.closing


def test_back_pressure_in_the_tunnel_does_not_start_a_timeout(proxy: Proxy) -> None:
    """A tunnel whose client once paused and resumed reading is, once silent, still kept open
    without --tunnel-idle-timeout: back-pressure does not arm --backend-timeout on it."""
    client, backend = tunnel(proxy)
    backend.send(BACKEND_FRAME)
    client.protocol.pauseProducing()
    client.protocol.resumeProducing()
    proxy.clock.advance(BACKEND_TIMEOUT + 1)
    proxy.clock.advance(IDLE_TIMEOUT + 1)
    assert not client.closing
    assert not backend.closing


def test_client_not_reading_the_tunnel_is_dropped_after_idle_timeout(proxy: Proxy) -> None:
    """A client that stops reading the tunnel altogether is aborted after --idle-timeout, like
    one that stops reading a response, and the backend is closed."""
    client, backend = tunnel(proxy)
    client.protocol.pauseProducing()
    proxy.clock.advance(IDLE_TIMEOUT + 1)
    assert client.aborted
    proxy.clock.advance(0)
    assert backend.closing


def test_switched_request_is_logged_as_101() -> None:
    """The access log records the upgrade request with status 101 when the tunnel opens."""
    proxy = Proxy(log_access=True)
    client = proxy.connect()
    backend, _ = forwarded(
        proxy, client, request(b"/ws", headers=[*WEBSOCKET_HEADERS, b"User-Agent: ws/1"])
    )
    backend.send(SWITCHED)
    [line] = proxy.log_lines()
    assert line.endswith('"GET /ws HTTP/1.1" 101 - "-" "ws/1"')  # no body: size "-"
    client.send(CLIENT_FRAME)
    backend.send(BACKEND_FRAME)
    client.leave()
    proxy.clock.advance(0)
    assert len(proxy.log_lines()) == 1

"""tlsproxy.backend: where the backend is, and the keep-alive pool of connections to it."""

from __future__ import annotations

import errno

import pytest
from OpenSSL import SSL
from twisted.internet import error as net_error
from twisted.internet._sslverify import ClientTLSOptions
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from tests.unit.harness import (
    Backend,
    Client,
    MemoryTransport,
    Proxy,
    request,
    response,
    split_head,
)
from tests.unit.harness import address as net_address
from tlsproxy import backendpool as backend_module
from tlsproxy.backend import BackendAddress


def address(host: str) -> BackendAddress:
    return BackendAddress(url=f"http://{host}:8000", host=host, port=8000, path_prefix=b"")


def answered(proxy: Proxy, target: bytes = b"/") -> Backend:
    """One complete exchange on a new client connection; the backend connection it used."""
    client = proxy.connect()
    client.send(request(target))
    backend = proxy.accept()
    backend.received()
    backend.send(response(body=b"ok"))
    assert client.received().endswith(b"ok")
    return backend


# --- BackendAddress -------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "localhost."])
def test_localhost_means_both_loopback_addresses(host: str) -> None:
    """localhost is tried as 127.0.0.1 and then ::1, as browsers do."""
    assert address(host).candidates() == ["127.0.0.1", "::1"]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "app.internal"])
def test_other_hosts_are_tried_as_given(host: str) -> None:
    """Any other host is a single candidate."""
    assert address(host).candidates() == [host]


# --- connecting -----------------------------------------------------------------------------


def test_localhost_falls_back_to_ipv6_and_remembers_it() -> None:
    """A refused 127.0.0.1 is followed by ::1; the address that answered is tried first next."""
    proxy = Proxy(backend_url="http://localhost:8000")
    first = proxy.connect()
    first.send(request())
    proxy.refuse()
    assert [c[:2] for c in proxy.connects] == [("127.0.0.1", 8000), ("::1", 8000)]
    backend = proxy.accept()
    assert backend.received().startswith(b"GET / HTTP/1.1\r\n")
    proxy.connect().send(request(b"/concurrent"))  # the only connection is busy: a new one
    assert proxy.connects[-1][:2] == ("::1", 8000)


def test_concurrent_exchanges_each_try_both_localhost_addresses() -> None:
    """With the app only on ::1, an exchange whose 127.0.0.1 attempt is refused after another
    exchange found ::1 still goes on to try ::1, rather than 127.0.0.1 twice (each exchange
    keeps its own list of addresses to try)."""
    proxy = Proxy(backend_url="http://localhost:8000")
    a, b = proxy.connect(), proxy.connect("198.51.100.2")
    a.send(request(b"/a"))
    proxy.refuse()  # A's 127.0.0.1
    b.send(request(b"/b"))  # B starts with 127.0.0.1 too: ::1 has not answered yet
    assert [c[0] for c in proxy.connects] == ["127.0.0.1", "::1", "127.0.0.1"]
    backend_a = proxy.accept()  # A's ::1 answers: ::1 is now tried first
    assert backend_a.received().startswith(b"GET /a ")
    proxy.refuse()  # B's 127.0.0.1
    assert [c[0] for c in proxy.connects] == ["127.0.0.1", "::1", "127.0.0.1", "::1"]
    backend_b = proxy.accept()
    assert backend_b.received().startswith(b"GET /b ")
    backend_b.send(response(body=b"b"))
    assert b.received() == b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"


def test_localhost_with_nothing_listening_gets_502_naming_the_backend() -> None:
    """When both loopback addresses refuse, the client gets 502 naming the --backend URL."""
    proxy = Proxy(backend_url="http://localhost:8000")
    client = proxy.connect()
    client.send(request())
    proxy.refuse()
    proxy.refuse()
    lines, body = split_head(client.received())
    assert lines[0] == b"HTTP/1.1 502 Bad Gateway"
    assert b"http://localhost:8000" in body
    assert b"connection refused" in body


def test_host_name_backend_is_resolved_and_connected() -> None:
    """A backend given by name is resolved, then connected on the --backend port."""
    proxy = Proxy(backend_url="http://app.internal:9000")
    proxy.connect().send(request())
    proxy.clock.advance(0)
    assert [c[:2] for c in proxy.connects] == [("127.0.0.1", 9000)]
    assert proxy.accept().received().startswith(b"GET / HTTP/1.1\r\n")


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (net_error.ConnectionRefusedError(), b"connection refused"),
        (net_error.TimeoutError(), b"connection timed out"),
        (net_error.TCPTimedOutError(), b"connection timed out"),
        (net_error.DNSLookupError("app.internal"), b"host name not found"),
        (net_error.NoRouteError(), b"No route to host"),
    ],
)
def test_connect_failures_are_explained_in_the_502(error: Exception, said: bytes) -> None:
    """Each way a connection attempt fails is said plainly in the 502 page."""
    proxy = Proxy()
    client = proxy.connect()
    client.send(request())
    proxy.refuse(error)
    _, body = split_head(client.received())
    assert said in body
    assert body.count(b"\n") == 3  # status, blank line, one sentence: no traceback


def test_new_connection_is_a_tcp_nodelay_producer() -> None:
    """Backend connections disable Nagle and register for back-pressure on their transport."""
    proxy = Proxy()
    proxy.connect().send(request())
    backend = proxy.accept()
    assert backend.transport.tcp_no_delay
    assert backend.transport.producer is backend.connection
    assert backend.transport.streaming


# --- the pool -------------------------------------------------------------------------------


def test_idle_connections_are_reused_warmest_first() -> None:
    """Two idle connections: the one released last is handed out first (LIFO)."""
    proxy = Proxy()
    one, two = proxy.connect(), proxy.connect()
    one.send(request(b"/1"))
    two.send(request(b"/2"))
    first, second = proxy.accept(), proxy.accept()
    first.received()
    second.received()
    first.send(response(body=b"1"))
    second.send(response(body=b"2"))
    proxy.connect().send(request(b"/3"))
    assert proxy.pending_connects == 0
    assert first.received() == b""
    assert second.received().startswith(b"GET /3 ")


def test_idle_connection_closed_by_backend_is_forgotten() -> None:
    """A pooled connection the backend closes is dropped from the pool, not handed out."""
    proxy = Proxy()
    backend = answered(proxy)
    backend.close()
    proxy.connect().send(request(b"/2"))
    assert proxy.pending_connects == 1


def test_pool_keeps_at_most_its_limit_of_idle_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Connections released beyond the idle limit are closed instead of kept."""
    monkeypatch.setattr(backend_module, "MAX_IDLE_CONNECTIONS", 1)
    proxy = Proxy()
    one, two = proxy.connect(), proxy.connect()
    one.send(request(b"/1"))
    two.send(request(b"/2"))
    first, second = proxy.accept(), proxy.accept()
    first.send(response(body=b"1"))
    second.send(response(body=b"2"))
    assert not first.closing
    assert second.closing


def test_close_idle_closes_every_idle_connection() -> None:
    """Shutting down closes the idle connections cleanly."""
    proxy = Proxy()
    backend = answered(proxy)
    proxy.pool.close_idle()
    assert backend.closing
    assert not backend.aborted
    proxy.connect().send(request(b"/2"))
    assert proxy.pending_connects == 1


def test_connection_busy_with_one_exchange_is_not_shared() -> None:
    """A second exchange while the only connection is busy gets a connection of its own."""
    proxy = Proxy()
    proxy.connect().send(request(b"/1"))
    busy = proxy.accept()
    proxy.connect().send(request(b"/2"))
    assert proxy.pending_connects == 1
    assert busy.received().startswith(b"GET /1 ")


def test_connection_with_unfinished_request_is_not_pooled() -> None:
    """A response that ends before its request body does leaves its connection out of the pool."""
    proxy = Proxy()
    client = proxy.connect()
    client.send(request(method=b"POST", headers=[b"Content-Length: 10"], body=b"abc"))
    backend = proxy.accept()
    backend.send(response(b"413 Content Too Large", body=b""))
    assert backend.aborted
    assert client.closing


def test_stray_bytes_on_an_idle_connection_take_it_out_of_the_pool_at_once() -> None:
    """An idle connection that sends bytes nobody asked for is unusable from that moment: the
    next request gets a new connection even before the close has completed."""
    proxy = Proxy()
    backend = answered(proxy)
    backend.send(b"HTTP/1.1 200 OK\r\n")
    assert backend.closing
    client = proxy.connect("198.51.100.2")
    client.send(request(b"/2", method=b"POST", headers=[b"Content-Length: 2"], body=b"hi"))
    assert backend.received() == b""
    assert proxy.pending_connects == 1


# --- responses that do not fit their request (rule 1) ---------------------------------------


def test_body_longer_than_content_length_answers_the_client_and_drops_the_connection() -> None:
    """Bytes past a response's Content-Length (a common app bug) leave the client with exactly
    its response, not aborted, and keep that connection out of the pool: the next request goes
    on a new connection and is answered."""
    proxy = Proxy()
    client = proxy.connect()
    client.send(request(b"/one"))
    backend = proxy.accept()
    backend.received()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiX")
    assert client.received() == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    assert not client.closing
    assert backend.aborted
    other = proxy.connect("198.51.100.2")
    other.send(request(b"/two"))
    assert proxy.pending_connects == 1
    fresh = proxy.accept()
    assert split_head(fresh.received())[0][0] == b"GET /two HTTP/1.1"
    fresh.send(response(body=b"ok"))
    assert other.received() == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert backend.received() == b""


def test_two_responses_in_one_read_end_the_first_and_drop_the_connection() -> None:
    """A second, unrequested response in the same read as the first raises nothing into
    Twisted: the client gets exactly the first response and the connection is closed, not
    pooled."""
    proxy = Proxy()
    client = proxy.connect()
    client.send(request(b"/one"))
    backend = proxy.accept()
    # Called directly, not through the harness: an exception here would reach Twisted's reactor.
    backend.connection.dataReceived(response(body=b"a") + response(body=b"b"))
    assert client.received() == b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"
    assert not client.closing
    assert backend.aborted
    proxy.connect("198.51.100.2").send(request(b"/two"))
    assert proxy.pending_connects == 1


def test_head_response_followed_by_more_bytes_is_not_pooled() -> None:
    """Bytes after the head of a response to HEAD (a body it must not have) keep the connection
    out of the pool, and the client gets only the head."""
    proxy = Proxy()
    client = proxy.connect()
    client.send(request(method=b"HEAD"))
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    assert client.received() == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    assert backend.aborted
    proxy.connect("198.51.100.2").send(request(b"/two"))
    assert proxy.pending_connects == 1


# --- https:// and unix: backends -------------------------------------------------------------


def test_https_backend_is_tcp_wrapped_in_tls_around_the_same_attempt() -> None:
    """An https:// backend is a connectTCP on its port whose factory is TLS around the pool's
    own attempt (one parser path for both), with service-identity verification configured."""
    proxy = Proxy(backend_url="https://127.0.0.1:8443")
    proxy.connect().send(request())
    host, port, factory, *_ = proxy.connects[0]
    assert (host, port) == ("127.0.0.1", 8443)
    assert isinstance(factory, TLSMemoryBIOFactory)
    assert isinstance(factory.wrappedFactory, backend_module._Attempt)
    assert isinstance(proxy.pool._client_tls, ClientTLSOptions)


def handshake_failing(proxy: Proxy, reason: Exception) -> tuple[Client, int]:
    """Start one exchange to the https backend and fail its TLS handshake with ``reason``."""
    client = proxy.connect()
    client.send(request())
    _, _, factory, *_ = proxy.connects[0]
    connection = factory.wrappedFactory.buildProtocol(None)
    transport = MemoryTransport(
        clock=proxy.clock, host=net_address("127.0.0.1", 50000), peer=net_address("127.0.0.1", 8443)
    )
    transport.transport = MemoryTransport(  # type: ignore[attr-defined]
        clock=proxy.clock, host=net_address("127.0.0.1", 50000), peer=net_address("127.0.0.1", 8443)
    )
    connection.makeConnection(transport)
    assert transport.take() == b""  # nothing is sent before the handshake completes
    connection.connectionLost(Failure(reason))
    return client, len(proxy.connects)


def test_certificate_that_does_not_verify_is_a_final_502_saying_how_to_fix_it() -> None:
    """A chain that does not verify: 502 naming the URL and the name checked, with
    --backend-ca and --insecure-backend as the fixes; ::1 is not tried after it."""
    proxy = Proxy(backend_url="https://localhost:8443")
    error = SSL.Error([("SSL routines", "", "certificate verify failed")])
    client, connects = handshake_failing(proxy, error)
    lines, body = split_head(client.received())
    assert lines[0] == b"HTTP/1.1 502 Bad Gateway"
    assert b"https://localhost:8443 presented a certificate that did not verify for" in body
    assert b"--backend-ca PEM" in body
    assert b"--insecure-backend" in body
    assert connects == 1


def test_unix_backend_connects_to_its_socket_file_and_forwards() -> None:
    """A unix: backend is a connectUNIX to its path; the request goes through unchanged, with
    Host for HTTP/1.0 being localhost."""
    proxy = Proxy(backend_url="unix:/run/app.sock")
    client = proxy.connect()
    client.send(b"GET /x HTTP/1.0\r\n\r\n")
    assert [c[0] for c in proxy.clock.unixClients] == ["/run/app.sock"]
    assert proxy.connects == []
    factory = proxy.clock.unixClients[0][1]
    connection = factory.buildProtocol(None)
    transport = StringTransport()  # no setTcpNoDelay: a unix socket has no Nagle
    connection.makeConnection(transport)
    assert transport.value().startswith(b"GET /x HTTP/1.1\r\nHost: localhost\r\n")
    connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert client.received().endswith(b"ok")


def test_missing_unix_socket_is_explained() -> None:
    """A unix socket file that does not exist is said plainly in the 502."""
    proxy = Proxy(backend_url="unix:/run/app.sock")
    client = proxy.connect()
    client.send(request())
    factory = proxy.clock.unixClients[0][1]
    error = net_error.getConnectError((errno.ENOENT, "No such file or directory"))
    factory.clientConnectionFailed(None, Failure(error))
    _, body = split_head(client.received())
    assert b"unix:/run/app.sock: no socket file at that path" in body

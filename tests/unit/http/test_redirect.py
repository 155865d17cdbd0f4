"""--redirect-http: plain HTTP is answered with a 308 to the same URL over HTTPS."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from tlsproxy.http.redirect import RedirectFactory, redirect_answer


def _location(answer: bytes) -> bytes:
    (line,) = [ln for ln in answer.split(b"\r\n") if ln.lower().startswith(b"location:")]
    return line.split(b":", 1)[1].strip()


def test_redirect_keeps_host_and_target_and_names_the_tls_port() -> None:
    """GET /a?b=c with Host localhost:8080 → 308 to https://localhost:8443/a?b=c."""
    answer = redirect_answer(b"GET /a?b=c HTTP/1.1\r\nHost: localhost:8080\r\n\r\n", 8443)
    assert answer.startswith(b"HTTP/1.1 308 Permanent Redirect\r\n")
    assert _location(answer) == b"https://localhost:8443/a?b=c"
    assert b"Connection: close" in answer


def test_port_443_is_left_out() -> None:
    """The default HTTPS port is not written into the URL."""
    answer = redirect_answer(b"POST /form HTTP/1.1\r\nhost: example.test\r\n\r\n", 443)
    assert _location(answer) == b"https://example.test/form"


def test_ipv6_host_stays_bracketed() -> None:
    """A bracketed IPv6 Host keeps its brackets, so the URL stays valid."""
    answer = redirect_answer(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", 8443)
    assert _location(answer) == b"https://[::1]:8443/"


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET / HTTP/1.1\r\nHost: evil.test/x\r\n\r\n",  # not a host
        b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",  # not origin-form
    ],
)
def test_unusable_requests_get_400(head: bytes) -> None:
    """Without a usable Host and path there is no URL to send the client to: 400."""
    assert redirect_answer(head, 8443).startswith(b"HTTP/1.1 400 ")


def test_protocol_answers_once_and_closes() -> None:
    """A request head arriving in pieces gets one answer, then the connection closes."""
    clock = Clock()
    protocol = RedirectFactory(https_port=lambda: 9443, clock=clock, timeout=10).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)  # type: ignore[no-untyped-call]
    protocol.dataReceived(b"GET /x HTTP/1.1\r\nHo")
    assert transport.value() == b""
    protocol.dataReceived(b"st: localhost\r\n\r\n")
    assert _location(transport.value()) == b"https://localhost:9443/x"
    assert transport.disconnecting


def test_slow_or_huge_heads_are_dropped() -> None:
    """A head that never ends is cut at 8 KiB; one that never arrives at the timeout."""
    clock = Clock()
    factory = RedirectFactory(https_port=lambda: 9443, clock=clock, timeout=10)
    huge, slow = factory.buildProtocol(None), factory.buildProtocol(None)
    huge_transport, slow_transport = StringTransport(), StringTransport()
    huge.makeConnection(huge_transport)  # type: ignore[no-untyped-call]
    slow.makeConnection(slow_transport)  # type: ignore[no-untyped-call]
    huge.dataReceived(b"GET / HTTP/1.1\r\nX: " + b"a" * 9000)
    assert huge_transport.disconnecting
    assert huge_transport.value() == b""
    clock.advance(9)
    assert not slow_transport.disconnecting
    clock.advance(2)
    assert slow_transport.disconnecting

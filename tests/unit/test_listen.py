"""tlsproxy.listen: opening listeners, saying why one cannot open, and --max-connections."""

from __future__ import annotations

import errno
import os

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import CannotListenError
from twisted.internet.ssl import CertificateOptions
from twisted.internet.testing import MemoryReactor, RaisingMemoryReactor
from twisted.protocols.tls import TLSMemoryBIOFactory

from tests.unit.harness import MemoryTransport, Proxy, address
from tlsproxy.http.h1 import H1Connection
from tlsproxy.listen import FrontFactory, ListenError, listen_all, url_of
from tlsproxy.listenoptions import Listener


class Port:
    """A listening port as FrontFactory uses it: it can stop and start accepting."""

    def __init__(self, host: IPv4Address | IPv6Address | UNIXAddress) -> None:
        self.host = host
        self.reading = True

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True

    def getHost(self) -> IPv4Address | IPv6Address | UNIXAddress:
        return self.host


def factory(max_connections: int) -> tuple[Proxy, FrontFactory, Port]:
    proxy = Proxy()
    front = FrontFactory(proxy.settings, max_connections=max_connections)
    port = Port(IPv4Address("TCP", "127.0.0.1", 8443))
    front.ports = [port]  # type: ignore[list-item]
    return proxy, front, port


def open_connection(proxy: Proxy, front: FrontFactory) -> H1Connection:
    protocol = front.buildProtocol(address("203.0.113.7", 5000))
    transport = MemoryTransport(
        clock=proxy.clock, host=address("127.0.0.1", 8443), peer=address("203.0.113.7", 5000)
    )
    transport.protocol = protocol
    protocol.makeConnection(transport)  # type: ignore[no-untyped-call]
    return protocol


def test_accepting_stops_at_max_connections_and_resumes_below() -> None:
    """At --max-connections the ports stop accepting; one closing lets them accept again."""
    proxy, front, port = factory(2)
    first = open_connection(proxy, front)
    assert port.reading
    open_connection(proxy, front)
    assert not port.reading
    assert first.transport is not None
    first.transport.loseConnection()
    proxy.clock.advance(0)
    assert port.reading
    assert len(front.connections) == 1


@pytest.mark.parametrize(
    ("host", "url"),
    [
        (IPv4Address("TCP", "127.0.0.1", 8443), "https://127.0.0.1:8443/"),
        (IPv6Address("TCP", "::1", 8443), "https://[::1]:8443/"),
        pytest.param(
            UNIXAddress("/run/tlsproxy.sock"),
            "unix:/run/tlsproxy.sock",
        ),
    ],
)
def test_url_of_a_port_is_what_a_user_types(
    host: IPv4Address | IPv6Address | UNIXAddress, url: str
) -> None:
    """The banner shows each listener as a URL (IPv6 in brackets) or a unix path."""
    assert url_of(Port(host)) == url  # type: ignore[arg-type]


def tls() -> TLSMemoryBIOFactory:
    """What listen_all wraps each port in; no handshake happens in these tests."""
    return TLSMemoryBIOFactory(
        CertificateOptions(), False, FrontFactory(Proxy().settings, max_connections=10)
    )


def test_every_listener_is_opened() -> None:
    """Each listener description is opened on the reactor, in order."""
    reactor = MemoryReactor()
    ports = listen_all(
        reactor,
        [Listener("tcp:8443:interface=127.0.0.1"), Listener(r"tcp6:8443:interface=\:\:1")],
        tls(),
    )
    assert len(ports) == 2
    assert [(port, interface) for port, _f, _b, interface in reactor.tcpServers] == [
        (8443, "127.0.0.1"),
        (8443, "::1"),
    ]


def cannot_listen(code: int) -> RaisingMemoryReactor:
    error = CannotListenError("127.0.0.1", 8443, OSError(code, os.strerror(code)))
    return RaisingMemoryReactor(listenException=error)


def test_port_in_use_says_what_to_do() -> None:
    """A port in use is refused in one line that suggests another --port."""
    with pytest.raises(ListenError) as caught:
        listen_all(cannot_listen(errno.EADDRINUSE), [Listener("tcp:8443")], tls())
    message = str(caught.value)
    assert message.startswith("cannot listen on tcp:8443: address already in use")
    assert "pick another --port" in message


def test_privileged_port_says_what_to_do() -> None:
    """A port below 1024 without the right says how to get it."""
    with pytest.raises(ListenError) as caught:
        listen_all(cannot_listen(errno.EACCES), [Listener("tcp:443")], tls())
    assert "ports below 1024 need root or systemd socket activation" in str(caught.value)


def test_optional_listener_that_fails_is_skipped_but_not_all() -> None:
    """The default ::1 listener may fail on a host without IPv6; if nothing opens, that is fatal."""
    with pytest.raises(ListenError) as caught:
        listen_all(
            cannot_listen(errno.EADDRNOTAVAIL), [Listener("tcp6:8443", optional=True)], tls()
        )
    assert str(caught.value) == "no listener could be opened"


def test_invalid_description_is_named() -> None:
    """A --listen that Twisted cannot parse is refused naming the description."""
    with pytest.raises(ListenError) as caught:
        listen_all(MemoryReactor(), [Listener("tcp:notaport")], tls())
    assert str(caught.value).startswith("--listen 'tcp:notaport' is not valid")


def test_systemd_listener_without_an_inherited_socket_says_how_to_start_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--listen systemd:... outside socket activation is one line naming systemd's variables
    and the way to start it, not an IndexError traceback."""
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    monkeypatch.delenv("LISTEN_FDNAMES", raising=False)
    with pytest.raises(ListenError) as caught:
        listen_all(MemoryReactor(), [Listener("systemd:domain=INET:index=0")], tls())
    assert "LISTEN_FDS" in str(caught.value)
    assert "systemd-socket-activate" in str(caught.value)

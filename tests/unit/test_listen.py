"""tlsproxy.listen: opening listeners, saying why one cannot open, and --max-connections."""

from __future__ import annotations

import contextlib
import errno
import os
import ssl
from ipaddress import ip_network

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import CertificateOptions
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, RaisingMemoryReactor
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from tests.unit.harness import MemoryTransport, Proxy, address
from tlsproxy import proxyproto
from tlsproxy.config import Listener
from tlsproxy.http.h1 import H1Connection
from tlsproxy.listen import (
    FrontFactory,
    ListenError,
    ProxyHeaderFactory,
    ProxyHeaderReceiver,
    listen_all,
    memory_tls_factory,
    url_of,
    with_proxy_header,
)


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


# -- --proxy-protocol: the PROXY header before TLS ----------------------------------------------

SPEC_V1 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
BALANCER = "10.0.0.5"


class Recorder(Protocol):
    """Stands for the TLS layer: notes the peer it was given and every byte it receives."""

    def __init__(self) -> None:
        self.peer: object = None
        self.received = b""
        self.lost = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.peer = self.transport.getPeer()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True


class RecorderFactory(Factory):
    def __init__(self) -> None:
        self.built: list[Recorder] = []

    def buildProtocol(self, addr: object) -> Recorder:
        protocol = Recorder()
        self.built.append(protocol)
        return protocol


def header_factory(
    inner: IProtocolFactory,
) -> tuple[MemoryReactorClock, ProxyHeaderFactory]:
    """A --proxy-protocol listener's factory trusting 10.0.0.0/24, in front of ``inner``."""
    clock = MemoryReactorClock()
    factory = with_proxy_header(
        inner, trusted=(ip_network("10.0.0.0/24"),), clock=clock, timeout=10.0
    )
    return clock, factory


def connect(
    clock: MemoryReactorClock, factory: ProxyHeaderFactory, peer: str
) -> tuple[MemoryTransport, ProxyHeaderReceiver]:
    """A new connection from ``peer`` accepted by ``factory``."""
    transport = MemoryTransport(
        clock=clock, host=address("10.0.0.9", 8443), peer=address(peer, 40000)
    )
    receiver = factory.buildProtocol(address(peer, 40000))
    transport.protocol = receiver
    receiver.makeConnection(transport)  # type: ignore[no-untyped-call]
    return transport, receiver


def proxy_header(
    peer: str = BALANCER, *, inner: IProtocolFactory | None = None
) -> tuple[MemoryReactorClock, MemoryTransport, ProxyHeaderReceiver, RecorderFactory]:
    """A connection from ``peer`` to a --proxy-protocol listener trusting 10.0.0.0/24."""
    recorders = RecorderFactory()
    clock, factory = header_factory(inner or recorders)
    transport, receiver = connect(clock, factory, peer)
    return clock, transport, receiver, recorders


def test_trusted_peer_header_replaces_the_peer_for_the_layers_above() -> None:
    """After a header from a trusted balancer, getPeer() is the client the header names."""
    _, transport, _, recorders = proxy_header()
    transport.protocol.dataReceived(SPEC_V1)  # type: ignore[union-attr]
    [tls] = recorders.built
    assert tls.peer == IPv4Address("TCP", "192.168.0.1", 56324)
    assert transport.getPeer() == IPv4Address("TCP", "192.168.0.1", 56324)  # type: ignore[no-untyped-call]
    assert transport.protocol is tls  # the receiver stepped out of the read path
    assert not transport.disconnecting


def test_untrusted_peer_is_closed_without_reading_and_logged_once() -> None:
    """A peer outside --trusted-proxy is closed at once; a second one from it logs nothing."""
    recorders = RecorderFactory()
    clock, factory = header_factory(recorders)
    with capturedLogs() as events:
        transport, receiver = connect(clock, factory, "203.0.113.7")
        receiver.dataReceived(SPEC_V1)
        connect(clock, factory, "203.0.113.7")
        connect(clock, factory, "203.0.113.8")
    assert transport.disconnected  # aborted, not a polite close
    assert not recorders.built
    messages = [formatEvent(event) for event in events]
    assert len([m for m in messages if "203.0.113.7" in m]) == 1
    assert any("203.0.113.8" in m for m in messages)


def test_header_timeout_closes_the_connection() -> None:
    """No complete header within --header-timeout: the connection is aborted."""
    clock, transport, receiver, recorders = proxy_header()
    receiver.dataReceived(SPEC_V1[:10])
    clock.advance(9.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnected
    assert not recorders.built


def test_complete_header_cancels_the_timeout() -> None:
    """Once the header is in, the header timeout no longer applies (TLS has its own)."""
    clock, transport, receiver, _ = proxy_header()
    receiver.dataReceived(SPEC_V1)
    clock.advance(60)
    assert not transport.disconnecting
    assert not clock.getDelayedCalls()


def test_header_split_across_reads_and_bytes_after_it_reach_the_layer_above() -> None:
    """A header arriving a byte at a time is assembled; what follows it goes on, unchanged."""
    _, transport, _, recorders = proxy_header()
    data = SPEC_V1 + b"\x16\x03\x01client hello"
    for index in range(len(SPEC_V1) + 3):  # the header and the first bytes after it
        transport.protocol.dataReceived(data[index : index + 1])  # type: ignore[union-attr]
    transport.protocol.dataReceived(data[len(SPEC_V1) + 3 :])  # type: ignore[union-attr]
    [tls] = recorders.built
    assert tls.received == b"\x16\x03\x01client hello"
    assert transport.protocol is tls


def test_local_command_keeps_the_real_peer() -> None:
    """A v2 LOCAL header (a health check) leaves getPeer() the balancer's own address."""
    _, _, receiver, recorders = proxy_header()
    receiver.dataReceived(proxyproto.write_v2(None, None))
    [tls] = recorders.built
    assert tls.peer == address(BALANCER, 40000)


def test_invalid_header_closes_the_connection() -> None:
    """Bytes that are not a PROXY header (a TLS hello sent straight through) are refused."""
    _, transport, receiver, recorders = proxy_header()
    receiver.dataReceived(b"\x16\x03\x01\x02\x00")
    assert transport.disconnected
    assert not recorders.built


def test_connection_lost_after_hand_over_reaches_the_layer_above() -> None:
    """A transport that still calls the receiver passes data and loss on to the successor."""
    _, transport, receiver, recorders = proxy_header()
    transport.protocol = None  # as if the transport did not read .protocol again
    receiver.dataReceived(SPEC_V1 + b"abc")
    receiver.dataReceived(b"def")
    receiver.connectionLost(Failure(ConnectionDone()))
    [tls] = recorders.built
    assert tls.received == b"abcdef"
    assert tls.lost


def test_bytes_after_the_header_reach_real_tls() -> None:
    """With the real TLS layer above, a ClientHello after the header is answered by TLS."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # no certificate: an alert
    front = FrontFactory(Proxy().settings, max_connections=10)
    _, transport, receiver, _ = proxy_header(inner=memory_tls_factory(server_context, front))
    client = ssl.create_default_context().wrap_bio(
        ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname="localhost"
    )
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    receiver.dataReceived(SPEC_V1 + outgoing.read())
    answer = transport.take()
    assert answer[:1] in (b"\x15", b"\x16")  # a TLS record (alert or handshake), not silence
    [connection] = front.connections
    assert connection.client is not None
    assert connection.client.address == b"192.168.0.1"  # what X-Forwarded-For will say

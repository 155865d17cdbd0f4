"""tlsproxy.proxyheader: --proxy-protocol, the PROXY header read before TLS."""

from __future__ import annotations

import contextlib
import ssl
from ipaddress import ip_network

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from tests.unit.harness import MemoryTransport, Proxy, address
from tlsproxy import proxyproto
from tlsproxy.http.h1 import H1Connection
from tlsproxy.listen import FrontFactory, memory_tls_factory
from tlsproxy.proxyheader import ProxyHeaderFactory, ProxyHeaderReceiver, with_proxy_header

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
    assert isinstance(connection, H1Connection)
    assert connection.client is not None
    assert connection.client.address == b"192.168.0.1"  # what X-Forwarded-For will say

"""tlsproxy.tls.memorytls: a MemoryTLS server against Python's ``ssl`` client, all in memory.

The server's TCP connection is a StringTransport; the client is an ``ssl.SSLObject`` over memory
BIOs, as in the policy tests. ``TLSPair.pump`` moves bytes both ways until both sides are quiet.
"""

from __future__ import annotations

import gc
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from twisted.internet import error as net_error
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from tests.certfactory import Issued, make_ca, make_leaf, write_pair
from tests.unit.tls.conftest import client_context
from tlsproxy.tls.certstore import LoadedCertificate, load_certificate
from tlsproxy.tls.memorytls import MemoryTLS, MemoryTLSFactory
from tlsproxy.tls.policy import HTTP1_ALPN, HTTP2_ALPN, server_ssl_context

NOW = datetime.now(UTC)  # the client checks validity against the real clock
PEER = IPv4Address("TCP", "192.0.2.7", 51000)
HOST = IPv4Address("TCP", "127.0.0.1", 8443)
PLAIN_ANSWER = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\nuse https\n"

TLS12 = (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)
TLS13 = (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3)


@implementer(IHandshakeListener)
class App(Protocol):
    """The application under TLS: records what reaches it."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.handshakes = 0
        self.lost: Failure | None = None

    def handshakeCompleted(self) -> None:
        self.handshakes += 1

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = net_error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost = reason

    @property
    def data(self) -> bytes:
        return b"".join(self.received)


class CountingTransport(StringTransport):
    """A TCP transport stand-in that counts writes."""

    def __init__(self) -> None:
        super().__init__(hostAddress=HOST, peerAddress=PEER)  # type: ignore[no-untyped-call]
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)  # type: ignore[no-untyped-call]

    def sent(self) -> bytes:
        """What was written and not taken yet."""
        data: bytes = self.io.getvalue()
        return data

    def take(self) -> bytes:
        """What was written since the last call."""
        data = self.sent()
        self.clear()  # type: ignore[no-untyped-call]
        return data


@dataclass
class TLSPair:
    """A MemoryTLS server over ``tcp`` and a stdlib client, joined in memory."""

    server: MemoryTLS
    tcp: CountingTransport
    client: ssl.SSLObject
    incoming: ssl.MemoryBIO  # the client's
    outgoing: ssl.MemoryBIO
    error: ssl.SSLError | None = None
    client_closed: bool = False  # the client read the server's close_notify
    client_received: list[bytes] = field(default_factory=list)

    @classmethod
    def connect(
        cls,
        server_context: ssl.SSLContext,
        context: ssl.SSLContext,
        *,
        app: Protocol | None = None,
        session: ssl.SSLSession | None = None,
        plain_answer: bytes = PLAIN_ANSWER,
        server_hostname: str = "localhost",
    ) -> TLSPair:
        """Connect (no handshake yet): the server's application is ``app`` or a new ``App``."""
        wrapped = Factory.forProtocol(lambda: app if app is not None else App())
        factory = MemoryTLSFactory(server_context, wrapped, plain_answer=plain_answer)
        server = factory.buildProtocol(PEER)
        assert server is not None
        tcp = CountingTransport()
        server.makeConnection(tcp)  # type: ignore[no-untyped-call]
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = context.wrap_bio(
            incoming, outgoing, server_hostname=server_hostname, session=session
        )
        return cls(server, tcp, client, incoming, outgoing)

    @property
    def app(self) -> Any:
        return self.server.wrappedProtocol

    def pump(self) -> None:
        """Run the client and move bytes both ways until neither side has more to say."""
        for _ in range(20):
            try:
                if self.client.version() is None:
                    self.client.do_handshake()
                while not self.client_closed:
                    chunk = self.client.read(65536)
                    if not chunk:
                        self.client_closed = True
                    self.client_received.append(chunk)
            except ssl.SSLZeroReturnError:
                self.client_closed = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as e:
                self.error = self.error or e  # the first error says why; later ones follow from it
            moved = False
            if sent := self.outgoing.read():
                self.server.dataReceived(sent)
                moved = True
            if received := self.tcp.take():
                self.incoming.write(received)
                moved = True
            if not moved:
                return
        raise AssertionError("the two sides did not settle")

    def handshake(self) -> TLSPair:
        self.pump()
        assert self.error is None, self.error
        assert self.client.version() is not None
        return self

    def send(self, data: bytes) -> None:
        """The client sends ``data``."""
        self.client.write(data)
        self.pump()

    def take(self) -> bytes:
        """What the client has read from the server so far (and not taken yet)."""
        data = b"".join(self.client_received)
        self.client_received.clear()
        return data

    def tcp_lost(self, reason: Failure | None = None) -> None:
        """The TCP connection under the server ends (as the reactor would say, later)."""
        self.server.connectionLost(reason or Failure(net_error.ConnectionDone()))


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca("MemoryTLS Test CA", now=NOW)


@pytest.fixture(scope="module")
def certificate(ca: Issued, tmp_path_factory: pytest.TempPathFactory) -> LoadedCertificate:
    directory = tmp_path_factory.mktemp("memorytls")
    return load_certificate(*write_pair(directory, make_leaf(ca, now=NOW)), now=NOW)


@pytest.fixture(scope="module")
def context(certificate: LoadedCertificate) -> ssl.SSLContext:
    return server_ssl_context(certificate, alpn=HTTP2_ALPN)


@pytest.fixture
def pair(context: ssl.SSLContext, ca: Issued) -> TLSPair:
    return TLSPair.connect(context, client_context(ca)).handshake()


@implementer(ILogObserver)
class LogEvents(list[LogEvent]):
    def __call__(self, event: LogEvent) -> None:
        self.append(event)


@pytest.fixture
def log_events() -> Iterator[LogEvents]:
    """Every log event emitted during the test."""
    events = LogEvents()
    globalLogPublisher.addObserver(events)
    yield events
    globalLogPublisher.removeObserver(events)


# -- handshake and ALPN -------------------------------------------------------------------------


@pytest.mark.parametrize(("versions", "name"), [(TLS12, "TLSv1.2"), (TLS13, "TLSv1.3")])
def test_handshake_completes_and_is_announced_once(
    context: ssl.SSLContext,
    ca: Issued,
    versions: tuple[ssl.TLSVersion, ssl.TLSVersion],
    name: str,
) -> None:
    """TLS 1.2 and 1.3 handshakes complete; the application hears handshakeCompleted once."""
    pair = TLSPair.connect(context, client_context(ca, versions=versions))
    assert pair.app.handshakes == 0

    pair.handshake()
    pair.send(b"more")

    assert pair.client.version() == name
    assert pair.app.handshakes == 1
    assert pair.app.data == b"more"


@pytest.mark.parametrize(
    ("offered", "negotiated"),
    [(["h2", "http/1.1"], b"h2"), (["http/1.1"], b"http/1.1"), (None, None)],
)
def test_negotiated_protocol_is_alpns_choice_in_bytes(
    context: ssl.SSLContext, ca: Issued, offered: list[str] | None, negotiated: bytes | None
) -> None:
    """negotiatedProtocol is what ALPN chose, as bytes, or None when the client offered none."""
    pair = TLSPair.connect(context, client_context(ca, alpn=offered))
    assert pair.server.negotiatedProtocol is None  # nothing yet

    pair.handshake()

    assert pair.server.negotiatedProtocol == negotiated


def test_http1_only_context_answers_an_h2_offer_with_http11(
    certificate: LoadedCertificate, ca: Issued
) -> None:
    """With alpn=(http/1.1,) a browser-like h2 offer gets http/1.1."""
    context = server_ssl_context(certificate, alpn=HTTP1_ALPN)
    pair = TLSPair.connect(context, client_context(ca, alpn=["h2", "http/1.1"])).handshake()

    assert pair.server.negotiatedProtocol == b"http/1.1"


# -- data -----------------------------------------------------------------------------------------


def test_data_flows_both_ways(pair: TLSPair) -> None:
    """Client bytes reach the application; application writes reach the client, in order."""
    pair.send(b"GET / HTTP/1.1\r\n\r\n")
    pair.server.write(b"HTTP/1.1 200 OK\r\n")
    pair.server.writeSequence([b"Content-Length: 2\r\n", b"\r\n", b"hi"])
    pair.pump()

    assert pair.app.data == b"GET / HTTP/1.1\r\n\r\n"
    assert pair.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"


def test_each_application_write_is_one_tcp_write(pair: TLSPair) -> None:
    """A write is encrypted at once, whatever its size: one TCP write, nothing held back."""
    pair.tcp.writes = 0
    body = bytes(range(256)) * 1000  # several records

    pair.server.write(body)
    pair.server.write(b"tail")

    assert pair.tcp.writes == 2
    pair.pump()
    assert pair.take() == body + b"tail"


def test_large_client_upload_arrives_whole(pair: TLSPair) -> None:
    """Many records in one TCP read are all decrypted and delivered in that read."""
    upload = b"x" * 300_000
    pair.client.write(upload)
    records = pair.outgoing.read()

    pair.server.dataReceived(records)

    assert pair.app.data == upload


def test_record_split_across_reads_is_delivered_once_whole(pair: TLSPair) -> None:
    """A record cut into TCP segments is delivered when its last byte arrives."""
    pair.client.write(b"split me")
    record = pair.outgoing.read()

    pair.server.dataReceived(record[:5])
    assert pair.app.received == []
    pair.server.dataReceived(record[5:])

    assert pair.app.data == b"split me"


def test_writes_before_the_handshake_completes_are_sent_after_it(
    context: ssl.SSLContext, ca: Issued
) -> None:
    """What the application writes early is held, then sent in order once TLS is up."""
    pair = TLSPair.connect(context, client_context(ca))
    pair.server.write(b"early ")
    pair.server.write(b"bird")

    pair.handshake()

    assert pair.take() == b"early bird"


def test_addresses_and_tcp_transport_are_the_connections(pair: TLSPair) -> None:
    """getPeer/getHost are the TCP connection's, and ``transport`` is that connection."""
    assert pair.server.getPeer() == PEER
    assert pair.server.getHost() == HOST
    assert pair.server.transport is pair.tcp
    assert pair.app.transport is pair.server


# -- closing --------------------------------------------------------------------------------------


def test_lose_connection_sends_close_notify_and_closes_tcp_at_once(pair: TLSPair) -> None:
    """loseConnection sends what was written, then close_notify, and closes TCP without waiting
    for the client's close_notify."""
    pair.server.write(b"last words")
    pair.server.loseConnection()

    assert pair.server.disconnecting
    assert pair.tcp.disconnecting  # TCP closes once its buffer drains
    assert not pair.tcp.disconnected
    pair.pump()
    assert pair.take() == b"last words"
    assert pair.client_closed  # a clean end: close_notify, not truncation
    assert pair.error is None


def test_writes_after_lose_connection_are_dropped(pair: TLSPair) -> None:
    """Nothing follows close_notify."""
    pair.server.loseConnection()
    pair.tcp.take()

    pair.server.write(b"too late")

    assert pair.tcp.sent() == b""


def test_client_close_notify_is_answered_and_tcp_closed(pair: TLSPair) -> None:
    """The client's close_notify gets ours back, and TCP is closed; the application then
    hears connectionLost from TCP."""
    with pytest.raises(ssl.SSLWantReadError):
        pair.client.unwrap()
    pair.pump()

    assert pair.tcp.disconnecting
    assert pair.client_closed  # our close_notify reached it
    pair.tcp_lost()
    assert pair.app.lost is not None
    assert pair.app.lost.check(net_error.ConnectionDone)


def test_abort_resets_tcp_without_close_notify(pair: TLSPair) -> None:
    """abortConnection sends nothing more: the client must see truncation, not a clean end."""
    pair.server.write(b"partial")
    pair.tcp.take()  # the client never gets these bytes

    pair.server.abortConnection()
    pair.server.write(b"more")  # dropped
    pair.server.loseConnection()  # nothing more either

    assert pair.tcp.disconnected
    assert pair.tcp.sent() == b""


def test_tcp_abort_under_tls_sends_no_close_notify(pair: TLSPair) -> None:
    """What h1 and h2 do to signal truncation (abort the TCP connection under TLS) works here."""
    pair.server.transport.abortConnection()

    assert pair.tcp.disconnected
    assert pair.tcp.sent() == b""


def test_lose_connection_before_the_handshake_closes_tcp(
    context: ssl.SSLContext, ca: Issued
) -> None:
    """A connection closed before TLS is up has no close_notify to send; TCP just closes."""
    pair = TLSPair.connect(context, client_context(ca))

    pair.server.loseConnection()

    assert pair.tcp.disconnecting
    assert pair.tcp.sent() == b""


def test_connection_lost_reaches_the_application_with_tcps_reason(pair: TLSPair) -> None:
    """When TCP goes, the application hears why (here: the client reset it)."""
    pair.tcp_lost(Failure(net_error.ConnectionLost()))

    assert pair.app.lost is not None
    assert pair.app.lost.check(net_error.ConnectionLost)
    assert not pair.server.connected


@pytest.mark.parametrize("versions", [TLS12, TLS13])
def test_session_resumes_after_the_client_closed_without_close_notify(
    context: ssl.SSLContext, ca: Issued, versions: tuple[ssl.TLSVersion, ssl.TLSVersion]
) -> None:
    """A client that just closed TCP can still resume: OpenSSL would otherwise drop the session
    of a connection freed without a TLS shutdown."""
    client = client_context(ca, versions=versions)
    first = TLSPair.connect(context, client).handshake()
    session = first.client.session
    first.tcp_lost(Failure(net_error.ConnectionDone()))
    del first
    gc.collect()  # free the server's SSL object now, as the end of the connection would

    second = TLSPair.connect(context, client, session=session).handshake()

    assert second.client.session_reused


# -- failures -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x01\x02\x03" * 64,  # not TLS at all
        b"\x16\x03\x01\x00\x05hello",  # a handshake record that holds no ClientHello
        b"\x16\x03\x01\x40\x01" + b"\x00" * 16390,  # a record longer than TLS allows
    ],
)
def test_garbage_handshake_closes_quietly(
    context: ssl.SSLContext, ca: Issued, garbage: bytes, log_events: LogEvents
) -> None:
    """Bytes that are not a TLS handshake close the connection: no exception, no log line, and
    the application's connectionLost gets the TLS error."""
    pair = TLSPair.connect(context, client_context(ca))

    pair.server.dataReceived(garbage)
    pair.server.dataReceived(b"\x16\x03\x03 more after the error")  # ignored
    pair.tcp_lost()

    assert pair.tcp.disconnecting
    assert pair.app.handshakes == 0
    assert pair.app.received == []
    assert pair.app.lost is not None
    assert pair.app.lost.check(ssl.SSLError)
    assert log_events == []


def test_bad_record_after_the_handshake_closes_quietly(
    pair: TLSPair, log_events: LogEvents
) -> None:
    """A corrupted record after the handshake ends the connection the same quiet way."""
    pair.client.write(b"tampered")
    record = bytearray(pair.outgoing.read())
    record[-1] ^= 0xFF

    pair.server.dataReceived(bytes(record))
    pair.tcp_lost()

    assert pair.tcp.disconnecting
    assert pair.app.received == []
    assert pair.app.lost is not None
    assert pair.app.lost.check(ssl.SSLError)
    assert log_events == []


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_refused_version_gets_an_alert(context: ssl.SSLContext, ca: Issued) -> None:
    """A TLS 1.1 client gets OpenSSL's protocol_version alert before TCP closes."""
    client = client_context(
        ca, versions=(ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1_1), ciphers="DEFAULT:@SECLEVEL=0"
    )
    pair = TLSPair.connect(context, client)

    pair.pump()

    assert pair.error is not None
    assert "PROTOCOL_VERSION" in str(pair.error).upper()
    assert pair.tcp.disconnecting


def test_plain_http_gets_the_factorys_answer(context: ssl.SSLContext, ca: Issued) -> None:
    """A plain-HTTP request on the TLS port gets the hint and a closed connection."""
    pair = TLSPair.connect(context, client_context(ca))

    pair.server.dataReceived(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")

    assert pair.tcp.sent() == PLAIN_ANSWER
    assert pair.tcp.disconnecting
    assert pair.app.received == []


def test_plain_http_without_an_answer_is_a_failed_handshake(
    context: ssl.SSLContext, ca: Issued, log_events: LogEvents
) -> None:
    """With no plain answer configured, plain text is just not TLS."""
    pair = TLSPair.connect(context, client_context(ca), plain_answer=b"")

    pair.server.dataReceived(b"GET / HTTP/1.1\r\n\r\n")

    assert not pair.tcp.sent().startswith(b"HTTP/")
    assert pair.tcp.disconnecting
    assert log_events == []


# -- producers ------------------------------------------------------------------------------------


@implementer(IPushProducer)
class Producer:
    def __init__(self) -> None:
        self.state = "producing"

    def pauseProducing(self) -> None:
        self.state = "paused"

    def resumeProducing(self) -> None:
        self.state = "producing"

    def stopProducing(self) -> None:
        self.state = "stopped"


def test_producer_is_registered_on_tcp_itself(pair: TLSPair) -> None:
    """registerProducer passes through: TCP pauses the application's producer directly."""
    producer = Producer()

    pair.server.registerProducer(producer, True)

    assert pair.tcp.producer is producer
    assert pair.tcp.streaming
    pair.server.unregisterProducer()
    assert pair.tcp.producer is None
    pair.server.unregisterProducer()  # a second time is harmless


def test_pause_and_resume_reading_pass_through(pair: TLSPair) -> None:
    """pause/resume/stopProducing on the TLS transport stop and restart reading TCP."""
    pair.server.pauseProducing()
    assert pair.tcp.producerState == "paused"
    pair.server.resumeProducing()
    assert pair.tcp.producerState == "producing"
    pair.server.stopProducing()
    assert pair.tcp.producerState == "stopped"


def test_lose_connection_waits_for_the_producer_to_unregister(pair: TLSPair) -> None:
    """With a producer registered, its writes still go out after loseConnection; close_notify
    and the TCP close follow unregisterProducer."""
    pair.server.registerProducer(Producer(), True)
    pair.server.loseConnection()
    pair.server.write(b"still producing")

    assert not pair.tcp.disconnecting
    pair.server.unregisterProducer()

    assert pair.tcp.disconnecting
    pair.pump()
    assert pair.take() == b"still producing"
    assert pair.client_closed


# -- ALPN takeover --------------------------------------------------------------------------------


@implementer(IHandshakeListener, IPushProducer)
class HandsOver(App):
    """Like h1: a producer on its transport, which on handshakeCompleted puts ``successor`` in
    its place when ALPN chose h2."""

    def __init__(self, successor: App) -> None:
        super().__init__()
        self.successor = successor

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.registerProducer(self, True)

    def handshakeCompleted(self) -> None:
        super().handshakeCompleted()
        transport: Any = self.transport
        if transport.negotiatedProtocol == b"h2":
            transport.unregisterProducer()
            transport.wrappedProtocol = self.successor
            self.successor.makeConnection(transport)  # type: ignore[no-untyped-call]

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class Successor(HandsOver):
    """The protocol taking over: it registers itself as producer and greets first (h2 preface)."""

    def __init__(self) -> None:
        super().__init__(self)

    def connectionMade(self) -> None:
        super().connectionMade()
        transport: Any = self.transport
        transport.write(b"SETTINGS")


def test_takeover_by_swapping_the_wrapped_protocol(context: ssl.SSLContext, ca: Issued) -> None:
    """After handshakeCompleted swaps wrappedProtocol, the successor gets the data (here bytes
    that came in the same read as the client's Finished), writes, producing and connectionLost."""
    successor = Successor()
    first = HandsOver(successor)
    pair = TLSPair.connect(context, client_context(ca, versions=TLS13, alpn=["h2"]), app=first)
    assert pair.tcp.producer is first
    with pytest.raises(ssl.SSLWantReadError):
        pair.client.do_handshake()
    pair.server.dataReceived(pair.outgoing.read())  # ClientHello
    pair.incoming.write(pair.tcp.take())
    pair.client.do_handshake()  # TLS 1.3: the client is done first, and may send at once
    pair.client.write(b"PRI * HTTP/2.0")

    pair.server.dataReceived(pair.outgoing.read())  # Finished and the preface, one TCP read
    pair.pump()
    pair.tcp_lost()

    assert pair.server.wrappedProtocol is successor
    assert pair.tcp.producer is successor
    assert first.received == []
    assert first.lost is None
    assert successor.data == b"PRI * HTTP/2.0"
    assert pair.take() == b"SETTINGS"
    assert successor.lost is not None
    assert first.handshakes == 1  # announced once, to the protocol that was there
    assert successor.handshakes == 0


def test_log_prefix_names_the_application(pair: TLSPair) -> None:
    """Twisted's log lines for the connection name the protocol under TLS."""
    assert pair.server.logPrefix() == "App (tlsproxy)"

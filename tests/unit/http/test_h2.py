"""tlsproxy.http.h2 with a real pool and exchange, in memory: an h2 client on one side, the
backend's HTTP/1.1 bytes on the other."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection as H2Client
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    InformationalResponseReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.settings import SettingCodes
from hyperframe.frame import ContinuationFrame, Frame, GoAwayFrame, HeadersFrame

from tests.unit.harness import (
    BACKEND_TIMEOUT,
    FRONT_PORT,
    HEADER_TIMEOUT,
    IDLE_TIMEOUT,
    Backend,
    MemoryTransport,
    Proxy,
    address,
    response,
    split_head,
)
from tlsproxy.http.h1 import H1Connection
from tlsproxy.http.h2 import DEFAULT_LIMITS, H2Connection, H2Limits
from tlsproxy.http.h2stream import RESPONSE_BUFFER
from tlsproxy.http.headers import Header
from tlsproxy.listen import FrontFactory

FORWARDED = (
    b"X-Forwarded-For: 203.0.113.7\r\n"
    b'Forwarded: for=203.0.113.7;host="example.com";proto=https\r\n'
    b"X-Forwarded-Proto: https\r\n"
    b"X-Forwarded-Port: 8443\r\n"
    b"X-Forwarded-Host: example.com\r\n"
)


@dataclass
class Reply:
    """What the client got on one stream."""

    interim: list[list[Header]] = field(default_factory=list)
    headers: list[Header] = field(default_factory=list)
    body: bytes = b""
    trailers: list[Header] = field(default_factory=list)
    ended: bool = False
    reset: ErrorCodes | int | None = None

    @property
    def status(self) -> bytes:
        return dict(self.headers)[b":status"]


@dataclass
class H2Pair:
    """An h2 client connection object wired to an H2Connection over memory transports."""

    proxy: Proxy
    server: H2Connection
    transport: MemoryTransport
    tcp: MemoryTransport
    client: H2Client
    replies: dict[int, Reply] = field(default_factory=dict)
    terminated: list[ConnectionTerminated] = field(default_factory=list)

    def pump(self) -> list[Event]:
        """Move bytes both ways until neither side has anything to say."""
        events: list[Event] = []
        for _ in range(200):
            out = self.client.data_to_send()
            if out:
                self.server.dataReceived(out)
            back = self.transport.take()
            if back and not self.terminated:
                events += self.client.receive_data(back)
                self._note(events)
            if not out and not back:
                return events
        raise AssertionError("the connection did not settle in 200 rounds")

    def _note(self, events: list[Event]) -> None:
        for event in events:
            sid = getattr(event, "stream_id", None)
            reply = self.replies.setdefault(sid, Reply()) if sid else None
            if isinstance(event, ResponseReceived) and reply:
                reply.headers = list(event.headers or [])
            elif isinstance(event, InformationalResponseReceived) and reply:
                reply.interim.append(list(event.headers or []))
            elif isinstance(event, DataReceived) and reply:
                if event.data not in (b"", None) and reply.body is not None:
                    reply.body += event.data or b""
            elif isinstance(event, TrailersReceived) and reply:
                reply.trailers = list(event.headers or [])
            elif isinstance(event, StreamEnded) and reply:
                reply.ended = True
            elif isinstance(event, StreamReset) and reply:
                reply.reset = event.error_code
            elif isinstance(event, ConnectionTerminated):
                self.terminated.append(event)
        events.clear()

    def request(
        self,
        path: bytes = b"/",
        *,
        method: bytes = b"GET",
        headers: Sequence[Header] = (),
        end: bool = True,
        authority: bytes = b"example.com",
    ) -> int:
        stream_id = self.client.get_next_available_stream_id()
        fields = [(b":method", method), (b":scheme", b"https"), (b":authority", authority)]
        fields += [(b":path", path), *headers]
        self.client.send_headers(stream_id, fields, end_stream=end)
        self.pump()
        return stream_id

    def send(self, stream_id: int, data: bytes, *, end: bool = False) -> None:
        self.client.send_data(stream_id, data, end_stream=end)
        self.pump()

    def reply(self, stream_id: int) -> Reply:
        return self.replies.setdefault(stream_id, Reply())

    def take_all(self, stream_id: int) -> None:
        """The client hands back the window of everything it has received on ``stream_id``."""
        size = len(self.reply(stream_id).body)
        self.client.acknowledge_received_data(size, stream_id)
        self.pump()


def connect(
    proxy: Proxy, *, limits: H2Limits = DEFAULT_LIMITS, closed: list[H2Connection] | None = None
) -> H2Pair:
    """An HTTP/2 client connected (preface and settings exchanged) to a fresh H2Connection."""
    on_close: list[H2Connection] = closed if closed is not None else []
    server = H2Connection(proxy.settings, on_close.append, limits=limits)
    host, peer = address("127.0.0.1", FRONT_PORT), address("203.0.113.7", 50123)
    transport = MemoryTransport(clock=proxy.clock, host=host, peer=peer)
    tcp = MemoryTransport(clock=proxy.clock, host=host, peer=peer)
    tcp.on_loss = transport.deliver_loss
    transport.transport = tcp  # type: ignore[attr-defined]
    transport.protocol = server
    server.makeConnection(transport)  # type: ignore[no-untyped-call]
    client = H2Client(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    # Browsers open a large connection window; the per-stream windows stay at the default.
    client.increment_flow_control_window(16 * 1024 * 1024)
    pair = H2Pair(proxy, server, transport, tcp, client)
    pair.pump()
    return pair


@pytest.fixture
def proxy() -> Proxy:
    return Proxy()


@pytest.fixture
def pair(proxy: Proxy) -> H2Pair:
    return connect(proxy)


def backend_for(pair: H2Pair) -> tuple[Backend, bytes]:
    backend = pair.proxy.accept()
    return backend, backend.received()


def frames(data: bytes) -> list[Frame]:
    """Parse raw HTTP/2 frames (for what the h2 client refuses to read after a GOAWAY)."""
    out = []
    view = memoryview(data)
    while len(view) >= 9:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9 : 9 + length])
        out.append(frame)
        view = view[9 + length :]
    return out


# --- the takeover and the accounting ----------------------------------------------------------


def test_alpn_h2_hands_the_connection_to_http2_and_keeps_it_counted(proxy: Proxy) -> None:
    """When ALPN picked h2, the HTTP/1.1 front gives the TLS connection to an H2Connection,
    which stays counted against --max-connections until it closes."""
    front = FrontFactory(
        proxy.settings,
        max_connections=10,
        takeovers={b"h2": partial(H2Connection, proxy.settings)},
    )
    h1 = front.buildProtocol(address("203.0.113.7", 5000))
    transport = MemoryTransport(
        clock=proxy.clock, host=address("127.0.0.1", 8443), peer=address("203.0.113.7", 5000)
    )
    transport.protocol = h1
    h1.makeConnection(transport)  # type: ignore[no-untyped-call]
    transport.negotiatedProtocol = b"h2"  # type: ignore[attr-defined]
    h1.handshakeCompleted()
    successor = transport.wrappedProtocol  # type: ignore[attr-defined]
    assert isinstance(successor, H2Connection)
    assert successor.transport is transport
    assert front.connections == {successor}
    assert frames(transport.take())[0].type == 0x04  # our SETTINGS: the server preface
    transport.protocol = successor
    transport.loseConnection()
    proxy.clock.advance(0)
    assert front.connections == set()


def test_alpn_http11_stays_with_http1(proxy: Proxy) -> None:
    """A client that negotiated http/1.1 keeps the HTTP/1.1 front."""
    front = FrontFactory(
        proxy.settings,
        max_connections=10,
        takeovers={b"h2": partial(H2Connection, proxy.settings)},
    )
    h1 = front.buildProtocol(address("203.0.113.7", 5000))
    transport = MemoryTransport(
        clock=proxy.clock, host=address("127.0.0.1", 8443), peer=address("203.0.113.7", 5000)
    )
    h1.makeConnection(transport)  # type: ignore[no-untyped-call]
    transport.negotiatedProtocol = b"http/1.1"  # type: ignore[attr-defined]
    h1.handshakeCompleted()
    assert not hasattr(transport, "wrappedProtocol")
    assert front.connections == {h1}
    assert isinstance(h1, H1Connection)


def test_settings_advertise_the_limits(pair: H2Pair) -> None:
    """The server's SETTINGS carry max concurrent streams, the header list limit, the stream
    window, and no extended CONNECT (websockets go over HTTP/1.1)."""
    remote = pair.client.remote_settings
    assert remote.max_concurrent_streams == 100
    assert remote.max_header_list_size == pair.proxy.max_header_bytes
    assert remote.initial_window_size == DEFAULT_LIMITS.stream_window
    assert remote.enable_connect_protocol == 0
    assert pair.client.outbound_flow_control_window >= DEFAULT_LIMITS.connection_window - 65535


# --- the request the backend sees -------------------------------------------------------------


def test_get_reaches_the_backend_as_http11(pair: H2Pair) -> None:
    """:authority becomes Host, the headers pass the HTTP/1.1 front's rules, and forwarding
    headers describe the client."""
    pair.request(
        b"/path?q=1",
        headers=[
            (b"user-agent", b"curl/8"),
            (b"te", b"trailers"),
            (b"x-forwarded-for", b"1.2.3.4"),
        ],
    )
    _, sent = backend_for(pair)
    assert sent == (
        b"GET /path?q=1 HTTP/1.1\r\n"
        b"host: example.com\r\n"
        b"user-agent: curl/8\r\n"
        b"TE: trailers\r\n" + FORWARDED + b"\r\n"
    )


def test_response_comes_back_as_http2(pair: H2Pair) -> None:
    """Status and headers arrive lower-case without hop-by-hop fields, Content-Length kept;
    the backend connection goes back to the pool for the next stream."""
    first = pair.request()
    backend, _ = backend_for(pair)
    backend.send(
        response(
            headers=[b"Content-Type: text/plain", b"Connection: keep-alive", b"Keep-Alive: 5"],
            body=b"hi",
        )
    )
    pair.pump()
    reply = pair.reply(first)
    assert reply.headers == [
        (b":status", b"200"),
        (b"content-type", b"text/plain"),
        (b"content-length", b"2"),
    ]
    assert (reply.body, reply.ended) == (b"hi", True)
    pair.request(b"/again")
    assert pair.proxy.pending_connects == 0
    assert backend.received().startswith(b"GET /again HTTP/1.1\r\n")


def test_body_with_content_length_is_forwarded(pair: H2Pair) -> None:
    """A body with content-length goes to the backend with that Content-Length."""
    stream = pair.request(
        b"/upload", method=b"POST", headers=[(b"content-length", b"5")], end=False
    )
    pair.send(stream, b"hello", end=True)
    _, sent = backend_for(pair)
    head, body = split_head(sent)
    assert head[0] == b"POST /upload HTTP/1.1"
    assert b"Content-Length: 5" in head
    assert body == b"hello"


def test_body_without_length_is_chunked_with_trailers(pair: H2Pair) -> None:
    """A body without content-length is chunked to the backend (an empty DATA frame sends
    nothing); the client's trailers follow."""
    stream = pair.request(b"/upload", method=b"POST", end=False)
    backend, sent = backend_for(pair)
    assert b"Transfer-Encoding: chunked" in split_head(sent)[0]
    pair.send(stream, b"hello")
    pair.send(stream, b"")  # an empty DATA frame is no chunk: it must not end the body
    pair.client.send_headers(stream, [(b"x-sum", b"abc"), (b"cookie", b"no")], end_stream=True)
    pair.pump()
    assert backend.received() == b"5\r\nhello\r\n0\r\nx-sum: abc\r\n\r\n"


def test_empty_post_gets_content_length_zero(pair: H2Pair) -> None:
    """A POST whose HEADERS end the stream tells the backend Content-Length: 0."""
    pair.request(b"/form", method=b"POST")
    _, sent = backend_for(pair)
    assert b"Content-Length: 0" in split_head(sent)[0]


def test_rejected_request_gets_its_status_on_the_stream(pair: H2Pair) -> None:
    """A request the rules refuse is answered with its status on that stream only: nothing
    reaches the backend and the connection keeps serving."""
    stream = pair.request(b"/" + b"a" * 20000)
    reply = pair.reply(stream)
    assert reply.status == b"414"
    assert reply.ended
    assert b"request target too long" in reply.body
    assert pair.proxy.pending_connects == 0
    assert not pair.terminated
    pair.request(b"/fine")
    assert pair.proxy.pending_connects == 1


# --- flow control and back-pressure -----------------------------------------------------------


def test_held_stream_closes_only_its_own_window(proxy: Proxy) -> None:
    """While one exchange holds reading (its backend is full), its stream's data is not
    acknowledged, so that client window closes; another stream's window keeps opening, the
    TCP connection keeps being read, and releasing the hold gives the window back."""
    pair = connect(proxy, limits=H2Limits(stream_window=64 * 1024))
    slow = pair.request(b"/slow", method=b"POST", end=False)
    slow_backend, _ = backend_for(pair)
    fast = pair.request(b"/fast", method=b"POST", end=False)
    backend_for(pair)
    slow_backend.connection.pauseProducing()  # its transport's buffer is full
    piece = b"x" * 16000
    for _ in range(3):
        pair.send(slow, piece)
        pair.send(fast, piece)
    assert pair.client.local_flow_control_window(slow) == 64 * 1024 - 48000
    assert pair.client.local_flow_control_window(fast) > 64 * 1024 - 16000
    assert not pair.transport.paused
    slow_backend.connection.resumeProducing()
    pair.pump()
    assert pair.client.local_flow_control_window(slow) > 64 * 1024 - 16000


def test_response_waits_for_the_client_window_and_pauses_the_backend(pair: H2Pair) -> None:
    """DATA never exceeds the client's stream window; beyond the stream's buffer the backend is
    not read; WINDOW_UPDATEs let the rest through and the backend is read again."""
    stream = pair.request(b"/big")
    backend, _ = backend_for(pair)
    body = bytes(range(256)) * 1024  # 256 KiB
    backend.send(response(headers=[b"Content-Length: %d" % len(body)], content_length=False))
    backend.send(body[:200_000])
    pair.pump()
    reply = pair.reply(stream)
    assert len(reply.body) == 65535  # the client's default stream window
    assert RESPONSE_BUFFER < 200_000 - 65535
    assert backend.reading_paused
    for _ in range(20):
        pair.take_all(stream)
        if not backend.reading_paused:
            break
    assert not backend.reading_paused
    backend.send(body[200_000:])
    for _ in range(20):
        if reply.ended:
            break
        pair.take_all(stream)
    assert reply.body == body
    assert reply.ended


def test_a_blocked_stream_does_not_block_another(pair: H2Pair) -> None:
    """One stream waiting for its client window does not hold up another stream's response."""
    blocked = pair.request(b"/big")
    big_backend, _ = backend_for(pair)
    big_backend.send(response(body=b"x" * 100_000))
    pair.pump()
    assert pair.reply(blocked).body
    other = pair.request(b"/small")
    big_backend.send(response(body=b"small"))  # the same backend connection, reused
    pair.pump()
    assert pair.reply(other).body == b"small"
    assert pair.reply(other).ended
    assert not pair.reply(blocked).ended


def test_client_that_stops_reading_pauses_every_backend(pair: H2Pair) -> None:
    """When TLS says the client does not read, no stream's backend is read until it does."""
    stream = pair.request()
    backend, _ = backend_for(pair)
    backend.send(response(headers=[b"Content-Length: 10"], content_length=False) + b"12345")
    pair.pump()
    pair.server.pauseProducing()
    assert backend.reading_paused
    backend.send(b"67890")
    assert pair.transport.take() == b""
    pair.server.resumeProducing()
    pair.pump()
    assert not backend.reading_paused
    assert pair.reply(stream).body == b"1234567890"


# --- responses: trailers, interim, errors -----------------------------------------------------


def test_backend_trailers_end_the_stream(pair: H2Pair) -> None:
    """Trailers from a chunked backend response are sent as a trailing HEADERS frame."""
    stream = pair.request(headers=[(b"te", b"trailers")])
    backend, _ = backend_for(pair)
    backend.send(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
        b"4\r\nbody\r\n0\r\nX-Checksum: abc\r\nSet-Cookie: no\r\n\r\n"
    )
    pair.pump()
    reply = pair.reply(stream)
    assert (reply.body, reply.trailers, reply.ended) == (b"body", [(b"x-checksum", b"abc")], True)
    assert b"trailer" not in dict(reply.headers)


def test_interim_responses_pass(pair: H2Pair) -> None:
    """A 103 Early Hints from the backend reaches the client before the final response."""
    stream = pair.request()
    backend, _ = backend_for(pair)
    backend.send(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
    backend.send(response(body=b"ok"))
    pair.pump()
    reply = pair.reply(stream)
    assert reply.interim == [[(b":status", b"103"), (b"link", b"</s.css>; rel=preload")]]
    assert reply.status == b"200"


def test_head_response_has_no_body(pair: H2Pair) -> None:
    """A response to HEAD ends with its HEADERS frame, Content-Length kept."""
    stream = pair.request(method=b"HEAD")
    backend, _ = backend_for(pair)
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
    pair.pump()
    reply = pair.reply(stream)
    assert dict(reply.headers)[b"content-length"] == b"1234"
    assert (reply.body, reply.ended) == (b"", True)


def test_unreachable_backend_is_a_502_on_the_stream(pair: H2Pair) -> None:
    """A refused backend connection becomes a 502 with the explanation, on that stream only."""
    stream = pair.request()
    pair.proxy.refuse()
    pair.pump()
    reply = pair.reply(stream)
    assert reply.status == b"502"
    assert b"could not connect to the backend" in reply.body
    assert dict(reply.headers)[b"content-length"] == str(len(reply.body)).encode()
    assert reply.ended
    assert not pair.terminated


def test_slow_backend_is_a_504(pair: H2Pair) -> None:
    """No answer within --backend-timeout: 504 on the stream, the backend connection dropped."""
    stream = pair.request()
    backend, _ = backend_for(pair)
    pair.proxy.clock.advance(BACKEND_TIMEOUT + 1)
    pair.pump()
    assert pair.reply(stream).status == b"504"
    assert backend.aborted


def test_backend_dying_mid_body_resets_only_that_stream(pair: H2Pair) -> None:
    """A backend that dies after the head: RST_STREAM INTERNAL_ERROR, the connection lives."""
    stream = pair.request()
    backend, _ = backend_for(pair)
    backend.send(response(headers=[b"Content-Length: 100"], content_length=False) + b"part")
    pair.pump()
    backend.die()
    pair.pump()
    reply = pair.reply(stream)
    assert reply.reset == ErrorCodes.INTERNAL_ERROR
    assert not reply.ended
    assert not pair.terminated
    pair.request(b"/next")
    assert pair.proxy.pending_connects == 1


def test_early_response_stops_the_request_body(pair: H2Pair) -> None:
    """A response complete before the request body ends the request with RST_STREAM
    NO_ERROR, after the whole response."""
    stream = pair.request(b"/upload", method=b"POST", end=False)
    backend, _ = backend_for(pair)
    backend.send(response(b"413 Content Too Large", body=b"no"))
    pair.pump()
    reply = pair.reply(stream)
    assert (reply.status, reply.body, reply.ended) == (b"413", b"no", True)
    assert reply.reset == ErrorCodes.NO_ERROR


def test_client_reset_frees_the_backend_connection(pair: H2Pair) -> None:
    """RST_STREAM from the client aborts its exchange's backend connection."""
    stream = pair.request()
    backend, _ = backend_for(pair)
    backend.send(response(headers=[b"Content-Length: 100"], content_length=False) + b"part")
    pair.pump()
    pair.client.reset_stream(stream, ErrorCodes.CANCEL)
    pair.pump()
    assert backend.aborted
    assert pair.server.streams == {}


def test_access_log_records_http2(proxy: Proxy) -> None:
    """Each stream is one access-log line with version HTTP/2.0."""
    logging = Proxy(log_access=True)
    pair = connect(logging)
    pair.request(b"/logged", headers=[(b"user-agent", b"h2test")])
    backend, _ = backend_for(pair)
    backend.send(response(body=b"hello"))
    pair.pump()
    logging.access_log.flush()
    (line,) = logging.log_lines()
    assert '"GET /logged HTTP/2.0" 200 5 "-" "h2test"' in line


# --- limits -----------------------------------------------------------------------------------


def test_rapid_reset_gets_goaway_enhance_your_calm(proxy: Proxy) -> None:
    """Streams opened and reset over the limit in one window end the connection with GOAWAY
    ENHANCE_YOUR_CALM, and every backend connection it started is dropped (CVE-2023-44487)."""
    pair = connect(proxy, limits=H2Limits(max_resets=5))
    for _ in range(6):
        stream = pair.request()
        pair.client.reset_stream(stream)
        if pair.terminated:
            break
        pair.pump()
    assert [t.error_code for t in pair.terminated] == [ErrorCodes.ENHANCE_YOUR_CALM]
    assert pair.transport.disconnecting
    assert pair.proxy.pending_connects == 6  # attempts made; none will be used
    assert pair.server.streams == {}


def test_resets_spread_over_windows_are_allowed(proxy: Proxy) -> None:
    """Resets below the limit in each window never close the connection."""
    pair = connect(proxy, limits=H2Limits(max_resets=5, window_seconds=1.0))
    for _ in range(4):
        for _ in range(4):
            pair.client.reset_stream(pair.request())
            pair.pump()
        proxy.clock.advance(1.0)
    assert not pair.terminated


def test_ping_flood_gets_goaway(proxy: Proxy) -> None:
    """More PING frames than the limit in one window: GOAWAY ENHANCE_YOUR_CALM."""
    pair = connect(proxy, limits=H2Limits(max_control_frames=10))
    for i in range(12):
        pair.client.ping(b"%08d" % i)
        pair.pump()
        if pair.terminated:
            break
    assert i == 9  # ten PINGs: with the client's SETTINGS, eleven control frames
    assert [t.error_code for t in pair.terminated] == [ErrorCodes.ENHANCE_YOUR_CALM]


def test_client_not_reading_is_dropped_when_control_replies_pile_up(proxy: Proxy) -> None:
    """A client that sends PINGs but reads nothing is aborted once the replies it made us
    write while paused pass the bound."""
    pair = connect(proxy, limits=H2Limits(max_paused_output=500))
    pair.server.pauseProducing()
    for i in range(40):
        pair.client.ping(b"%08d" % i)
        pair.server.dataReceived(pair.client.data_to_send())
    assert pair.tcp.disconnected


def test_header_block_is_bounded_while_it_arrives() -> None:
    """HEADERS + CONTINUATION frames past --max-header-bytes end the connection before the
    block is complete (h2 alone would buffer up to 64 frames, about 1 MiB)."""
    proxy = Proxy(max_header_bytes=4096)
    pair = connect(proxy)
    assert hasattr(pair.server.h2.incoming_buffer, "_headers_buffer")
    headers = HeadersFrame(1, data=b"\x82" * 2000)  # never END_HEADERS
    pair.server.dataReceived(headers.serialize())
    for _ in range(3):
        continuation = ContinuationFrame(1, data=b"\x82" * 2000)
        pair.server.dataReceived(continuation.serialize())
        if pair.transport.disconnecting:
            break
    assert pair.transport.disconnecting
    goaway = [f for f in frames(pair.transport.take()) if isinstance(f, GoAwayFrame)]
    assert [f.error_code for f in goaway] == [ErrorCodes.ENHANCE_YOUR_CALM]


def test_header_list_over_the_limit_ends_the_connection() -> None:
    """A decoded header list larger than --max-header-bytes is refused by the decoder."""
    proxy = Proxy(max_header_bytes=2048)
    pair = connect(proxy)
    pair.request(headers=[(b"x-big", b"a" * 3000)])
    assert pair.terminated
    assert pair.terminated[0].error_code != ErrorCodes.NO_ERROR
    assert proxy.pending_connects == 0


def test_too_many_concurrent_streams_end_the_connection(proxy: Proxy) -> None:
    """The client may not open more than max_concurrent_streams streams at once."""
    pair = connect(proxy, limits=H2Limits(max_concurrent_streams=3))
    for _ in range(3):
        pair.request()
    assert not pair.terminated
    pair.client.remote_settings[SettingCodes.MAX_CONCURRENT_STREAMS] = 10  # a client that cheats
    pair.client.remote_settings.acknowledge()
    pair.request()
    assert pair.terminated
    assert proxy.pending_connects == 3


# --- deadlines and closing --------------------------------------------------------------------


def test_missing_preface_times_out(proxy: Proxy) -> None:
    """A connection that never sends the HTTP/2 preface is dropped after --header-timeout."""
    server = H2Connection(proxy.settings, lambda _: None)
    transport = MemoryTransport(
        clock=proxy.clock, host=address("127.0.0.1", 8443), peer=address("203.0.113.7", 1)
    )
    server.makeConnection(transport)  # type: ignore[no-untyped-call]
    proxy.clock.advance(HEADER_TIMEOUT - 1)
    assert not transport.disconnected
    proxy.clock.advance(2)
    assert transport.disconnected


def test_idle_connection_gets_goaway_after_idle_timeout(pair: H2Pair) -> None:
    """With no stream open for --idle-timeout, the connection says GOAWAY and closes."""
    pair.proxy.clock.advance(IDLE_TIMEOUT - 1)
    pair.pump()
    assert not pair.terminated
    pair.proxy.clock.advance(2)
    pair.pump()
    assert [t.error_code for t in pair.terminated] == [ErrorCodes.NO_ERROR]
    assert pair.transport.disconnecting


def test_busy_connection_does_not_idle_out(pair: H2Pair) -> None:
    """An open stream keeps the connection from its idle timeout."""
    stream = pair.request(b"/upload", method=b"POST", end=False)
    backend_for(pair)
    for _ in range(4):
        pair.proxy.clock.advance(BACKEND_TIMEOUT - 10)
        pair.send(stream, b"x")
    assert pair.proxy.clock.seconds() > IDLE_TIMEOUT
    assert not pair.terminated


def test_close_sends_goaway_and_lets_open_streams_finish(pair: H2Pair) -> None:
    """close() sends GOAWAY naming the last stream; that stream still gets its response, a
    later stream is refused, and the connection closes once the open stream is done."""
    stream = pair.request()
    backend, _ = backend_for(pair)
    pair.server.close()
    (goaway,) = frames(pair.transport.take())
    assert isinstance(goaway, GoAwayFrame)
    assert (goaway.last_stream_id, goaway.error_code) == (stream, 0)
    assert not pair.transport.disconnecting
    late = HeadersFrame(stream + 2, flags=["END_HEADERS", "END_STREAM"])
    late.data = pair.client.encoder.encode(
        [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"/")]
    )
    pair.server.dataReceived(late.serialize())
    (refused,) = frames(pair.transport.take())
    assert (refused.stream_id, refused.error_code) == (stream + 2, ErrorCodes.REFUSED_STREAM)  # type: ignore[attr-defined]
    assert pair.proxy.pending_connects == 0
    backend.send(response(body=b"done"))
    sent = frames(pair.transport.take())
    assert [type(f).__name__ for f in sent] == ["HeadersFrame", "DataFrame", "GoAwayFrame"]
    assert sent[1].data == b"done"  # type: ignore[attr-defined]
    assert "END_STREAM" in sent[1].flags
    assert pair.transport.disconnecting


def test_connection_loss_stops_every_exchange(pair: H2Pair) -> None:
    """When the client connection goes, each of its streams' backend connections is dropped."""
    pair.request(b"/a")
    first, _ = backend_for(pair)
    pair.request(b"/b")
    second, _ = backend_for(pair)
    closed: list[object] = []
    pair.server._on_close = closed.append
    pair.transport.loseConnection()
    pair.proxy.clock.advance(0)
    assert first.aborted
    assert second.aborted
    assert closed == [pair.server]


def test_streams_the_client_makes_us_reset_count_as_resets(proxy: Proxy) -> None:
    """ "MadeYouReset" (CVE-2025-8671): a DATA frame after END_STREAM makes the server reset the
    stream itself; those resets count toward the same limit and end in GOAWAY."""
    from hyperframe.frame import DataFrame

    pair = connect(proxy, limits=H2Limits(max_resets=5))
    for _ in range(8):
        stream = pair.request(b"/slow")
        pair.server.dataReceived(pair.client.data_to_send())
        pair.server.dataReceived(DataFrame(stream, data=b"x").serialize())
        back = pair.transport.take()
        if back:
            pair._note(pair.client.receive_data(back))
        if pair.terminated:
            break
    assert [t.error_code for t in pair.terminated] == [ErrorCodes.ENHANCE_YOUR_CALM]

"""The HTTP/1.1 front: bytes from a TLS client become exchanges, exchanges become response bytes.

Requests are answered in order (:mod:`tlsproxy.http.pipeline` holds those sent ahead of their
turn); :mod:`tlsproxy.http.h1response` makes each response's bytes, framed.

Rules:

1. A request that is rejected gets its status and ``Connection: close``, and nothing of it reaches
   the backend. After a response that ends before its request did, the connection closes too.
2. One deadline per connection, whose meaning follows the phase: ``--header-timeout`` while a
   request head is arriving (and during the TLS handshake), ``--idle-timeout`` between requests,
   ``--backend-timeout`` without progress while an exchange runs.
3. All writes of one backend read leave in one TLS write (``flush``): TLS records cost per write.
4. Shutdown (:meth:`drain`): an idle connection closes at once; one with an exchange in flight
   answers it, with ``Connection: close`` when its head has not gone out yet, then closes.
   Requests pipelined behind it are not answered (the client retries them elsewhere).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httptools
from twisted.internet.interfaces import IHandshakeListener, IProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tlsproxy import eagerwrite
from tlsproxy.accesslog import AccessLog
from tlsproxy.backend import BackendConnection
from tlsproxy.deadline import NEVER, DeadlineSweeper
from tlsproxy.http.exchange import Exchange
from tlsproxy.http.h1response import ResponseWriter
from tlsproxy.http.headers import (
    ClientInfo,
    Header,
    HeadRejected,
    IPNetwork,
    ResponseHead,
    check_request_head,
    clean_trailers,
)
from tlsproxy.http.pipeline import Pipeline
from tlsproxy.http.target import backend_target
from tlsproxy.metrics import Metrics
from tlsproxy.relay import Relay
from tlsproxy.routing import MISDIRECTED, Router

log = Logger()

IDLE, HEAD, BODY, READ, TUNNEL = range(5)  # what the connection is reading now
MAX_HEADERS = 256
MAX_URI_BYTES = 16 * 1024


@dataclass(frozen=True)
class FrontSettings:
    """What every front connection shares, fixed at startup."""

    router: Router  # which backend pool each request goes to (--route), or 421
    sweeper: DeadlineSweeper
    trusted_proxies: tuple[IPNetwork, ...]
    header_timeout: float
    idle_timeout: float
    backend_timeout: float
    max_header_bytes: int
    access_log: AccessLog | None
    # Called when the client negotiated another protocol by ALPN (b"h2"): returns the protocol
    # that takes the connection over from HTTP/1.1. None: only HTTP/1.1 is offered.
    alpn_takeover: Callable[[bytes, H1Connection], IProtocol] | None = None
    tunnel_idle_timeout: float | None = None  # for upgraded connections; None: no limit
    hsts: bytes = b""  # --hsts: the Strict-Transport-Security value for every response
    metrics: Metrics = field(default_factory=Metrics)  # counted always; served if --metrics-listen
    # --client-ca: the TLS layer asks for client certificates, and requests carry X-Client-*.
    client_certificates: bool = False


@implementer(IHandshakeListener)
class H1Connection(Protocol):
    """One client connection speaking HTTP/1.1 (or 1.0) over TLS."""

    # Slots: fewer bytes per idle connection and faster attribute access on the hot path (the
    # Protocol base still gives each instance a small dict, for ``transport``).
    __slots__ = (
        "_closing",
        "_draining",
        "_exchange",
        "_head_bytes",
        "_headers",
        "_holds",
        "_http10",
        "_max_uri_bytes",
        "_method",
        "_on_close",
        "_parser",
        "_phase",
        "_pipeline",
        "_read_nothing_more",
        "_read_size",
        "_response",
        "_settings",
        "_started",
        "_sweeper",
        "_trailers",
        "_tunnel",
        "_upgrade_data",
        "_url",
        "client",
        "deadline",
        "write_paused",
    )

    def __init__(self, settings: FrontSettings, on_close: Callable[[H1Connection], None]) -> None:
        self._settings = settings
        self._sweeper = settings.sweeper
        self._max_uri_bytes = min(MAX_URI_BYTES, settings.max_header_bytes)
        self._on_close = on_close
        self._parser = httptools.HttpRequestParser(self)
        self._phase = IDLE
        self._url = b""
        self._headers: list[Header] = []
        self._trailers: list[Header] = []
        self._head_bytes = 0  # bytes read in earlier reads while this request head was arriving
        self._read_size = 0  # bytes in the read being parsed now
        self._exchange: Exchange | None = None
        self._started = 0.0  # when this exchange's head was complete, by settings.metrics.seconds
        self._pipeline: Pipeline | None = None  # requests sent ahead of their turn
        self._holds: set[str] = set()
        self._response = ResponseWriter(hsts=settings.hsts)
        self._http10 = False
        self._method = b""
        self._closing = False
        self._draining = False  # shutting down: the response in flight is the last one
        self._upgrade_data: bytes | None = None  # what the client sent after asking
        self._tunnel: Relay | None = None
        self._read_nothing_more = False  # what followed the held requests could not be parsed
        self.write_paused = False
        self.deadline = NEVER
        self.client: ClientInfo | None = None

    # -- Twisted ---------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        peer, host = transport.getPeer(), transport.getHost()
        self.client = ClientInfo.for_peer(
            getattr(peer, "host", ""), getattr(host, "port", 0), self._settings.trusted_proxies
        )
        transport.registerProducer(self, True)
        tcp = getattr(transport, "transport", None)  # the TCP connection under TLS
        if tcp is not None:
            # Without it every response's last segment waits for the client's delayed ACK.
            with contextlib.suppress(OSError, AttributeError):  # a unix socket has no Nagle
                tcp.setTcpNoDelay(True)
            eagerwrite.install(tcp)
        self._sweeper.track(self)
        self.deadline = self._sweeper.now + self._settings.header_timeout

    def handshakeCompleted(self) -> None:
        """TLS is up: if ALPN chose another protocol, hand the connection over to it.

        With --client-ca, the client certificate is described here, once per connection.
        """
        transport: Any = self.transport
        if self._settings.client_certificates and self.client is not None:
            self.client = self.client.with_certificate(transport.peer_certificate_der())
        takeover = self._settings.alpn_takeover
        if takeover is None:
            return
        negotiated = transport.negotiatedProtocol
        if negotiated in (None, b"http/1.1"):
            return
        transport.unregisterProducer()
        self._sweeper.untrack(self)
        self._closing = True
        self._on_close(self)  # the successor does its own accounting from here on
        successor = takeover(negotiated, self)
        transport.wrappedProtocol = successor
        successor.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.from_client(data)
            return
        if self._closing:
            return
        if self._upgrade_data is not None:  # the backend has not yet said whether it switches
            self._upgrade_data += data
            return
        self._read_size = len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            rejected = e.__context__
            if not isinstance(rejected, HeadRejected):
                raise
            self._reject(rejected.status, rejected.reason)
            return
        except httptools.HttpParserUpgrade as e:
            # The request asked to switch protocols; what follows it is not HTTP/1.1 for us.
            self._upgrade_data = data[e.args[0] :]
            self.hold_reading("upgrade")
        except httptools.HttpParserError as e:
            self._reject(400, str(e) or "malformed request")
            return
        if self._phase == HEAD:
            self._head_bytes += len(data)
            if self._head_bytes > self._settings.max_header_bytes:
                self._reject(431, "request head larger than --max-header-bytes")

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closing = True
        self._sweeper.untrack(self)
        self._pipeline = None
        exchange, self._exchange = self._exchange, None
        if self._tunnel is not None:
            self._tunnel.client_ended()
        elif exchange is not None:
            exchange.front_lost()
        self._on_close(self)

    # IPushProducer, registered on our own transport: the client is slow to read the response.
    def pauseProducing(self) -> None:
        self.write_paused = True
        self.deadline = self._sweeper.now + self._settings.idle_timeout
        if self._exchange is not None:
            self._exchange.pause_response()

    def resumeProducing(self) -> None:
        self.write_paused = False
        if self._tunnel is not None:
            self.deadline = NEVER
            self._tunnel.activity()
        else:
            self._progress()
        if self._exchange is not None:
            self._exchange.resume_response()

    def stopProducing(self) -> None:
        pass

    def deadline_passed(self, now: float) -> None:
        self.deadline = NEVER
        exchange = self._exchange
        if self._closing or self.write_paused:  # a client that stopped reading: cut it off
            self._abort_transport()
        elif self._tunnel is not None:  # --tunnel-idle-timeout: silence both ways
            self._tunnel.client_ended()
            self.close()
        elif exchange is not None:
            if self._phase == BODY and not self._holds:  # waiting for the client's body
                exchange.client_timed_out()
            else:
                exchange.timed_out()
        elif self._phase == HEAD:
            self._reject(408, "request head not received within --header-timeout")
        else:  # idle keep-alive, or a handshake that never finished
            self.close()

    # -- reading: httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._exchange is not None or self._pipeline is not None:
            self._queue(self.on_message_begin, ())
            return
        self._phase = HEAD
        self._method = b""
        self._url = b""
        self._headers = []
        self._trailers = []
        self._head_bytes = 0
        self.deadline = self._sweeper.now + self._settings.header_timeout

    def on_url(self, url: bytes) -> None:
        if self._pipeline is not None:
            self._queue(self.on_url, (url,))
            return
        self._url += url
        if len(self._url) > self._max_uri_bytes:
            raise HeadRejected(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._pipeline is not None:
            self._queue(self.on_header, (name, value))
        elif self._phase == HEAD:
            self._headers.append((name, value))
            if len(self._headers) > MAX_HEADERS:
                raise HeadRejected(431, f"more than {MAX_HEADERS} header fields")
        else:  # a trailer: counted against the same limit as a head
            self._trailers.append((name, value))
            self._head_bytes += len(name) + len(value) + 4
            if self._head_bytes > self._settings.max_header_bytes:
                raise HeadRejected(431, "request trailers larger than --max-header-bytes")

    def on_headers_complete(self) -> None:
        parser = self._parser
        # The parser's view of the request is only good now: a held (pipelined) request keeps
        # its own copy, since the parser moves on to the requests after it.
        args = (parser.get_method(), parser.get_http_version(), parser.should_keep_alive())
        if self._pipeline is not None:
            self._queue(self._request_head_received, args)
        else:
            self._request_head_received(*args)

    def _request_head_received(self, method: bytes, version: str, keep_alive: bool) -> None:
        settings = self._settings
        # What has been read so far bounds the head; count it exactly only when that bound is over.
        if self._head_bytes + self._read_size > settings.max_header_bytes:
            size = len(self._url) + sum(len(n) + len(v) + 4 for n, v in self._headers)
            if size > settings.max_header_bytes:
                raise HeadRejected(431, "request head larger than --max-header-bytes")
        self._head_bytes = 0
        self._method = method
        if method == b"CONNECT":
            raise HeadRejected(405, "CONNECT is for forward proxies; this is a reverse proxy")
        self._http10 = version == "1.0"
        assert self.client is not None
        head = check_request_head(self._headers, self.client, http10=self._http10)
        pool, server_name = settings.router.only, None
        if pool is None:
            server_name = getattr(self.transport, "server_name", None)
            pool = settings.router.pick(head.host, server_name)
            if pool is None:
                raise HeadRejected(421, MISDIRECTED)
        self._phase = BODY
        if head.chunked:
            framing = b"Transfer-Encoding: chunked\r\n"
        elif head.content_length is not None and head.content_length != b"0":
            framing = b"Content-Length: " + head.content_length + b"\r\n"
        else:
            framing = b"Content-Length: 0\r\n" if head.content_length is not None else b""
        has_body = bool(framing) and framing != b"Content-Length: 0\r\n"
        target = self._url
        prefix = pool.address.path_prefix
        if target[:1] != b"/" or prefix:
            target = backend_target(target, method=method, host=head.host, prefix=prefix)
        lines = head.lines
        # A switch of protocols (websocket) is asked for with a bodiless HTTP/1.1 request; the
        # backend hears the same question. Anything else loses Upgrade like any hop-by-hop field.
        if head.upgrade is not None and has_body:
            # llhttp hands the body of such a request over as the new protocol's bytes, so
            # forwarding it as a body, or parsing it as HTTP, would both be guesses. Refuse.
            raise HeadRejected(400, "a request asking to switch protocols cannot carry a body")
        upgrade = head.upgrade if not self._http10 else None
        if upgrade is not None and upgrade.strip().lower() == b"h2c":
            upgrade = None  # cleartext HTTP/2 means nothing over TLS (RFC 9113 §3.1): ignored
        if upgrade is not None:
            lines += b"Connection: Upgrade\r\nUpgrade: " + upgrade + b"\r\n"
        if head.host is None:  # HTTP/1.0 may omit Host; HTTP/1.1 to the backend may not
            # The name the client asked for, if it sent one (a route chose by it), else the
            # backend's own address.
            server_name = server_name or getattr(self.transport, "server_name", None)
            host = server_name.encode("ascii") if server_name else pool.address.authority
            lines = b"Host: " + host + b"\r\n" + lines
        request = b"%s %s HTTP/1.1\r\n%s%s\r\n" % (method, target, lines, framing)
        # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 is faulty framing; close after.
        close_after = not keep_alive or (self._http10 and head.chunked) or self._draining
        self._response.start(http10=self._http10, close_after=close_after)
        self.deadline = self._sweeper.now + settings.backend_timeout
        self._started = settings.metrics.seconds()
        exchange = Exchange(
            front=self,
            pool=pool,
            metrics=settings.metrics,
            head=request,
            has_body=has_body,
            chunked=head.chunked,
            head_request=method == b"HEAD",
            upgrade=upgrade is not None,
        )
        self._exchange = exchange
        exchange.start()

    def on_body(self, data: bytes) -> None:
        if self._pipeline is not None:
            self._queue(self.on_body, (data,))
            return
        exchange = self._exchange
        if exchange is not None:
            settings = self._settings
            settings.metrics.request_body_bytes += len(data)
            self.deadline = self._sweeper.now + settings.backend_timeout
            exchange.request_body(data)

    def on_message_complete(self) -> None:
        if self._pipeline is not None:
            self._queue(self.on_message_complete, ())
            return
        self._phase = READ
        if self._exchange is not None:
            trailers = clean_trailers(self._trailers)
            self._exchange.request_complete(trailers)

    def _queue(self, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        if self._pipeline is None:
            self._pipeline = Pipeline()
            self.hold_reading("pipeline")
        self._pipeline.hold(callback, args)

    # -- the exchange's Front --------------------------------------------------------------------

    def send_interim(self, status: int, reason: bytes, headers: list[Header]) -> None:
        self._response.interim(status, reason, headers)

    def send_head(self, status: int, reason: bytes, head: ResponseHead, *, bodyless: bool) -> None:
        self._response.head(status, reason, head, bodyless=bodyless)
        if status != 101:  # the tunnel that follows a 101 keeps its own deadline
            self._progress()

    def send_body(self, data: bytes) -> None:
        self._response.body(data)
        self._progress()

    def send_end(self, trailers: list[Header]) -> None:
        self._response.end(trailers)

    def send_error(self, status: int, message: str) -> None:
        self._response.error(
            status, message, close=self._phase != READ, head_only=self._method == b"HEAD"
        )

    def start_tunnel(self, backend: BackendConnection, backend_data: bytes) -> None:
        """The backend switched protocols: from now on bytes pass both ways untouched."""
        if self._pipeline is not None:  # llhttp read on as HTTP: these bytes are no tunnel's
            self.abort()
            backend.abort()
            return
        self.flush()
        self._log_exchange()
        transport: Any = self.transport
        tunnel_idle = self._settings.tunnel_idle_timeout
        limit = tunnel_idle

        def activity() -> None:
            if limit is not None:
                self.deadline = self._sweeper.now + limit

        def finish_client() -> None:
            # The backend is done sending: close_notify to the client, whose bytes still flow
            # to the backend (relay rule 3), with back-pressure, for as long as it keeps sending.
            nonlocal limit
            limit = tunnel_idle if tunnel_idle is not None else self._settings.idle_timeout
            transport.unregisterProducer()
            transport.loseConnection()
            activity()

        relay = Relay(
            write_client=transport.write,
            write_backend=backend.write,
            close_client=self.close,
            close_backend=backend.close,
            activity=activity,
            finish_client=finish_client,
        )
        self._tunnel = backend.tunnel = relay
        self._phase = TUNNEL
        self.deadline = NEVER
        activity()
        if backend_data:
            relay.from_backend(backend_data)
        client_data, self._upgrade_data = self._upgrade_data, None
        if client_data:
            relay.from_client(client_data)
        self.release_reading("upgrade")

    def flush(self) -> None:
        out = self._response.out
        if out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))  # type: ignore[union-attr]
            out.clear()

    def abort(self) -> None:
        self._log_exchange()
        self._exchange = None
        self._closing = True
        self._response.out.clear()
        self._abort_transport()

    def hold_reading(self, reason: str) -> None:
        if not self._holds:
            self.transport.pauseProducing()  # type: ignore[union-attr]
        self._holds.add(reason)

    def release_reading(self, reason: str) -> None:
        if reason in self._holds:
            self._holds.discard(reason)
            if not self._holds and not self._closing:
                self.transport.resumeProducing()  # type: ignore[union-attr]

    def exchange_ended(self, exchange: Exchange) -> None:
        self.flush()
        self._log_exchange()
        if self._holds:
            self.release_reading("backend")
            self.release_reading("connect")
        if self._phase == READ:
            self._next_request()
        else:  # answered before the request was read to its end (rule 1)
            self.close()

    # -- internals -------------------------------------------------------------------------------

    def _next_request(self) -> None:
        self._exchange = None
        # An idle connection holds nothing of the request it answered.
        self._url = b""
        self._headers = self._trailers = []
        if self._response.close_after:
            self.close()
            return
        if self._upgrade_data is not None:
            # The backend did not switch protocols: what followed the request is HTTP again.
            pending, self._upgrade_data = self._upgrade_data, None
            self._phase = IDLE
            self.deadline = self._sweeper.now + self._settings.idle_timeout
            self.release_reading("upgrade")
            if pending:
                self.dataReceived(pending)
            return
        self._phase = IDLE
        self.deadline = self._sweeper.now + self._settings.idle_timeout
        queued, self._pipeline = self._pipeline, None
        if queued is not None:
            try:
                queued.replay(self._replay_stopped)
            except HeadRejected as rejected:
                self._reject(rejected.status, rejected.reason)
                return
            if self._pipeline is not None:  # the replayed request is running; hold the rest
                self._pipeline.hold_all(queued)
                return
            if self._closing:
                return
        if self._read_nothing_more:
            if self._exchange is None:
                self.close()
            return
        if queued is not None:
            self.release_reading("pipeline")

    def _replay_stopped(self) -> bool:
        return self._pipeline is not None or self._closing

    def _progress(self) -> None:
        if self._exchange is not None and self._tunnel is None:
            self.deadline = self._sweeper.now + self._settings.backend_timeout

    def _reject(self, status: int, reason: str) -> None:
        """Answer a request that must not be forwarded, then close (rule 1)."""
        if self._closing:
            return
        exchange = self._exchange
        if exchange is not None:
            if self._phase == BODY:  # the body being forwarded is broken: stop both sides
                self.abort()
                exchange.front_lost()
            else:  # what follows is broken: answer the complete requests held so far, then close
                held = self._pipeline
                end = self.on_message_complete
                self._pipeline = held.complete_requests(end) if held is not None else None
                self._read_nothing_more = True
                self.hold_reading("rejected")
            return
        response = self._response
        response.error(status, reason, close=True)
        self._settings.metrics.rejected(status, response.size)
        self._log_request(status, response.size, None)
        log.info(
            "rejected a request from {client}: {status} {reason}",
            client=self.client.address.decode() if self.client else "?",
            status=status,
            reason=reason,
        )
        self.close()

    def drain(self) -> None:
        """Shutting down: close now if idle, else after the exchange in flight (rule 4).

        A tunnel is left alone: it has no end to wait for, and the drain deadline closes it.
        """
        if self._closing or self._draining:
            return
        self._draining = True
        if self._tunnel is not None:
            return
        if self._exchange is None and self._phase != HEAD:
            self.close()
            return
        # Sent as Connection: close if the response head has not gone out yet (a head still
        # arriving gets it from _request_head_received); either way _next_request then closes.
        self._response.close_after = True

    def close(self) -> None:
        """Send what is pending, then end the connection with TLS close_notify."""
        self.flush()
        self._closing = True
        self._exchange = None
        # A client that neither reads the rest nor answers TLS close_notify is dropped later.
        self.deadline = self._sweeper.now + self._settings.idle_timeout
        transport: Any = self.transport
        transport.unregisterProducer()  # TLS waits for its producer to go before closing
        transport.loseConnection()

    def _abort_transport(self) -> None:
        # Reset the TCP connection under TLS: TLS's own abort sends close_notify first, which
        # would tell the client that a truncated response ended cleanly.
        transport: Any = self.transport
        getattr(transport, "transport", transport).abortConnection()

    def _log_exchange(self) -> None:
        exchange = self._exchange
        if exchange is not None:
            metrics = self._settings.metrics
            metrics.exchange_ended(exchange.status, self._response.size, self._started)
            if self._settings.access_log is not None:
                duration = metrics.seconds() - self._started
                self._log_request(exchange.status, self._response.size, duration)

    def _log_request(self, status: int, size: int, duration: float | None) -> None:
        access_log = self._settings.access_log
        if access_log is None or self.client is None:
            return
        access_log.record(
            client=self.client.address,
            method=self._method,
            target=self._url,
            version=b"HTTP/1.0" if self._http10 else b"HTTP/1.1",
            status=status,
            size=size,
            headers=self._headers,
            duration=duration,
        )

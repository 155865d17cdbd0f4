"""The backend side: where the backend is, and the HTTP/1.1 client protocol that reads its
responses through the same C parser as the front (the pool of them: :mod:`backendpool`).

Rules:

1. A connection serves one exchange at a time; it returns to the pool only after a complete,
   correctly framed response to a completely sent request, and only if the backend did not ask
   to close.
2. An ``https://`` backend is a TCP connection with TLS under the same parser: the connection is
   handed to an exchange only after the handshake, so a certificate that does not verify is a
   502 saying so (not "closed without answering"), and it is final: the address answered, so
   trying the other loopback address would only hide why.
3. A ``unix:`` backend is a stream socket file; everything above the transport is the same.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httptools
from twisted.internet import error as net_error
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    IProtocolFactory,
)
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from tlsproxy import eagerwrite
from tlsproxy.http.headers import Header, ResponseRejected
from tlsproxy.relay import Relay
from tlsproxy.tls.client import BackendTLS

if TYPE_CHECKING:
    from tlsproxy.backendpool import BackendPool
    from tlsproxy.http.exchange import Exchange


@dataclass(frozen=True)
class BackendAddress:
    """A parsed ``--backend`` URL."""

    url: str  # as the user gave it, for messages
    host: str  # hostname or IP literal, without brackets
    port: int
    path_prefix: bytes  # b"" or b"/prefix" (no trailing slash)
    tls: BackendTLS | None = None  # https:// backends
    socket_path: str | None = None  # unix: backends (absolute); host and port are then unused

    @property
    def authority(self) -> bytes:
        """``host:port`` for a Host header (IPv6 in brackets); ``localhost`` for a unix socket."""
        if self.socket_path is not None:
            return b"localhost"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}".encode("idna")

    def candidates(self) -> list[str]:
        """The hosts to try, in order: ``localhost`` is both loopback addresses."""
        if self.socket_path is not None:
            return [self.socket_path]
        if self.host.lower() in ("localhost", "localhost."):
            return ["127.0.0.1", "::1"]
        return [self.host]


class _HeadResponseDone(Exception):
    """Raised from the parser's callback to end a response to HEAD after its head."""


class _DataAfterResponse(Exception):
    """Raised from the parser's callback when bytes follow a complete response in one read."""


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class BackendConnection(Protocol):
    """HTTP/1.1 to the backend: writes request bytes, parses responses, reports to the exchange.

    A response ends only after the parser has returned (rule 1): inside ``feed_data`` the rest
    of the read is still being parsed, and bytes after the response must not reach whoever
    uses the connection next.
    """

    def __init__(self, pool: BackendPool, *, tls: bool = False) -> None:
        self.pool = pool
        self._tls = tls  # the transport is TLS over TCP: ready only after the handshake
        self.exchange: Exchange | None = None
        self.is_connected = False
        self.idle_since = 0.0
        self.served = 0  # responses completed on this connection
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[Header] = []
        self._trailers: list[Header] | None = None
        self._reason = b""
        self._head_request = False
        self._complete = False  # the response ended in the read being parsed
        self._switching = False  # a 101 head was parsed: a tunnel follows it
        self.tunnel: Relay | None = None
        self._keep_alive = False
        self._paused_front = False
        self._reading_paused = False
        self.on_connected: Callable[[BackendConnection], None] | None = None
        # Called instead of on_connected when the connection ends before it was ready (TLS).
        self.on_failed: Callable[[Failure], None] | None = None

    # -- used by the exchange ------------------------------------------------------------------

    def send(self, exchange: Exchange, data: bytes, *, head_request: bool) -> None:
        """Start an exchange on this connection by writing its request head (and first body)."""
        self.exchange = exchange
        self._head_request = head_request
        self.transport.write(data)  # type: ignore[union-attr]

    def write(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def write_sequence(self, parts: list[bytes]) -> None:
        self.transport.writeSequence(parts)  # type: ignore[union-attr]

    def pause_reading(self) -> None:
        self._reading_paused = True
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]

    def detach(self) -> None:
        """End the exchange's hold on this connection: it reads again, and pauses nobody."""
        self.exchange = None
        self._paused_front = False
        self.resume_reading()

    def close(self) -> None:
        """Send what is pending, then close (the end of a tunnel)."""
        self.transport.loseConnection()  # type: ignore[union-attr]

    def abort(self) -> None:
        self.exchange = None
        if self.is_connected:
            self.transport.abortConnection()  # type: ignore[union-attr]

    # -- Twisted -------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.is_connected = True
        transport: Any = self.transport
        # Under TLS, Nagle and eager sends belong to the socket below (never to the TLS layer,
        # whose write must encrypt); a unix socket has no Nagle.
        raw = transport.transport if self._tls else transport
        if self.pool.address.socket_path is None:
            raw.setTcpNoDelay(True)
        transport.registerProducer(self, True)
        eagerwrite.install(raw)
        if not self._tls:
            self._ready()

    def handshakeCompleted(self) -> None:
        """TLS is up and the certificate verified (rule 2): the connection can carry requests."""
        self._ready()

    def _ready(self) -> None:
        self.on_failed = None
        if self.on_connected is not None:
            on_connected, self.on_connected = self.on_connected, None
            on_connected(self)

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_backend(data)
            return
        exchange = self.exchange
        if exchange is None:
            # Bytes from an idle backend answer nothing we asked: the connection is unusable.
            self.pool.forget(self)
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        extra = False  # bytes followed the end of the response
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, _HeadResponseDone):
                # llhttp cannot be told that a response to HEAD has no body: end it by hand.
                self._parser = httptools.HttpResponseParser(self)
                self._complete = True
                extra = not data.endswith(b"\r\n\r\n")
            elif isinstance(cause, _DataAfterResponse):
                extra = True
            elif isinstance(cause, ResponseRejected):
                exchange.backend_failed(cause.reason)
                return
            else:
                raise
        except httptools.HttpParserUpgrade as e:
            self._switch(exchange, data[e.args[0] :])
            return
        except httptools.HttpParserError as e:
            if self._switching:  # a 101 without "Connection: upgrade": llhttp pauses all the same
                self._switch(exchange, data[data.find(b"\r\n\r\n") + 4 :])
                return
            if not self._complete:
                exchange.backend_failed(f"sent a malformed response ({e})")
                return
            extra = True
        if self._complete:
            self._complete = False
            self.served += 1
            reusable = self._keep_alive and not extra
            exchange.response_complete(self._trailers or [], self, reusable=reusable)
        else:
            exchange.flush()

    def _switch(self, exchange: Exchange, data: bytes) -> None:
        self._complete = self._switching = False
        exchange.switch_protocols(self, data)

    def readConnectionLost(self) -> None:
        """The backend stopped sending (TCP FIN) but may still read: only a tunnel cares."""
        if self.tunnel is not None:
            self.tunnel.backend_finished_sending()
        else:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = net_error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.is_connected = False
        if self.on_failed is not None:  # it never became ready: the TLS handshake failed
            on_failed, self.on_failed, self.on_connected = self.on_failed, None, None
            on_failed(reason)
            return
        if self.tunnel is not None:
            self.exchange = None
            self.tunnel.backend_ended()
            return
        self.pool.forget(self)
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            exchange.backend_closed(self, clean=reason.check(net_error.ConnectionDone) is not None)

    # IPushProducer, registered on our own transport: the backend is slow to read the request.
    def pauseProducing(self) -> None:
        if self.exchange is not None:
            self._paused_front = True
            self.exchange.pause_request_body()

    def resumeProducing(self) -> None:
        if self._paused_front:
            self._paused_front = False
            if self.exchange is not None:
                self.exchange.resume_request_body()

    def stopProducing(self) -> None:
        pass

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            raise _DataAfterResponse
        self._headers = []
        self._trailers = None
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._trailers is None:
            self._headers.append((name, value))
        else:
            self._trailers.append((name, value))

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        status = self._parser.get_status_code()
        if status == 101:
            exchange.response_head(status, self._reason, self._headers)  # refuses an unasked 101
            self._switching = True
            return
        if status < 200:
            exchange.response_interim(status, self._reason, self._headers)
            return
        self._trailers = []
        exchange.response_head(status, self._reason, self._headers)
        if self._head_request:
            self._keep_alive = self._parser.should_keep_alive()
            raise _HeadResponseDone

    def on_body(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.response_body(data)

    def on_message_complete(self) -> None:
        if self._trailers is None:  # the end of a 1xx interim response
            return
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive()


def dial(
    reactor: Any,
    address: BackendAddress,
    host: str,
    factory: IProtocolFactory,
    *,
    timeout: float,
    failed: Callable[[Failure], object],
) -> None:
    """Connect ``factory`` to ``host`` of ``address``: a socket path, an IP address or a name.

    ``connectTCP``/``connectUNIX`` report a failure to the factory; a host name goes through
    ``HostnameEndpoint`` (both families), whose failure is handed to ``failed``. Shared by the
    HTTP pool (:mod:`backendpool`) and raw TCP mode (:mod:`tcpdial`).
    """
    if address.socket_path is not None:
        reactor.connectUNIX(host, factory, timeout=timeout)
        return
    try:
        ipaddress.ip_address(host)
    except ValueError:
        endpoint = HostnameEndpoint(reactor, host.encode("idna"), address.port, timeout=timeout)
        endpoint.connect(factory).addErrback(failed)
        return
    reactor.connectTCP(host, address.port, factory, timeout=timeout)


def describe_connect_failure(reason: Failure) -> str:
    """Why connecting failed, in a few words for a log line or a 502 (raw TCP mode shares it)."""
    if reason.check(net_error.ConnectionRefusedError):
        return "connection refused"
    if reason.check(net_error.TimeoutError, net_error.TCPTimedOutError):
        return "connection timed out"
    if reason.check(net_error.DNSLookupError):
        return "host name not found"
    error = reason.value
    if isinstance(error, net_error.ConnectError) and error.osError == errno.ENOENT:
        return "no socket file at that path"  # unix: the app has not made it (yet)
    if isinstance(error, net_error.ConnectError) and error.osError == errno.EACCES:
        return "permission denied on the socket file (or a directory above it)"
    message = reason.getErrorMessage()
    return message.splitlines()[0] if message else reason.type.__name__  # type: ignore[union-attr]

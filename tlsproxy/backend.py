"""The backend side: where the backend is, a keep-alive pool of connections, and the HTTP/1.1
client protocol that reads its responses through the same C parser as the front.

Rules:

1. A connection serves one exchange at a time; it returns to the pool only after a complete,
   correctly framed response to a completely sent request, and only if the backend did not ask
   to close.
2. Idle connections are kept LIFO (the warmest first) and dropped after ``IDLE_SECONDS``: many app
   servers close idle keep-alive connections after 2-5 s, and a request sent on a connection the
   backend is closing fails. The exchange retries such a failure once, for a request without body.
3. ``localhost`` means 127.0.0.1 or ::1, whichever the app listens on: both are tried, and the one
   that answered is tried first next time.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httptools
from twisted.internet import error as net_error
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure

from tlsproxy import eagerwrite
from tlsproxy.http.headers import Header

if TYPE_CHECKING:
    from tlsproxy.http.exchange import Exchange

IDLE_SECONDS = 2.0
MAX_IDLE_CONNECTIONS = 256


@dataclass(frozen=True)
class BackendAddress:
    """A parsed ``--backend`` URL."""

    url: str  # as the user gave it, for messages
    host: str  # hostname or IP literal, without brackets
    port: int
    path_prefix: bytes  # b"" or b"/prefix" (no trailing slash)

    def candidates(self) -> list[str]:
        """The hosts to try, in order: ``localhost`` is both loopback addresses."""
        if self.host.lower() in ("localhost", "localhost."):
            return ["127.0.0.1", "::1"]
        return [self.host]


class _HeadResponseDone(Exception):
    """Raised from the parser's callback to end a response to HEAD after its head."""


class BackendConnection(Protocol):
    """HTTP/1.1 to the backend: writes request bytes, parses responses, reports to the exchange."""

    def __init__(self, pool: BackendPool) -> None:
        self.pool = pool
        self.exchange: Exchange | None = None
        self.connected_ = False
        self.idle_since = 0.0
        self.served = 0  # responses completed on this connection
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[Header] = []
        self._trailers: list[Header] | None = None
        self._reason = b""
        self._head_request = False
        self._paused_front = False
        self._reading_paused = False
        self.on_connected: Callable[[BackendConnection], None] | None = None

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

    def abort(self) -> None:
        self.exchange = None
        if self.connected_:
            self.transport.abortConnection()  # type: ignore[union-attr]

    # -- Twisted -------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.connected_ = True
        transport: Any = self.transport
        transport.setTcpNoDelay(True)
        transport.registerProducer(self, True)
        eagerwrite.install(transport)
        if self.on_connected is not None:
            on_connected, self.on_connected = self.on_connected, None
            on_connected(self)

    def dataReceived(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            # Bytes from an idle backend answer nothing we asked: the connection is unusable.
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            if not isinstance(e.__context__, _HeadResponseDone):
                raise
            # llhttp cannot be told that a response to HEAD has no body: end it by hand, and
            # reuse the connection only if nothing followed the head in this read.
            keep_alive = self._parser.should_keep_alive()
            self._parser = httptools.HttpResponseParser(self)
            self._message_complete(reusable=keep_alive and data.endswith(b"\r\n\r\n"))
        except httptools.HttpParserUpgrade:
            exchange.backend_failed("answered with an upgrade nobody asked for")
        except httptools.HttpParserError as e:
            exchange.backend_failed(f"sent a malformed response ({e})")
        exchange.flush()

    def connectionLost(self, reason: Failure = net_error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.connected_ = False
        self.pool.forget(self)
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            exchange.backend_closed(self)

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
        if status < 200 and status != 101:
            exchange.response_interim(status, self._reason, self._headers)
            return
        self._trailers = []
        keep_alive = self._parser.should_keep_alive()
        exchange.response_head(status, self._reason, self._headers, backend_keep_alive=keep_alive)
        if self._head_request:
            raise _HeadResponseDone

    def on_body(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.response_body(data)

    def on_message_complete(self) -> None:
        if self._trailers is None:  # the end of a 1xx interim response
            return
        self._message_complete(reusable=self._parser.should_keep_alive())

    def _message_complete(self, *, reusable: bool) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        self.served += 1
        exchange.response_complete(self._trailers or [], self, reusable=reusable)


class _Attempt(ClientFactory):
    """One connection attempt on behalf of one exchange; reports the outcome to the pool.

    ``connectTCP`` with this factory, not an endpoint: an endpoint puts a wrapping protocol
    between the transport and ours, one more Python call on every read of every response.
    """

    noisy = False

    def __init__(self, pool: BackendPool, exchange: Exchange, index: int) -> None:
        self.pool = pool
        self.exchange = exchange
        self.index = index

    def buildProtocol(self, addr: Any) -> BackendConnection:
        connection = BackendConnection(self.pool)
        connection.on_connected = self._connected
        return connection

    def _connected(self, connection: BackendConnection) -> None:
        self.pool._connected(self.exchange, self.index, connection)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.pool._failed(self.exchange, self.index, reason)


class BackendPool:
    """Keep-alive connections to one backend, handed to one exchange at a time."""

    def __init__(
        self,
        *,
        reactor: IReactorTCP,
        clock: IReactorTime,
        address: BackendAddress,
        connect_timeout: float,
    ) -> None:
        self.address = address
        self._reactor = reactor
        self._clock = clock
        self._connect_timeout = connect_timeout
        self._idle: list[BackendConnection] = []
        self._hosts = address.candidates()

    def acquire(self, exchange: Exchange) -> None:
        """Give ``exchange`` a connection, now (``backend_ready``) or when one is made."""
        idle = self._idle
        if idle:
            too_old = self._clock.seconds() - IDLE_SECONDS
            while idle:
                connection = idle.pop()
                if connection.idle_since >= too_old:
                    exchange.backend_ready(connection)
                    return
                connection.transport.loseConnection()  # type: ignore[union-attr]
        self._connect(exchange, 0)

    def release(self, connection: BackendConnection) -> None:
        """Take back a connection whose exchange ended cleanly."""
        connection.detach()
        if not connection.connected_:
            return
        if len(self._idle) >= MAX_IDLE_CONNECTIONS:
            connection.transport.loseConnection()  # type: ignore[union-attr]
            return
        connection.idle_since = self._clock.seconds()
        self._idle.append(connection)

    def forget(self, connection: BackendConnection) -> None:
        if connection in self._idle:
            self._idle.remove(connection)

    def close_idle(self) -> None:
        while self._idle:
            self._idle.pop().transport.loseConnection()  # type: ignore[union-attr]

    def _connect(self, exchange: Exchange, index: int) -> None:
        host, port = self._hosts[index], self.address.port
        attempt = _Attempt(self, exchange, index)
        try:
            ipaddress.ip_address(host)
        except ValueError:  # a host name: let the endpoint resolve it (both families)
            endpoint = HostnameEndpoint(
                self._reactor, host.encode("idna"), port, timeout=self._connect_timeout
            )
            endpoint.connect(attempt).addErrback(
                lambda reason: self._failed(exchange, index, reason)
            )
            return
        self._reactor.connectTCP(host, port, attempt, timeout=self._connect_timeout)

    def _connected(self, exchange: Exchange, index: int, connection: BackendConnection) -> None:
        if index:  # remember which address answered (rule 3)
            self._hosts.insert(0, self._hosts.pop(index))
        exchange.backend_ready(connection)

    def _failed(self, exchange: Exchange, index: int, reason: Failure) -> None:
        if index + 1 < len(self._hosts):
            self._connect(exchange, index + 1)
        else:
            exchange.backend_unavailable(_describe_connect_failure(reason))


def _describe_connect_failure(reason: Failure) -> str:
    if reason.check(net_error.ConnectionRefusedError):
        return "connection refused"
    if reason.check(net_error.TimeoutError, net_error.TCPTimedOutError):
        return "connection timed out"
    if reason.check(net_error.DNSLookupError):
        return "host name not found"
    message = reason.getErrorMessage()
    return message.splitlines()[0] if message else reason.type.__name__  # type: ignore[union-attr]

"""An in-memory proxy for unit tests: a real front, a real pool, and no sockets or reactor.

``Proxy`` wires an :class:`H1Connection` to a real :class:`BackendPool` whose reactor is a
``MemoryReactorClock``, with a real :class:`DeadlineSweeper` on the same clock. The test plays
both the client and the backend::

    proxy = Proxy()
    client = proxy.connect()
    client.send(b"GET / HTTP/1.1\\r\\nHost: example.com\\r\\n\\r\\n")
    backend = proxy.accept()              # completes the connectTCP the pool asked for
    assert backend.received().startswith(b"GET / HTTP/1.1\\r\\n")
    backend.send(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nhi")
    assert client.received().endswith(b"\\r\\n\\r\\nhi")

Closing follows Twisted: ``loseConnection``/``abortConnection`` on either transport only
schedules ``connectionLost`` (``callLater(0)``, as ``tcp.Connection.abortConnection`` does), so a
test sees the state in between and delivers the loss with ``proxy.clock.advance(0)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from io import BytesIO, StringIO
from typing import Any

from twisted.internet import error as net_error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IProtocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from tlsproxy.accesslog import AccessLog
from tlsproxy.backend import BackendConnection
from tlsproxy.backendoptions import parse_backend
from tlsproxy.backendpool import BackendPool
from tlsproxy.deadline import DeadlineSweeper
from tlsproxy.http.h1 import FrontSettings, H1Connection
from tlsproxy.http.headers import IPNetwork
from tlsproxy.metrics import Metrics
from tlsproxy.routing import Router

Address = IPv4Address | IPv6Address

HEADER_TIMEOUT = 10.0
IDLE_TIMEOUT = 60.0
BACKEND_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0
FRONT_PORT = 8443


def address(host: str, port: int) -> Address:
    """A TCP address object of the right family for ``host``."""
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


class MemoryTransport(StringTransport):
    """A ``StringTransport`` that also behaves like a TCP transport where the code relies on it.

    It records ``setTcpNoDelay``, tolerates pause/resume after ``loseConnection`` (as real
    transports do), and schedules ``connectionLost`` on its protocol when closed.
    """

    def __init__(self, *, clock: MemoryReactorClock, host: Address, peer: Address) -> None:
        super().__init__(hostAddress=host, peerAddress=peer, lenient=True)  # type: ignore[no-untyped-call]
        self.clock = clock
        self.protocol: IProtocol | None = None
        self.tcp_no_delay = False
        self.lost: Failure | None = None  # set once connectionLost has been delivered
        # Where the loss goes instead of our own protocol: the TCP under a TLS transport tells
        # the TLS transport, which tells the application protocol.
        self.on_loss: Callable[[Failure], None] | None = None
        self.late_writes: list[bytes] = []  # written after connectionLost: dropped, but noted
        self._loss_scheduled = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.tcp_no_delay = enabled

    def loseConnection(self) -> None:
        super().loseConnection()  # type: ignore[no-untyped-call]
        self._schedule_loss(Failure(net_error.ConnectionDone()))

    def abortConnection(self) -> None:
        self.disconnected = True
        super().loseConnection()  # type: ignore[no-untyped-call]
        self._schedule_loss(Failure(net_error.ConnectionAborted()))

    def write(self, data: bytes) -> None:
        if self.lost is None:
            super().write(data)  # type: ignore[no-untyped-call]
        else:  # a closed transport drops writes, like a real one
            self.late_writes.append(data)

    def writeSequence(self, data: Sequence[bytes]) -> None:
        self.write(b"".join(data))

    def take(self) -> bytes:
        """Everything written since the last call."""
        data: bytes = self.io.getvalue()
        self.io = BytesIO()
        return data

    @property
    def paused(self) -> bool:
        return bool(self.producerState == "paused")

    def deliver_loss(self, reason: Failure) -> None:
        """Tell the protocol the connection is gone (at most once)."""
        if self.lost is None and self.protocol is not None:
            self.lost = reason
            self.connected = False
            self.protocol.connectionLost(reason)

    def _schedule_loss(self, reason: Failure) -> None:
        if not self._loss_scheduled:
            self._loss_scheduled = True
            self.clock.callLater(0, self.on_loss or self.deliver_loss, reason)


@dataclass
class Client:
    """The client end of one front connection: ``transport`` stands for TLS, ``tcp`` for the
    TCP connection under it (``transport.transport``, as on a ``TLSMemoryBIOProtocol``)."""

    protocol: H1Connection
    transport: MemoryTransport
    tcp: MemoryTransport

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def received(self) -> bytes:
        """Everything written to the client since the last call."""
        return self.transport.take()

    def leave(self) -> None:
        """The client goes away (TCP reset or close) without being asked."""
        self.transport.deliver_loss(Failure(net_error.ConnectionLost()))

    @property
    def closing(self) -> bool:
        """The proxy asked to close this connection (cleanly or not, at either layer)."""
        return bool(self.transport.disconnecting or self.tcp.disconnecting)

    @property
    def aborted(self) -> bool:
        """The proxy aborted this connection (no clean close), at either layer."""
        return bool(self.transport.disconnected or self.tcp.disconnected)

    @property
    def reset(self) -> bool:
        """The TCP connection was aborted under TLS: no close_notify says the data was complete."""
        return bool(self.tcp.disconnected)

    @property
    def reading_paused(self) -> bool:
        return self.transport.paused


@dataclass
class Backend:
    """The backend end of one pool connection."""

    protocol: IProtocol  # what the endpoint built: a wrapper around the BackendConnection
    connection: BackendConnection
    transport: MemoryTransport

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def received(self) -> bytes:
        """Everything the proxy wrote to this backend connection since the last call."""
        return self.transport.take()

    def close(self) -> None:
        """The backend closes the connection."""
        self.transport.deliver_loss(Failure(net_error.ConnectionDone()))

    def die(self) -> None:
        """The backend connection breaks (reset)."""
        self.transport.deliver_loss(Failure(net_error.ConnectionLost()))

    @property
    def closing(self) -> bool:
        return bool(self.transport.disconnecting)

    @property
    def aborted(self) -> bool:
        return bool(self.transport.disconnected)

    @property
    def reading_paused(self) -> bool:
        return self.transport.paused


@dataclass
class Proxy:
    """A front, a pool and a sweeper on one ``MemoryReactorClock``; see the module docstring."""

    backend_url: str = "http://127.0.0.1:8000"
    trusted_proxies: tuple[IPNetwork, ...] = ()
    header_timeout: float = HEADER_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    backend_timeout: float = BACKEND_TIMEOUT
    connect_timeout: float = CONNECT_TIMEOUT
    max_header_bytes: int = 64 * 1024
    log_access: bool = False
    clock: MemoryReactorClock = field(default_factory=MemoryReactorClock)
    closed: list[H1Connection] = field(default_factory=list)

    def __post_init__(self) -> None:
        address_ = parse_backend(self.backend_url)
        self.pool = BackendPool(
            reactor=self.clock,
            clock=self.clock,
            address=address_,
            connect_timeout=self.connect_timeout,
        )
        self.sweeper = DeadlineSweeper(clock=self.clock)
        self.log_stream = StringIO()
        self.access_log = AccessLog(self.log_stream, clock=_WallClock(self.clock))
        self.metrics = Metrics(seconds=self.clock.seconds)  # durations move with clock.advance
        self.settings = FrontSettings(
            router=Router(self.pool),
            sweeper=self.sweeper,
            trusted_proxies=self.trusted_proxies,
            header_timeout=self.header_timeout,
            idle_timeout=self.idle_timeout,
            backend_timeout=self.backend_timeout,
            max_header_bytes=self.max_header_bytes,
            access_log=self.access_log if self.log_access else None,
            metrics=self.metrics,
        )
        self._connects_handled = 0

    # -- the client side -------------------------------------------------------------------------

    def connect(self, peer: str = "203.0.113.7", *, peer_port: int = 50123) -> Client:
        """A new client connection from ``peer`` to the front on port 8443."""
        protocol = H1Connection(self.settings, self.closed.append)
        host = address("127.0.0.1" if ":" not in peer else "::1", FRONT_PORT)
        transport = MemoryTransport(clock=self.clock, host=host, peer=address(peer, peer_port))
        tcp = MemoryTransport(clock=self.clock, host=host, peer=address(peer, peer_port))
        tcp.on_loss = transport.deliver_loss
        transport.transport = tcp  # type: ignore[attr-defined]
        transport.protocol = protocol
        protocol.makeConnection(transport)  # type: ignore[no-untyped-call]
        return Client(protocol, transport, tcp)

    # -- the backend side ------------------------------------------------------------------------

    @property
    def connects(self) -> list[tuple[Any, ...]]:
        """Every ``connectTCP`` the pool made: ``(host, port, factory, timeout, bindAddress)``."""
        return list(self.clock.tcpClients)

    @property
    def pending_connects(self) -> int:
        """Connection attempts the test has neither accepted nor refused yet."""
        return len(self.clock.tcpClients) - self._connects_handled

    def accept(self) -> Backend:
        """Complete the oldest pending connection attempt; the backend is now connected."""
        host, port, factory, _timeout, _bind = self._next_connect()
        protocol = factory.buildProtocol(address(host, port))
        transport = MemoryTransport(
            clock=self.clock, host=address("127.0.0.1", 40000), peer=address(host, port)
        )
        transport.protocol = protocol
        protocol.makeConnection(transport)
        connection = getattr(protocol, "_wrappedProtocol", protocol)
        assert isinstance(connection, BackendConnection)
        return Backend(protocol, connection, transport)

    def refuse(self, reason: Exception | None = None) -> None:
        """Fail the oldest pending connection attempt (connection refused by default)."""
        index = self._connects_handled
        _host, _port, factory, _timeout, _bind = self._next_connect()
        connector = self.clock.connectors[index]
        factory.clientConnectionFailed(
            connector, Failure(reason or net_error.ConnectionRefusedError())
        )

    def _next_connect(self) -> tuple[Any, ...]:
        assert self.pending_connects > 0, "the pool has not asked for a backend connection"
        attempt = self.clock.tcpClients[self._connects_handled]
        self._connects_handled += 1
        return tuple(attempt)

    # -- conveniences ----------------------------------------------------------------------------

    def log_lines(self) -> list[str]:
        return self.log_stream.getvalue().splitlines()


@dataclass
class _WallClock:
    """``time.time`` for the access log, driven by the test clock (which starts at 0)."""

    clock: MemoryReactorClock
    epoch: float = 1_780_315_200.0  # 2026-06-01 12:00:00 UTC

    def time(self) -> float:
        return self.epoch + self.clock.seconds()


def request(
    target: bytes = b"/",
    *,
    method: bytes = b"GET",
    host: bytes | None = b"example.com",
    headers: Sequence[bytes] = (),
    body: bytes = b"",
    version: bytes = b"HTTP/1.1",
) -> bytes:
    """A request in wire form; give ``headers`` as complete ``b"Name: value"`` lines."""
    lines = [b"%s %s %s" % (method, target, version)]
    if host is not None:
        lines.append(b"Host: " + host)
    lines += headers
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def response(
    status: bytes = b"200 OK",
    *,
    headers: Sequence[bytes] = (),
    body: bytes = b"",
    content_length: bool = True,
) -> bytes:
    """A backend response; ``Content-Length`` is added for ``body`` unless told not to."""
    lines = [b"HTTP/1.1 " + status, *headers]
    if content_length:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def split_head(data: bytes) -> tuple[list[bytes], bytes]:
    """``(head lines without CRLF, rest)`` of one HTTP message."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no complete head in {data!r}"
    return head.split(b"\r\n"), rest


def header_values(data: bytes, name: bytes) -> list[bytes]:
    """The values of every ``name`` header in the first head of ``data``, in order."""
    lines, _ = split_head(data)
    wanted = name.lower()
    return [
        line.split(b":", 1)[1].strip()
        for line in lines[1:]
        if line.split(b":", 1)[0].lower() == wanted
    ]

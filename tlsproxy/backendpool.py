"""A keep-alive pool of backend connections, one per backend (``--backend``, each ``--route``).

Rules:

1. Idle connections are kept LIFO (the warmest first) and dropped after ``IDLE_SECONDS``: app
   servers close idle keep-alive connections after 2 s (gunicorn) to 5 s (Node, uvicorn), and a
   request sent on a connection the backend is closing fails. The exchange retries such a
   failure once, for a request without body. At most ``MAX_IDLE_CONNECTIONS`` wait.
2. ``localhost`` means 127.0.0.1 or ::1, whichever the app listens on: both are tried, and the one
   that answered is tried first next time.

3. An ``https://`` address that answered but failed TLS is final (rule 2 of
   :mod:`tlsproxy.backend`): trying the other loopback address would only hide why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IProtocolFactory, IReactorTCP, IReactorTime
from twisted.internet.protocol import ClientFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from tlsproxy.backend import BackendAddress, BackendConnection, describe_connect_failure, dial
from tlsproxy.tls.client import client_tls, describe_tls_failure

if TYPE_CHECKING:
    from tlsproxy.http.exchange import Exchange

IDLE_SECONDS = 1.0
MAX_IDLE_CONNECTIONS = 64


class _Attempt(ClientFactory):
    """Connecting to one backend address on behalf of one exchange; the rest come after it.

    ``connectTCP`` with this factory, not an endpoint: an endpoint puts a wrapping protocol
    between the transport and ours, one more Python call on every read of every response.
    """

    noisy = False

    def __init__(self, pool: BackendPool, exchange: Exchange, hosts: tuple[str, ...]) -> None:
        self.pool = pool
        self.exchange = exchange
        self.hosts = hosts  # this one first; each exchange keeps its own order (rule 2)

    def buildProtocol(self, addr: Any) -> BackendConnection:
        tls = self.pool.address.tls
        connection = BackendConnection(self.pool, tls=tls is not None)
        connection.on_connected = self._connected
        if tls is not None:
            connection.on_failed = self._handshake_failed
        return connection

    def _connected(self, connection: BackendConnection) -> None:
        self.pool.prefer(self.hosts[0])
        self.exchange.backend_ready(connection)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.failed(reason)

    def _handshake_failed(self, reason: Failure) -> None:
        """Final (rule 3): this address answered, so it is the backend, and it failed TLS."""
        if self.exchange.response_done:  # the client left while we were connecting
            return
        tls = self.pool.address.tls
        assert tls is not None
        self.exchange.backend_failed(describe_tls_failure(reason, tls, port=self.pool.address.port))

    def failed(self, reason: Failure) -> None:
        if len(self.hosts) > 1:
            self.pool.connect(self.exchange, self.hosts[1:])
        else:
            self.exchange.backend_unavailable(describe_connect_failure(reason))


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
        self._client_tls = client_tls(address.tls) if address.tls is not None else None

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
        self.connect(exchange, tuple(self._hosts))

    def release(self, connection: BackendConnection) -> None:
        """Take back a connection whose exchange ended cleanly."""
        connection.detach()
        if not connection.is_connected:
            return
        now = self._clock.seconds()
        idle = self._idle
        while idle and idle[0].idle_since < now - IDLE_SECONDS:  # the stalest, at the bottom
            idle.pop(0).transport.loseConnection()  # type: ignore[union-attr]
        if len(idle) >= MAX_IDLE_CONNECTIONS:
            connection.transport.loseConnection()  # type: ignore[union-attr]
            return
        connection.idle_since = now
        idle.append(connection)

    def forget(self, connection: BackendConnection) -> None:
        if connection in self._idle:
            self._idle.remove(connection)

    def close_idle(self) -> None:
        while self._idle:
            self._idle.pop().transport.loseConnection()  # type: ignore[union-attr]

    def prefer(self, host: str) -> None:
        """Try ``host`` first from now on: it answered (rule 2)."""
        if self._hosts[0] != host:
            self._hosts.remove(host)
            self._hosts.insert(0, host)

    def connect(self, exchange: Exchange, hosts: tuple[str, ...]) -> None:
        """Open a new connection for ``exchange``, trying ``hosts`` in order."""
        attempt = _Attempt(self, exchange, hosts)
        factory: IProtocolFactory = attempt
        if self._client_tls is not None:
            # What connectSSL does, but usable with an endpoint too: one path for both.
            factory = TLSMemoryBIOFactory(self._client_tls, True, attempt)
        dial(
            self._reactor,
            self.address,
            hosts[0],
            factory,
            timeout=self._connect_timeout,
            failed=attempt.failed,
        )

"""``--mode tcp``'s backend side: dialling the backend (each candidate address in turn) and the
plain connection to it, which feeds the front's relay and follows its back-pressure."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from tlsproxy.backend import BackendAddress, describe_connect_failure, dial

if TYPE_CHECKING:
    from tlsproxy.tcpmode import TcpFront

__all__ = ["BackendSide", "connect"]


@implementer(IHalfCloseableProtocol)
class BackendSide(Protocol):
    """The plain TCP (or unix socket) connection to the backend, for one :class:`TcpFront`."""

    def __init__(self, front: TcpFront) -> None:
        self._front = front
        self._reading_paused = False
        self._closed = False  # loseConnection was called: the relay and the front both may
        self._producing = False  # registered as the producer on our own transport

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.registerProducer(self, True)
        self._producing = True
        self._front.backend_connected(self)

    def dataReceived(self, data: bytes) -> None:
        relay = self._front.relay
        if relay is not None:
            relay.from_backend(data)

    def readConnectionLost(self) -> None:
        self._front.backend_finished_sending()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.transport = None
        self._front.backend_lost()

    # IPushProducer on the backend's transport: the backend is slow to read what we send it.
    def pauseProducing(self) -> None:
        self._front.hold_reading("backend")

    def resumeProducing(self) -> None:
        self._front.release_reading("backend")

    def stopProducing(self) -> None:
        pass

    # -- used by the front -----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def hold_reading(self) -> None:
        if self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def release_reading(self) -> None:
        if self.transport is not None and self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def finish_sending(self) -> None:
        """FIN after what is buffered, keep reading; a transport that cannot half-close closes."""
        transport: Any = self.transport
        if transport is None or self._closed:
            return
        self._stop_producing_for(transport)
        half_close = getattr(transport, "loseWriteConnection", None)
        (half_close or transport.loseConnection)()

    def close(self) -> None:
        transport: Any = self.transport
        if transport is not None and not self._closed:
            self._closed = True
            self._stop_producing_for(transport)
            transport.loseConnection()

    def _stop_producing_for(self, transport: Any) -> None:
        # Nothing more will be written: the back-pressure wiring can go (TCP waits for it).
        if self._producing:
            self._producing = False
            transport.unregisterProducer()


class _Attempt(ClientFactory):
    """Dialling one backend address for one front; on failure the next candidate is tried."""

    noisy = False

    def __init__(self, front: TcpFront, address: BackendAddress, hosts: tuple[str, ...]) -> None:
        self.front = front
        self.address = address
        self.hosts = hosts

    def buildProtocol(self, addr: Any) -> BackendSide:
        return BackendSide(self.front)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.failed(reason)

    def failed(self, reason: Failure) -> None:
        if len(self.hosts) > 1 and not self.front.closing:
            connect(self.front, self.address, self.hosts[1:])
        else:
            self.front.backend_failed(self.address, describe_connect_failure(reason))


def connect(front: TcpFront, address: BackendAddress, hosts: tuple[str, ...]) -> None:
    """Dial ``hosts[0]`` (a socket path, an IP address or a host name) for ``front``."""
    settings = front.settings
    attempt = _Attempt(front, address, hosts)
    dial(
        settings.reactor,
        address,
        hosts[0],
        attempt,
        timeout=settings.connect_timeout,
        failed=attempt.failed,
    )

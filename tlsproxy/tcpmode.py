"""``--mode tcp``: TLS from the client, then raw bytes to the backend, both ways (stunnel-like).

Rules:

1. The backend is dialled when the TLS handshake completes, not when TCP connects: a scanner
   or a client that fails the handshake never reaches the backend (nor makes it log a PROXY
   header). Until the backend connection is up the client is not read (``pauseProducing``);
   the bytes already decrypted in that read are kept and sent first, in order.
2. With ``--send-proxy-protocol`` the PROXY header is the first write to the backend: the
   source is the client as ``getPeer`` tells it (the real client behind ``--proxy-protocol``),
   the destination our own address.
3. Bytes move through :class:`tlsproxy.relay.Relay`, the relay websockets use. Back-pressure is
   producer wiring: a side whose send buffer fills pauses reading on the other side.
4. Half-close: the backend's FIN becomes TLS close_notify to the client, which may go on
   sending. A client that ends its sending side cleanly (``readConnectionLost``) becomes a
   FIN to the backend, which may go on answering.
5. Deadlines: ``--header-timeout`` for the handshake, ``--tunnel-idle-timeout`` (default: none)
   for silence both ways, ``--idle-timeout`` for a peer that stopped reading or a close that
   is not answered. Connecting is bounded by ``--connect-timeout``.
6. Shutdown (:meth:`TcpFront.drain`): a connection not yet relaying closes at once; a relaying
   one has no natural end to wait for, so it is left to finish until ``--drain-timeout``.
7. ``--route NAME=BACKEND`` chooses the backend by the SNI name the client sent (exact, then
   wildcard); a client that sent none, or a name with no route, goes to ``--backend``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tlsproxy import proxyproto
from tlsproxy.backend import BackendAddress
from tlsproxy.deadline import NEVER, DeadlineSweeper
from tlsproxy.names import NameTable, normalise
from tlsproxy.relay import Relay
from tlsproxy.tcpdial import BackendSide, connect  # the backend side (dialling, its socket)

log = Logger()


@dataclass(frozen=True)
class TcpSettings:
    """What every tcp-mode front connection shares, fixed at startup."""

    reactor: Any  # IReactorTCP and IReactorUNIX (and IReactorTime for the endpoint)
    backend: BackendAddress
    sweeper: DeadlineSweeper
    handshake_timeout: float
    connect_timeout: float
    idle_timeout: float
    tunnel_idle_timeout: float | None = None
    send_proxy_protocol: str | None = None  # "v1" or "v2" (checked in config)
    routes: NameTable[BackendAddress] = field(default_factory=NameTable)  # --route, by SNI name

    def backend_for(self, server_name: str | None) -> BackendAddress:
        """The backend for a client that sent ``server_name`` by SNI (rule 7)."""
        if server_name is not None and self.routes:
            routed = self.routes.lookup(normalise(server_name))
            if routed is not None:
                return routed
        return self.backend


def _end_of(address: Any) -> tuple[str, int] | None:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return (host, port) if isinstance(host, str) and isinstance(port, int) else None


@implementer(IHandshakeListener, IHalfCloseableProtocol)
class TcpFront(Protocol):
    """One client connection in ``--mode tcp``: TLS in front, a plain byte stream behind."""

    def __init__(self, settings: TcpSettings, on_close: Callable[[TcpFront], None]) -> None:
        self.settings = settings
        self._sweeper = settings.sweeper
        self._on_close = on_close
        self._pending: list[bytes] | None = None  # read before the backend connected (rule 1)
        self._client_finished = False  # the client ended its sending side while we connected
        self._backend: BackendSide | None = None
        self.relay: Relay | None = None
        self._holds: set[str] = set()  # why the client is not being read now
        self.closing = False
        self._draining = False
        self._idle_limit = settings.tunnel_idle_timeout
        self.write_paused = False
        self.deadline = NEVER

    # -- Twisted: the client side ----------------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.registerProducer(self, True)
        self._sweeper.track(self)
        self.deadline = self._sweeper.now + self.settings.handshake_timeout

    def handshakeCompleted(self) -> None:
        """TLS is up: hold the client's bytes and dial the backend (rule 1)."""
        if self.closing:
            return
        self._pending = []
        self.hold_reading("connecting")
        self.deadline = NEVER  # --connect-timeout bounds what follows
        transport: Any = self.transport
        backend = self.settings.backend_for(getattr(transport, "server_name", None))
        connect(self, backend, tuple(backend.candidates()))

    def dataReceived(self, data: bytes) -> None:
        if self.relay is not None:
            self.relay.from_client(data)
        elif self._pending is not None:
            self._pending.append(data)

    def readConnectionLost(self) -> None:
        """The client ended its sending side cleanly: the backend gets a FIN (rule 4)."""
        relay, backend = self.relay, self._backend
        if relay is None or backend is None:
            if self._pending is None:  # still handshaking, or already closing
                self.close()
            else:  # connecting: the FIN follows the bytes kept for the backend
                self._client_finished = True
            return
        relay.backend_open = False
        backend.finish_sending()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closing = True
        self._sweeper.untrack(self)
        self._pending = None
        if self.relay is not None:
            self.relay.client_ended()
        if self._backend is not None:  # connecting, or half-closed towards it (rule 4)
            self._backend.close()
        self._on_close(self)

    # IPushProducer on the client's transport: the client is slow to read what we send it.
    def pauseProducing(self) -> None:
        self.write_paused = True
        self.deadline = self._sweeper.now + self.settings.idle_timeout
        if self._backend is not None:
            self._backend.hold_reading()

    def resumeProducing(self) -> None:
        self.write_paused = False
        self.deadline = NEVER
        self.activity()
        if self._backend is not None:
            self._backend.release_reading()

    def stopProducing(self) -> None:
        pass

    # -- deadlines and shutdown ------------------------------------------------------------------

    def activity(self) -> None:
        """Traffic either way: the idle deadline moves (relay rule 4)."""
        if self._idle_limit is not None and not self.write_paused:
            self.deadline = self._sweeper.now + self._idle_limit

    def deadline_passed(self, now: float) -> None:
        self.deadline = NEVER
        if self.closing or self.write_paused:  # not reading, or not answering our close
            self._abort_transport()
            return
        if self.relay is not None:
            log.info(
                "closed an idle tcp connection from {client} (--tunnel-idle-timeout)",
                client=self.client_address(),
            )
        self.close()

    def drain(self) -> None:
        """Shutting down: close now unless bytes are being relayed (rule 6)."""
        if self.closing or self._draining:
            return
        self._draining = True
        if self.relay is None:
            self.close()

    def close(self) -> None:
        """End the client connection with TLS close_notify, and the backend's with a FIN."""
        if self.closing:
            return
        self.closing = True
        self.deadline = self._sweeper.now + self.settings.idle_timeout
        if self.relay is not None:
            self.relay.client_open = False
        if self._backend is not None:
            self._backend.close()
        transport: Any = self.transport
        transport.unregisterProducer()  # TLS waits for its producer to go before closing
        transport.loseConnection()

    def client_address(self) -> str:
        end = _end_of(self.transport.getPeer())  # type: ignore[union-attr]
        return f"{end[0]}:{end[1]}" if end is not None else "a unix socket peer"

    # -- reading the client ----------------------------------------------------------------------

    def hold_reading(self, reason: str) -> None:
        if not self._holds:
            self.transport.pauseProducing()  # type: ignore[union-attr]
        self._holds.add(reason)

    def release_reading(self, reason: str) -> None:
        if reason not in self._holds:
            return
        self._holds.discard(reason)
        if not self._holds and not self.closing:
            self.transport.resumeProducing()  # type: ignore[union-attr]

    # -- the backend side ------------------------------------------------------------------------

    def backend_connected(self, backend: BackendSide) -> None:
        """The backend answered: PROXY header, then what the client sent, then relay (rules 1-3)."""
        if self.closing:
            backend.close()
            return
        self._backend = backend
        version = self.settings.send_proxy_protocol
        if version is not None:
            transport: Any = self.transport
            backend.write(
                proxyproto.header_for(
                    version, _end_of(transport.getPeer()), _end_of(transport.getHost())
                )
            )
        relay = self.relay = Relay(
            write_client=self.transport.write,  # type: ignore[union-attr]
            write_backend=backend.write,
            close_client=self.close,
            close_backend=backend.close,
            activity=self.activity,
            finish_client=self._finish_client,
        )
        self.deadline = NEVER
        self.activity()
        pending, self._pending = self._pending or [], None
        if pending:
            relay.from_client(b"".join(pending))
        if self._client_finished:
            self.readConnectionLost()
        self.release_reading("connecting")

    def backend_failed(self, backend: BackendAddress, why: str) -> None:
        """``backend`` could not be reached (refused, timed out): the client is closed."""
        self._backend = None
        if self.closing:
            return
        log.info(
            "closed a tcp connection from {client}: the backend {backend} could not be "
            "reached ({why})",
            client=self.client_address(),
            backend=backend.url,  # the one dialled: --route may have chosen another
            why=why,
        )
        self.close()

    def backend_finished_sending(self) -> None:
        if self.relay is not None:
            self.relay.backend_finished_sending()

    def backend_lost(self) -> None:
        self._backend = None
        if self.relay is not None:
            self.relay.backend_ended()
        elif not self.closing:
            self.close()

    def _finish_client(self) -> None:
        # The backend is done sending: close_notify to the client, whose bytes still flow to the
        # backend, with back-pressure, for as long as it keeps sending (relay rule 3).
        if self._idle_limit is None:
            self._idle_limit = self.settings.idle_timeout
        transport: Any = self.transport
        transport.unregisterProducer()
        transport.loseConnection()
        self.activity()

    def _abort_transport(self) -> None:
        # Reset the TCP connection under TLS: no close_notify for a stream that was cut off.
        transport: Any = self.transport
        getattr(transport, "transport", transport).abortConnection()

"""TLS to an https backend over a blocking socket, exactly as tlsproxy speaks it.

Rules:

1. The TLS is tlsproxy's own: the connection creator of ``tlsproxy.tls.client`` inside Twisted's
   ``TLSMemoryBIOProtocol``, fed from a blocking socket here instead of by the reactor. So a
   certificate verifies (or not) exactly as it will for the proxy, service-identity included,
   and a failure is described by the function that writes the proxy's 502.
2. The TLS layer holds small writes for the next clock tick: it gets a ``Clock`` of its own,
   advanced after each write, and never touches the global reactor.
3. Every wait ends by a deadline, as for ``backendprobe.Channel``; the handshake's result is
   facts (a ``Handshake``) for ``tlsproxy.doctor.backendtls`` to judge.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import error as net_error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from tlsproxy.doctor.backend import CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT
from tlsproxy.doctor.backendprobe import Channel
from tlsproxy.doctor.backendtls import Handshake, Outcome
from tlsproxy.tls.client import BackendTLS, client_tls, describe_tls_failure


@implementer(ITransport)
class _Outbox:
    """The TLS layer's transport: what it writes waits here until the channel sends it."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.pending = bytearray()
        self.closed = False  # the TLS layer gave up (a failed handshake) or finished

    def write(self, data: bytes) -> None:
        self.pending += data

    def writeSequence(self, data: Iterable[bytes]) -> None:
        for part in data:
            self.pending += part

    def loseConnection(self) -> None:
        self.closed = True

    def abortConnection(self) -> None:
        self.closed = True

    def getPeer(self) -> IPv4Address | IPv6Address:
        return _address(self._sock.getpeername())

    def getHost(self) -> IPv4Address | IPv6Address:
        return _address(self._sock.getsockname())


def _address(name: tuple[str, int] | tuple[str, int, int, int]) -> IPv4Address | IPv6Address:
    host, port = name[0], name[1]
    return IPv6Address("TCP", host, port) if ":" in host else IPv4Address("TCP", host, port)


@implementer(IHandshakeListener)
class _Inbox(Protocol):
    """The application side of the TLS layer: collects what it decrypts and how it ended."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.handshaken = False
        self.lost: Failure | None = None

    def handshakeCompleted(self) -> None:
        self.handshaken = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = reason


class _OneProtocol(Factory[_Inbox]):
    """Builds the one application protocol the channel already made."""

    def __init__(self, protocol: _Inbox) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: object) -> _Inbox:
        return self._protocol


@implementer(IOpenSSLClientConnectionCreator)
class _KeepingConnection:
    """tlsproxy's connection creator, keeping the OpenSSL connection to read the certificate."""

    def __init__(self, creator: IOpenSSLClientConnectionCreator) -> None:
        self._creator = creator
        self.connection: SSL.Connection | None = None

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:  # noqa: N803
        self.connection = self._creator.clientConnectionForTLS(tlsProtocol)
        return self.connection


class TLSChannel(Channel):
    """A TCP connection speaking TLS as tlsproxy does to an https backend (rule 1)."""

    def __init__(self, sock: socket.socket, tls: BackendTLS, *, port: int) -> None:
        super().__init__(sock)
        self._backend_tls = tls
        self._port = port
        self._creator = _KeepingConnection(client_tls(tls))
        self._clock = Clock()
        self._outbox = _Outbox(sock)
        self._inbox = _Inbox()
        factory = TLSMemoryBIOFactory(
            self._creator, True, _OneProtocol(self._inbox), clock=self._clock
        )
        self._tls = factory.buildProtocol(None)
        assert self._tls is not None
        self._tls.makeConnection(self._outbox)  # writes the ClientHello into the outbox

    def handshake(self, timeout: float = HANDSHAKE_TIMEOUT) -> Handshake:
        """Complete the handshake (or fail it) within ``timeout``; what happened, as facts."""
        deadline = time.monotonic() + timeout
        try:
            while not self._inbox.handshaken and self._inbox.lost is None:
                self._pump(deadline)
            self._flush(deadline)
        except TimeoutError:
            raise TimeoutError(f"no TLS handshake within {timeout:g} s") from None
        connection = self._creator.connection
        if self._inbox.handshaken and self._inbox.lost is None:
            outcome = Outcome.VERIFIED if self._backend_tls.verify else Outcome.UNVERIFIED
            certificate = (
                connection.get_peer_certificate(as_cryptography=True) if connection else None
            )
            return Handshake(outcome, certificate=certificate)
        reason = self._inbox.lost
        assert reason is not None
        chain = connection.get_peer_cert_chain(as_cryptography=True) if connection else None
        return Handshake(
            _outcome(reason),
            said=describe_tls_failure(reason, self._backend_tls, port=self._port),
            certificate=chain[0] if chain else None,
        )

    def send(self, data: bytes, deadline: float) -> None:
        self._tls.write(data)
        self._clock.advance(0)  # the TLS layer's held writes (rule 2)
        self._flush(deadline)

    def receive(self, deadline: float) -> bytes:
        while not self._inbox.received and self._inbox.lost is None:
            self._pump(deadline)
        data = bytes(self._inbox.received)
        self._inbox.received.clear()
        return data

    def _pump(self, deadline: float) -> None:
        """Send what the TLS layer wrote, then feed it the next bytes from the backend."""
        self._flush(deadline)
        if self._outbox.closed:
            self._lose(net_error.ConnectionDone())
            return
        try:
            chunk = super().receive(deadline)
        except TimeoutError:
            raise
        except OSError as exc:
            self._lose(net_error.ConnectionLost(exc.strerror or str(exc)))
            return
        if not chunk:
            self._lose(net_error.ConnectionDone())
            return
        self._tls.dataReceived(chunk)

    def _flush(self, deadline: float) -> None:
        if self._outbox.pending:
            data = bytes(self._outbox.pending)
            self._outbox.pending.clear()
            try:
                super().send(data, deadline)
            except TimeoutError:
                raise
            except OSError as exc:  # the backend went away; reading says how
                self._lose(net_error.ConnectionLost(exc.strerror or str(exc)))

    def _lose(self, reason: Exception) -> None:
        if self._inbox.lost is None:
            # The TLS layer hands its own reason (a verification failure) on, if it has one.
            self._tls.connectionLost(Failure(reason))

    def close(self) -> None:
        self._lose(net_error.ConnectionDone())
        super().close()


def _outcome(reason: Failure) -> Outcome:
    if reason.check(VerificationError):
        return Outcome.NAME
    if isinstance(reason.value, SSL.Error) and "certificate verify failed" in str(reason.value):
        return Outcome.CHAIN
    return Outcome.FAILED


def connect_tls(
    address: str, port: int, tls: BackendTLS, timeout: float = CONNECT_TIMEOUT
) -> TLSChannel:
    """A TCP connection to ``address``:``port`` set up for TLS; call ``handshake`` next."""
    sock = socket.create_connection((address, port), timeout=timeout)
    try:
        return TLSChannel(sock, tls, port=port)
    except BaseException:
        sock.close()
        raise

"""Server-side TLS over the standard library's ``ssl.SSLObject`` and memory BIOs.

The front's TLS, instead of Twisted's ``TLSMemoryBIOProtocol`` (pyOpenSSL): the same wrapper
shape (a protocol between the TCP transport and the application protocol), with less Python per
record and CPython's OpenSSL, which releases idle record buffers (measured: docs/benchmarks.md).

Rules:

1. Bytes from TCP go into the incoming BIO. Until the handshake completes they only move it on;
   after, every whole record is decrypted and handed on at once. Whatever OpenSSL leaves in the
   outgoing BIO (handshake flights, session tickets, alerts, close_notify) is written to TCP
   before control returns.
2. One application write is one ``SSLObject.write`` and one TCP write. No application data waits
   here, so producers belong to the TCP transport: ``registerProducer`` and pause/resume pass
   straight through. Only writes made before the handshake completes are held, until it does.
3. ``loseConnection`` sends close_notify and closes TCP's sending side once its buffer has
   drained, then keeps reading until the client closes: a client still sending (an upload
   answered early, the client half of a tunnel whose backend finished) is read, not reset, and
   the application's deadline bounds how long. With a producer registered it waits for
   ``unregisterProducer``, since the producer may still write.
4. ``abortConnection`` resets TCP without close_notify: a truncated response must look truncated.
5. The client's close_notify is answered with ours (unless ours went first), and TCP is closed;
   unless the application is half-closeable (raw TCP mode): then it hears ``readConnectionLost``
   and may still send before it closes.
6. A TLS error (not TLS at all, no shared cipher or version, a bad record) sends OpenSSL's alert
   and closes TCP, without a log line: scanners and confused clients are normal on a public port.
   The application's ``connectionLost`` gets the ``ssl.SSLError`` as its reason. A failed
   handshake (and plain HTTP answered) is counted in the factory's ``metrics``, if it has one.
   The one exception to the silence: a client certificate refused (``--client-ca``: none sent
   when one is required, or one that does not verify) is logged at info level, one line naming
   the peer and the reason, since that is a client the operator set out to admit or refuse.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet import interfaces
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    ILoggingContext,
    IProtocol,
    IProtocolFactory,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tlsproxy.metrics import HTTP_REQUEST, handshake_reason
from tlsproxy.tls.sni import server_name

if TYPE_CHECKING:
    from tlsproxy.metrics import Metrics

log = Logger()

_READ_SIZE = 65536  # four full records; SSLObject.read returns at most one record's worth


# Not INegotiated, which extends ISSLTransport and ITCPTransport: the TCP methods are the TCP
# transport's (``transport``); the client certificate is :meth:`MemoryTLS.peer_certificate_der`.
@implementer(interfaces.ITransport, interfaces.IConsumer, interfaces.IPushProducer)
class MemoryTLS(Protocol):
    """TLS between the TCP connection (``transport``) and the application (``wrappedProtocol``)."""

    __slots__ = (
        "_handshake_done",
        "_held",
        "_incoming",
        "_open",
        "_outgoing",
        "_producing",
        "_reading",
        "_reason",
        "_tls",
        "_unread",
        "connected",
        "disconnecting",
        "factory",
        "transport",
        "wrappedProtocol",
    )

    transport: Any  # the TCP connection: h1 and h2 reach it for TCP_NODELAY and resets
    factory: MemoryTLSFactory

    def __init__(self, factory: MemoryTLSFactory, wrapped: IProtocol) -> None:
        self.factory = factory
        # Replaced when ALPN hands the connection over to another protocol (h1's takeover).
        self.wrappedProtocol = wrapped
        self.transport = None
        self.connected = False
        self.disconnecting = False
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = factory.context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._handshake_done = False
        self._unread = True  # nothing has been read yet: plain HTTP may still be answered
        self._open = True  # application data may still be encrypted and sent
        self._reading = True  # records from the client are still decrypted and handed on
        self._producing = False  # a producer is registered (on the TCP transport)
        self._held: list[bytes] | None = None  # written before the handshake completed
        self._reason: Failure | None = None  # the TLS error that ended the connection

    # -- IProtocol, from the TCP transport ------------------------------------------------------

    def connectionMade(self) -> None:
        self.wrappedProtocol.makeConnection(self)

    def dataReceived(self, data: bytes) -> None:
        if not self._handshake_done:
            if not self._open:  # failed or answered: TCP is closing, the rest is noise
                return
            if self._unread:
                self._unread = False
                if data[:1].isalpha() and self.factory.plain_answer:  # TLS begins with 0x16
                    self._answer_plain()
                    return
            self._incoming.write(data)
            if not self._handshake():
                return
        else:
            self._incoming.write(data)
        read = self._tls.read
        while self._reading:
            try:
                chunk = read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                chunk = b""
            except ssl.SSLError as error:
                self._fail(error)
                return
            if not chunk:  # the client's close_notify (rule 5)
                wrapped = self.wrappedProtocol
                if self._open and IHalfCloseableProtocol.providedBy(wrapped):
                    # TLS 1.3 half-close (raw TCP mode): the client may still read our answer.
                    self._reading = False
                    wrapped.readConnectionLost()
                    return
                self.disconnecting = True
                self._reading = False
                self._shut_down()
                self.transport.loseConnection()
                return
            self.wrappedProtocol.dataReceived(chunk)
        if self._outgoing.pending:  # a post-handshake message wants an answer (KeyUpdate)
            self._flush()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        self.disconnecting = True
        if self._open and self._handshake_done:
            # TCP ended without close_notify either way. Shut TLS down all the same, or OpenSSL
            # drops the session from the cache when it frees the connection and the client cannot
            # resume it (TLS 1.1 and later allow resuming it: RFC 5246 section 7.2.1).
            with contextlib.suppress(ssl.SSLError):
                self._tls.unwrap()
        self._open = False
        if self._reason is not None:
            reason, self._reason = self._reason, None
        self.wrappedProtocol.connectionLost(reason)

    def logPrefix(self) -> str:
        wrapped = self.wrappedProtocol
        name = (
            wrapped.logPrefix() if ILoggingContext.providedBy(wrapped) else type(wrapped).__name__
        )
        return f"{name} ({self.factory.logPrefix()})"

    # -- ITransport, to the application ---------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self._open or not data:
            return
        if not self._handshake_done:
            if self._held is None:
                self._held = []
            self._held.append(data)
            return
        try:
            self._tls.write(data)
        except ssl.SSLError as error:
            self._fail(error)
            return
        self.transport.write(self._outgoing.read())

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if self.disconnecting or not self.connected:
            return
        self.disconnecting = True
        self._shut_down_when_done()

    def abortConnection(self) -> None:
        self.disconnecting = True
        self._open = self._reading = False
        self.transport.abortConnection()

    def getPeer(self) -> Any:
        return self.transport.getPeer()

    def getHost(self) -> Any:
        return self.transport.getHost()

    @property
    def negotiatedProtocol(self) -> bytes | None:
        """The protocol ALPN selected, or None (no handshake yet, or the client offered none)."""
        name = self._tls.selected_alpn_protocol()
        return name.encode("ascii") if name else None

    @property
    def server_name(self) -> str | None:
        """The SNI name the client asked for; None if it sent none (or before the handshake)."""
        return server_name(self._tls)

    def peer_certificate_der(self) -> bytes | None:
        """The client's certificate (DER), verified against ``--client-ca``; None if none.

        None too before the handshake completes, and when the context asks for no certificate.
        """
        if not self._handshake_done:
            return None
        return self._tls.getpeercert(binary_form=True)

    # -- IConsumer and IPushProducer: the TCP transport's, passed through (rule 2) --------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)
        self._producing = True

    def unregisterProducer(self) -> None:
        if not self._producing:
            return
        self._producing = False
        self.transport.unregisterProducer()
        if self.disconnecting:
            self._shut_down_when_done()

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    # -- internals ------------------------------------------------------------------------------

    def _handshake(self) -> bool:
        """Move the handshake on; True once it has completed and the application was told."""
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except ssl.SSLError as error:
            self._fail(error)
            return False
        self._handshake_done = True
        self._flush()  # the server's last flight and, in TLS 1.3, the session ticket
        held, self._held = self._held, None
        if held:
            self.write(b"".join(held))
        if self.disconnecting:  # closed while the handshake ran: now close_notify can be sent
            self._shut_down_when_done()
            return False
        wrapped = self.wrappedProtocol
        if IHandshakeListener.providedBy(wrapped):
            wrapped.handshakeCompleted()
        return not self.disconnecting

    def _shut_down_when_done(self) -> None:
        """Close now, unless a producer may still write or held writes wait for the handshake."""
        if self._open and not self._producing and self._held is None:
            self._shut_down()

    def _shut_down(self) -> None:
        """Send close_notify (none before the handshake completes), then end TCP's sending side."""
        if not self._open:
            return
        self._open = False
        if not self._handshake_done:
            self._reading = False
            self.transport.loseConnection()
            return
        # SSLWantReadError: close_notify is sent, the client's is not awaited (rule 3).
        with contextlib.suppress(ssl.SSLError):
            self._tls.unwrap()
        self._flush()
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if half_close is None:
            self.transport.loseConnection()
        else:
            half_close()

    def _fail(self, error: ssl.SSLError) -> None:
        """TLS cannot go on: send OpenSSL's alert and close TCP, quietly (rule 6)."""
        metrics = self.factory.metrics
        if metrics is not None and not self._handshake_done:
            metrics.handshake_failures[handshake_reason(error.reason)] += 1
        refused = _client_certificate_refused(error)
        if refused is not None:
            peer = self.transport.getPeer()
            log.info(
                "client certificate refused for {peer} port {port}: {reason}",
                peer=getattr(peer, "host", "unknown"),
                port=getattr(peer, "port", 0),
                reason=refused,
            )
        self._reason = Failure(error)
        self._open = self._reading = False
        self.disconnecting = True
        self._flush()
        self.transport.loseConnection()

    def _answer_plain(self) -> None:
        """Answer a plain-text client (HTTP on the TLS port) with the factory's hint, and close."""
        metrics = self.factory.metrics
        if metrics is not None:
            metrics.handshake_failures[HTTP_REQUEST] += 1
        self._open = False
        self.disconnecting = True
        self.transport.write(self.factory.plain_answer)
        self.transport.loseConnection()

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self.transport.write(data)


# OpenSSL's reasons when a server that asks for a client certificate gets none it can accept.
_NO_CLIENT_CERTIFICATE = frozenset(
    {"PEER_DID_NOT_RETURN_A_CERTIFICATE", "NO_CERTIFICATE_RETURNED", "NO_CERTIFICATES_RETURNED"}
)


def _client_certificate_refused(error: ssl.SSLError) -> str | None:
    """Why a client certificate was refused, if that is what ``error`` says; else None."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"it does not verify against --client-ca ({error.verify_message})"
    if error.reason in _NO_CLIENT_CERTIFICATE:
        return "no certificate sent, and --client-auth is required"
    return None


class MemoryTLSFactory(Factory[MemoryTLS]):
    """Wraps each protocol that ``wrapped`` builds in :class:`MemoryTLS` using ``context``.

    ``plain_answer``: bytes written back, before closing, to a client whose first byte is a
    letter (plain HTTP on the TLS port); empty to treat it as any other failed handshake.
    ``context`` may be replaced at any time; each connection keeps the one it started with.
    ``metrics``: where failed handshakes are counted, if anywhere.
    """

    noisy = False

    def __init__(
        self,
        context: ssl.SSLContext,
        wrapped: IProtocolFactory,
        *,
        plain_answer: bytes = b"",
        metrics: Metrics | None = None,
    ) -> None:
        self.context = context
        self.metrics = metrics
        self.wrappedFactory = wrapped
        self.plain_answer = plain_answer

    def startFactory(self) -> None:
        self.wrappedFactory.doStart()

    def stopFactory(self) -> None:
        self.wrappedFactory.doStop()

    def buildProtocol(self, addr: Any) -> MemoryTLS | None:
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return MemoryTLS(self, wrapped)

    def logPrefix(self) -> str:
        return "tlsproxy"

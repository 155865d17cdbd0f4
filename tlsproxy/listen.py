"""Listening: plain Twisted endpoints wrapped in TLS by us, and the limit on open connections."""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from twisted.internet import error as net_error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from tlsproxy import proxyproto
from tlsproxy.config import Listener
from tlsproxy.http.h1 import FrontSettings, H1Connection
from tlsproxy.http.h2 import H2Connection
from tlsproxy.http.headers import IPNetwork
from tlsproxy.tls.memorytls import MemoryTLSFactory

log = Logger()


class ListenError(Exception):
    """A listener that could not be opened; the message says which and why, in one line."""


FrontConnection = H1Connection | H2Connection
#: Builds the protocol that takes a connection over when ALPN chose it; given the callback
#: to call when that connection closes.
Takeover = Callable[[Callable[[H2Connection], None]], H2Connection]


class FrontFactory(Factory):
    """Builds one HTTP/1.1 front per client and stops accepting at ``--max-connections``.

    A connection taken over by another protocol after the TLS handshake (``takeovers``, by ALPN
    name) stays counted and is closed like the others: it is the same client connection.
    """

    noisy = False

    def __init__(
        self,
        settings: FrontSettings,
        *,
        max_connections: int,
        takeovers: Mapping[bytes, Takeover] | None = None,
    ) -> None:
        self._takeovers = dict(takeovers or {})
        if self._takeovers:
            settings = replace(settings, alpn_takeover=self._take_over)
        self.settings = settings
        self.max_connections = max_connections
        self.connections: set[FrontConnection] = set()
        self.ports: list[IListeningPort] = []
        self._accepting = True

    def buildProtocol(self, addr: Any) -> H1Connection:
        connection = H1Connection(self.settings, self._closed)
        self._opened(connection)
        return connection

    def _take_over(self, negotiated: bytes, connection: H1Connection) -> H2Connection:
        # The HTTP/1.1 connection has left the count already (its on_close ran).
        successor = self._takeovers[negotiated](self._closed)  # ALPN offers nothing else
        self._opened(successor)
        return successor

    def _opened(self, connection: FrontConnection) -> None:
        self.connections.add(connection)
        if len(self.connections) >= self.max_connections and self._accepting:
            self._accepting = False
            log.warn(
                "{n} connections open (--max-connections): not accepting more for now",
                n=len(self.connections),
            )
            for port in self.ports:
                port.stopReading()  # type: ignore[attr-defined]

    def _closed(self, connection: FrontConnection) -> None:
        self.connections.discard(connection)
        if not self._accepting and len(self.connections) < self.max_connections:
            self._accepting = True
            for port in self.ports:
                port.startReading()  # type: ignore[attr-defined]


_PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n\r\n"
    b"400 Bad Request\n\nThis port speaks HTTPS: use an https:// URL.\n"
)


class _FrontTLS(TLSMemoryBIOProtocol):
    """TLS on the client connection, which answers plain HTTP with a hint instead of silence."""

    def makeConnection(self, transport: Any) -> None:
        # TLSMemoryBIOProtocol.makeConnection, less its loop that re-declares each of the
        # transport's interfaces on the wrapper one call at a time (each call replacing the
        # last): about a tenth of the CPU of a new connection. ProtocolWrapper.makeConnection
        # declares them all in one call. Covered by every end-to-end test.
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer = []
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        if self._connectWrapped:
            ProtocolWrapper.makeConnection(self, transport)
        self._checkHandshakeStatus()  # type: ignore[no-untyped-call]

    def dataReceived(self, data: bytes) -> None:
        # Only the first read is looked at; after it, calls go straight to TLS.
        self.dataReceived = super().dataReceived  # type: ignore[method-assign]
        if data[:1].isalpha():  # a TLS record starts with 0x16; an HTTP request with a method
            transport: Any = self.transport
            transport.write(_PLAIN_HTTP_ANSWER)
            transport.loseConnection()
            return
        super().dataReceived(data)  # type: ignore[no-untyped-call]


class _TLSFactory(TLSMemoryBIOFactory):
    # The front coalesces its writes itself (one TLS write per backend read), so Twisted's
    # write-aggregating transport would only add a timer per write burst.
    protocol = _FrontTLS
    noisy = False

    def logPrefix(self) -> str:
        return "tlsproxy"


def tls_factory(
    creator: IOpenSSLServerConnectionCreator, front: FrontFactory
) -> TLSMemoryBIOFactory:
    """TLS by pyOpenSSL, through Twisted's TLSMemoryBIOProtocol."""
    return _TLSFactory(creator, False, front)


def memory_tls_factory(context: ssl.SSLContext, front: FrontFactory) -> MemoryTLSFactory:
    """TLS by the standard library's ``ssl``, through :class:`MemoryTLS`."""
    return MemoryTLSFactory(context, front, plain_answer=_PLAIN_HTTP_ANSWER)


#: Refusals logged once per address; past this many addresses, no more are named.
_MAX_NAMED_REFUSALS = 1024


class ProxyHeaderFactory(Factory):
    """``--proxy-protocol``: a PROXY header first, from a trusted peer, then ``wrapped`` (TLS).

    Only peers in ``trusted`` may send the header: from anyone else it would be a forged client
    address, so their connections are closed before a byte is read. The header must arrive within
    ``timeout`` seconds of ``clock``.
    """

    noisy = False

    def __init__(
        self,
        wrapped: IProtocolFactory,
        *,
        trusted: tuple[IPNetwork, ...],
        clock: IReactorTime,
        timeout: float,
    ) -> None:
        self.wrapped = wrapped
        self.trusted = trusted
        self.clock = clock
        self.timeout = timeout
        self._named: set[tuple[str, str]] = set()  # (what, address) already logged

    def buildProtocol(self, addr: Any) -> ProxyHeaderReceiver:
        return ProxyHeaderReceiver(self)

    def doStart(self) -> None:
        self.wrapped.doStart()
        super().doStart()  # type: ignore[no-untyped-call]

    def doStop(self) -> None:
        super().doStop()  # type: ignore[no-untyped-call]
        self.wrapped.doStop()

    def logPrefix(self) -> str:
        return "tlsproxy"

    def trusts(self, peer: Any) -> bool:
        """Whether ``peer`` (a Twisted address) is one of the ``--trusted-proxy`` ranges."""
        try:
            ip = ipaddress.ip_address(getattr(peer, "host", ""))
        except ValueError:  # a unix socket peer has no address to match
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.trusted)

    def log_once(self, what: str, peer: Any, message: str, **fields: Any) -> None:
        """Log ``message`` the first time ``what`` happens with ``peer``: a scan is not a flood."""
        key = (what, str(getattr(peer, "host", peer)))
        if key in self._named:
            return
        if len(self._named) >= _MAX_NAMED_REFUSALS:
            if len(self._named) == _MAX_NAMED_REFUSALS:
                self._named.add(("", ""))  # one marker, so this line is written once
                log.warn("more refused PROXY protocol peers; not naming each one")
            return
        self._named.add(key)
        log.warn(message, peer=key[1], **fields)


class ProxyHeaderReceiver(Protocol):
    """Reads one PROXY header, then gives the TCP connection to the TLS layer and steps aside.

    After the header, the TCP transport delivers to the TLS protocol directly and ``getPeer``
    on the transport answers the client address the header named: the layers above (TLS,
    HTTP/1.1, HTTP/2, the access log) ask it, so none of them knows about PROXY, and the cost
    is paid once, here, at connection start.
    """

    def __init__(self, factory: ProxyHeaderFactory) -> None:
        self.factory = factory
        self._received = b""
        self._timer: IDelayedCall | None = None
        self._successor: IProtocol | None = None

    def logPrefix(self) -> str:
        return "tlsproxy"

    def connectionMade(self) -> None:
        transport: Any = self.transport
        peer = transport.getPeer()
        if not self.factory.trusts(peer):
            self.factory.log_once(
                "untrusted",
                peer,
                "refused a connection from {peer}: --proxy-protocol is on and {peer} is not "
                "in --trusted-proxy (its PROXY header would be a forged client address)",
            )
            transport.abortConnection()
            return
        self._timer = self.factory.clock.callLater(self.factory.timeout, self._expired)

    def dataReceived(self, data: bytes) -> None:
        if self._successor is not None:  # a transport that kept calling us (not tcp.Server)
            self._successor.dataReceived(data)
            return
        if self._timer is None:  # refused or closing: the rest is noise
            return
        self._received += data  # bounded: parse refuses more than a header's bound
        result = proxyproto.parse(self._received)
        if isinstance(result, proxyproto.NeedMore):
            return
        self._stop_timer()
        transport: Any = self.transport
        if isinstance(result, proxyproto.Invalid):
            self.factory.log_once(
                "invalid",
                transport.getPeer(),
                "closed a connection from {peer}: {reason}",
                reason=result.reason,
            )
            transport.abortConnection()
            return
        rest = self._received[result.length :]
        self._received = b""
        self._hand_over(transport, result.source)
        if rest and self._successor is not None:
            self._successor.dataReceived(rest)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_timer()
        if self._successor is not None:
            self._successor.connectionLost(reason)

    def _hand_over(self, transport: Any, source: proxyproto.Address | None) -> None:
        peer = transport.getPeer()
        if source is not None:  # None: LOCAL or UNKNOWN, the balancer itself is the peer
            kind = IPv4Address if source.ip.version == 4 else IPv6Address
            peer = kind("TCP", str(source.ip), source.port)
            # One instance attribute, read by every layer above, costs nothing per call, where a
            # wrapping transport would add a call to every read and write of the connection.
            transport.getPeer = lambda: peer
        successor = self.factory.wrapped.buildProtocol(peer)
        if successor is None:
            transport.loseConnection()
            return
        self._successor = successor
        if getattr(transport, "protocol", None) is self:
            transport.protocol = successor  # tcp.Server reads this attribute for every read
        successor.makeConnection(transport)

    def _expired(self) -> None:
        self._timer = None
        transport: Any = self.transport
        transport.abortConnection()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None


def with_proxy_header(
    factory: IProtocolFactory,
    *,
    trusted: tuple[IPNetwork, ...],
    clock: IReactorTime,
    timeout: float,
) -> ProxyHeaderFactory:
    """``factory`` (the TLS layer) behind a PROXY protocol header, for ``--proxy-protocol``."""
    return ProxyHeaderFactory(factory, trusted=trusted, clock=clock, timeout=timeout)


def url_of(port: IListeningPort) -> str:
    """The address a user would type for ``port``."""
    address: Any = port.getHost()
    host = getattr(address, "host", None)
    if host is None:
        name = getattr(address, "name", None) or b"?"
        return f"unix:{name.decode() if isinstance(name, bytes) else name}"
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{address.port}/"


def browse_url(ports: Sequence[IListeningPort]) -> str | None:
    """The URL to open in a browser: ``localhost`` when listening on loopback."""
    for port in ports:
        address: Any = port.getHost()
        host = getattr(address, "host", None)
        if host is None:
            continue
        if host in ("127.0.0.1", "::1"):
            host = "localhost"
        elif ":" in host:
            host = f"[{host}]"
        return f"https://{host}:{address.port}/"
    return None


def listen_all(
    reactor: Any, listeners: Sequence[Listener], factory: IProtocolFactory
) -> list[IListeningPort]:
    """Open every listener now (before privileges are dropped); raise :class:`ListenError`."""
    ports = []
    for listener in listeners:
        try:
            endpoint = serverFromString(reactor, listener.description)
        except (IndexError, KeyError) as e:
            if listener.description.startswith("systemd:"):
                raise ListenError(
                    f"--listen {listener.description!r}: systemd passed no such socket "
                    "(LISTEN_FDS/LISTEN_FDNAMES); start tlsproxy from a .socket unit or "
                    "systemd-socket-activate"
                ) from None
            raise ListenError(f"--listen {listener.description!r} is not valid: {e}") from None
        except (ValueError, TypeError) as e:
            raise ListenError(f"--listen {listener.description!r} is not valid: {e}") from None
        outcome: list[Any] = []
        endpoint.listen(factory).addBoth(outcome.append)
        result = outcome[0] if outcome else Failure(ListenError("listening did not complete"))
        if isinstance(result, Failure):
            if listener.optional:
                log.warn(
                    "not listening on {where}: {why}",
                    where=listener.description,
                    why=_describe(result),
                )
                continue
            raise ListenError(f"cannot listen on {listener.description}: {_describe(result)}")
        ports.append(result)
    if not ports:
        raise ListenError("no listener could be opened")
    return ports


def _describe(failure: Failure) -> str:
    if failure.check(net_error.CannotListenError):
        socket_error = failure.value.socketError  # type: ignore[union-attr]
        why = getattr(socket_error, "strerror", None) or str(socket_error)
        if "in use" in why:
            return f"{why.lower()}; pick another --port or stop the program using it"
        if "ermission" in why:
            return f"{why.lower()}; ports below 1024 need root or systemd socket activation"
        return why.lower()
    return failure.getErrorMessage()

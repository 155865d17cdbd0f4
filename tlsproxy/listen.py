"""Listening: plain Twisted endpoints wrapped in TLS by us, and the limit on open connections."""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from twisted.internet import error as net_error
from twisted.internet import tcp, unix
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from tlsproxy.http.h1 import FrontSettings, H1Connection
from tlsproxy.http.h2 import H2Connection
from tlsproxy.listenoptions import Listener
from tlsproxy.tcpmode import TcpFront
from tlsproxy.tls.memorytls import MemoryTLSFactory

log = Logger()


class ListenError(Exception):
    """A listener that could not be opened; the message says which and why, in one line."""


FrontConnection = H1Connection | H2Connection | TcpFront
#: Builds the front for ``--mode tcp`` instead of HTTP/1.1; given the callback for its close.
TcpFrontBuilder = Callable[[Callable[[TcpFront], None]], TcpFront]
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
        self.settings.metrics.connections_accepted += 1
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
        self.settings.metrics.connections_open = len(self.connections)
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
        self.settings.metrics.connections_open = len(self.connections)
        if not self._accepting and len(self.connections) < self.max_connections:
            self._accepting = True
            for port in self.ports:
                port.startReading()  # type: ignore[attr-defined]


class TcpFrontFactory(FrontFactory):
    """``--mode tcp``: a raw TCP front per client, counted and limited like the HTTP fronts."""

    def __init__(
        self, settings: FrontSettings, *, max_connections: int, build: TcpFrontBuilder
    ) -> None:
        super().__init__(settings, max_connections=max_connections)
        self._build = build

    # The override returns another front: the TLS layer accepts any protocol, and the set of
    # connections (what shutdown and the limit use) is typed for every kind of front.
    def buildProtocol(self, addr: Any) -> TcpFront:  # type: ignore[override]
        self.settings.metrics.connections_accepted += 1
        connection = self._build(self._closed)
        self._opened(connection)
        return connection


_PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n\r\n"
    b"400 Bad Request\n\nThis port speaks HTTPS: use an https:// URL.\n"
)


def memory_tls_factory(context: ssl.SSLContext, front: FrontFactory) -> MemoryTLSFactory:
    """TLS by the standard library's ``ssl``, through :class:`MemoryTLS`."""
    return MemoryTLSFactory(
        context, front, plain_answer=_PLAIN_HTTP_ANSWER, metrics=front.settings.metrics
    )


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
    """Open every listener now (before privileges are dropped); raise :class:`ListenError`.

    A listener with an ``fd`` is a socket already listening (a ``--workers`` worker inherits
    its supervisor's): it is adopted, not opened.
    """
    ports = []
    for listener in listeners:
        if listener.fd is not None:
            ports.append(adopt(reactor, listener.fd, factory))
            continue
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


def listen_metrics(reactor: Any, description: str, factory: IProtocolFactory) -> IListeningPort:
    """Open ``--metrics-listen``: plain HTTP, apart from the proxy; raise ListenError."""
    try:
        endpoint = serverFromString(reactor, description)
    except (IndexError, KeyError, ValueError, TypeError) as e:
        raise ListenError(f"--metrics-listen {description!r} is not valid: {e}") from None
    outcome: list[Any] = []
    endpoint.listen(factory).addBoth(outcome.append)
    if not outcome or isinstance(outcome[0], Failure):
        why = outcome[0].getErrorMessage() if outcome else "listening did not complete"
        raise ListenError(f"cannot listen on --metrics-listen {description}: {why}")
    port: IListeningPort = outcome[0]
    return port


class _InheritedUNIXPort(unix.Port):
    """A unix socket a worker adopted: the supervisor made its file and removes it (once)."""

    def connectionLost(self, reason: Failure) -> None:
        tcp.Port.connectionLost(self, reason)  # not unix.Port's, which unlinks the file


def adopt(reactor: Any, fd: int, factory: IProtocolFactory) -> IListeningPort:
    """Accept for ``factory`` on the listening socket ``fd`` (a duplicate; ``fd`` is closed)."""
    sock = socket.socket(fileno=fd)  # only to learn the family; the port makes its own copy
    family = sock.family
    sock.detach()
    os.set_blocking(fd, False)  # what adopting requires; the supervisor's copy is so already
    port: IListeningPort
    if family == socket.AF_UNIX:
        # Twisted's unix port unlinks its file when it stops; every worker stopping would
        # remove it, and then the supervisor could not. (adoptStreamPort makes a unix.Port.)
        port = _InheritedUNIXPort._fromListeningDescriptor(reactor, fd, factory)  # type: ignore[no-untyped-call]
        port.startListening()
    else:
        port = reactor.adoptStreamPort(fd, family, factory)
    os.close(fd)
    return port


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

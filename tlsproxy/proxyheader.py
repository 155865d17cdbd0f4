"""``--proxy-protocol``: a PROXY header before TLS, read from trusted load balancers only.

:mod:`tlsproxy.proxyproto` parses the header; this module is the Twisted side around it. Rules:

1. Only a peer in ``--trusted-proxy`` may send the header; anyone else is closed unread.
2. The header must arrive within ``--header-timeout``; a header that is not valid closes the
   connection. Each refusal is logged once per peer address.
3. After the header, the layer above (TLS) owns the transport, which answers ``getPeer`` with
   the client the header named: nothing above knows about PROXY.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IDelayedCall, IProtocol, IProtocolFactory, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from tlsproxy import proxyproto
from tlsproxy.http.headers import IPNetwork

log = Logger()


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

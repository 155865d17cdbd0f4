"""One listening socket per worker for each TCP listener (``SO_REUSEPORT``), opened by the
supervisor, so that the kernel spreads new connections evenly over the workers.

Rules:

1. Why: workers sharing one listening socket are all woken for each new connection, and the
   first to run accepts every connection waiting (Twisted accepts up to ~100 per wake-up).
   Measured with 10 to 200 keep-alive clients opening at once (docs/workers.md), one worker
   often got all of them and the other none. With ``SO_REUSEPORT``, the kernel hashes each
   connection to one socket of the group, and each socket belongs to one worker.
2. The supervisor opens every socket of a group (before privileges are dropped) and keeps them
   all: a worker being replaced finds its socket, and the connections that queued on it
   meanwhile, waiting.
3. A group is made only for a TCP port whose socket was bound with ``SO_REUSEPORT``. Before
   binding one, the address is tried without it: a port in use by anyone, including another
   tlsproxy --workers run by the same user, fails startup as it would without ``--workers``
   instead of silently joining that other program's group.
4. Unix sockets and sockets from systemd have one socket, shared: workers take turns on it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.tcp import makeBinding

SUPPORTED = hasattr(socket, "SO_REUSEPORT")


class ReusePortReactor:
    """The reactor, except that ``listenTCP`` binds with ``SO_REUSEPORT`` (rule 3).

    Given to :func:`tlsproxy.listen.listen_all`, so endpoint descriptions, errors and messages
    stay those of a single tlsproxy.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenTCP(
        self, port: int, factory: IProtocolFactory, backlog: int = 50, interface: str = ""
    ) -> IListeningPort:
        if not SUPPORTED:
            return self._reactor.listenTCP(port, factory, backlog=backlog, interface=interface)  # type: ignore[no-any-return]
        if port != 0:
            _try_alone(interface, port)
        return _listen(self._reactor, interface, port, factory, backlog)


def _try_alone(interface: str, port: int) -> None:
    """Bind ``interface:port`` as a plain listener would; CannotListenError if it is taken."""
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted binds
        try:
            probe.bind((interface or ("::" if family == socket.AF_INET6 else ""), port))
        except OSError as e:
            raise CannotListenError(interface, port, e) from None


def reuses_port(port: IListeningPort) -> bool:
    """Whether ``port`` is a TCP socket bound with ``SO_REUSEPORT`` (a group can grow)."""
    fileno = getattr(port, "fileno", None)
    if not SUPPORTED or fileno is None:
        return False
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fileno())) as sock:
        tcp = sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM
        return tcp and bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
    return False


def siblings(
    reactor: Any, port: IListeningPort, count: int, factory: IProtocolFactory
) -> list[IListeningPort]:
    """``count`` more sockets in ``port``'s group: same address, same port (rule 2)."""
    address: Any = port.getHost()
    backlog = getattr(port, "backlog", 50)
    ports: list[IListeningPort] = []
    for _ in range(count):
        ports.append(_listen(reactor, address.host, address.port, factory, backlog))
    return ports


def _listen(
    reactor: Any, interface: str, port: int, factory: IProtocolFactory, backlog: int
) -> IListeningPort:
    binding = makeBinding(interface, port, reuseAddress=True, reusePort=True)
    # The interface again: Twisted picks the address family from it, not from the binding.
    listening: IListeningPort = reactor.listenTCP(
        binding, factory, backlog=backlog, interface=interface
    )
    return listening

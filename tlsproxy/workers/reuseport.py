"""One listening socket per worker for each TCP listener (``SO_REUSEPORT``), opened by the
supervisor, so that the kernel spreads new connections evenly over the workers.

Rules:

1. Why: workers sharing one listening socket are all woken for each new connection, and the
   first to run accepts every connection waiting (Twisted accepts up to ~100 per wake-up).
   Measured with 10 to 200 keep-alive clients opening at once (docs/workers.md), one worker
   often got all of them and the other none. With ``SO_REUSEPORT``, the kernel hashes each
   connection to one socket of the group, and each socket belongs to one worker.
2. The supervisor opens every socket of a group (before privileges are dropped) and keeps a
   copy of each while its worker runs: a worker starts on its socket with the connections that
   queued on it meanwhile waiting.
3. A group is made only for a TCP port whose socket was bound with ``SO_REUSEPORT``. Before
   binding one, the address is tried without it: a port in use by anyone, including another
   tlsproxy --workers run by the same user, fails startup as it would without ``--workers``
   instead of silently joining that other program's group.
4. Unix sockets and sockets from systemd have one socket, shared: workers take turns on it.
5. A socket with no worker behind it would still get its share of new connections, which would
   hang: while a worker slot has no process (it died and waits for its backoff), its socket is
   closed (:meth:`ListenerGroup.withdraw`; the connections queued on it are reset), and a new
   one joins the group just before its next worker starts (:meth:`ListenerGroup.port_for`).
   The last open socket of a group is kept even then, so the port stays ours.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Sequence
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


class ListenerGroup:
    """One listener's sockets in the supervisor: one per worker slot, or one shared (rule 4)."""

    def __init__(
        self,
        ports: Sequence[IListeningPort],
        *,
        reopen: Callable[[], IListeningPort] | None = None,
    ) -> None:
        self._ports: list[IListeningPort | None] = list(ports)
        self._reopen = reopen  # a new socket in the group; None: one socket, shared

    @classmethod
    def of(
        cls, reactor: Any, port: IListeningPort, workers: int, factory: IProtocolFactory
    ) -> ListenerGroup:
        """``port`` and, if it reuses its port, a sibling for each other worker (rules 2, 4)."""
        if not reuses_port(port):
            return cls([port])
        address: Any = port.getHost()
        backlog = getattr(port, "backlog", 50)
        return cls(
            [port, *siblings(reactor, port, workers - 1, factory)],
            # The address now: a port whose socket is closed no longer knows it.
            reopen=lambda: _listen(reactor, address.host, address.port, factory, backlog),
        )

    @property
    def open(self) -> list[IListeningPort]:
        return [port for port in self._ports if port is not None]

    def port_for(self, number: int) -> IListeningPort:
        """Worker ``number``'s socket, a new one if its slot's was withdrawn."""
        index = self._index(number)
        port = self._ports[index]
        if port is None:
            port = self._ports[index] = self._new_port()
        return port

    def withdraw(self, number: int) -> None:
        """Worker slot ``number`` has no process: its socket leaves the group (rule 5)."""
        index = self._index(number)
        port = self._ports[index]
        if self._reopen is not None and port is not None and len(self.open) > 1:
            self._ports[index] = None
            port.stopListening()

    def _index(self, number: int) -> int:
        return (number - 1) % len(self._ports)  # a shared socket is every worker's

    def _new_port(self) -> IListeningPort:
        if self._reopen is None:  # a shared socket is never withdrawn
            raise RuntimeError("a shared listener has no socket to reopen")
        port = self._reopen()
        port.stopReading()  # type: ignore[attr-defined]
        return port


def _listen(
    reactor: Any, interface: str, port: int, factory: IProtocolFactory, backlog: int
) -> IListeningPort:
    binding = makeBinding(interface, port, reuseAddress=True, reusePort=True)
    # The interface again: Twisted picks the address family from it, not from the binding.
    listening: IListeningPort = reactor.listenTCP(
        binding, factory, backlog=backlog, interface=interface
    )
    return listening

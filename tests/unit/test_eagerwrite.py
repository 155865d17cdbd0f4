"""tlsproxy.eagerwrite: a TCP transport sends at once when nothing is queued, in order otherwise.

These tests use a real ``socketpair`` (the module exists to call ``send``) under a real
``tcp.Connection`` whose reactor is a ``MemoryReactor``: no reactor runs, and whether Twisted's
buffered path was taken shows as a registered writer.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport

from tlsproxy import eagerwrite


class Pair:
    """A connected ``tcp.Connection`` on one end of a socketpair, and the raw peer socket."""

    def __init__(self) -> None:
        self.ours, self.peer = socket.socketpair()
        self.reactor = MemoryReactor()
        self.connection = tcp.Connection(self.ours, Protocol(), self.reactor)
        self.connection.connected = True
        self.peer.setblocking(False)

    def peer_reads(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = self.peer.recv(1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    @property
    def writing(self) -> bool:
        """Twisted's buffered path is waiting for the socket to become writable."""
        return self.connection in self.reactor.getWriters()

    def close(self) -> None:
        self.ours.close()
        self.peer.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    made = Pair()
    yield made
    made.close()


def test_non_tcp_transport_is_left_alone() -> None:
    """Anything that is not a tcp.Connection (a TLS transport, a test transport) is untouched."""
    transport = StringTransport()
    write = transport.write
    assert eagerwrite.install(transport) is False
    assert transport.write == write
    assert eagerwrite.install(None) is False


def test_write_on_an_idle_connection_is_sent_at_once(pair: Pair) -> None:
    """With nothing queued, the bytes are in the peer's socket before write returns, and no
    writer is registered with the reactor."""
    assert eagerwrite.install(pair.connection) is True
    pair.connection.write(b"hello")
    assert pair.peer_reads() == b"hello"
    assert not pair.writing


def test_write_sequence_is_sent_at_once_in_order(pair: Pair) -> None:
    """writeSequence goes out the same way, parts in order."""
    eagerwrite.install(pair.connection)
    pair.connection.writeSequence([b"a", b"bc", b"", b"d"])
    assert pair.peer_reads() == b"abcd"
    assert not pair.writing


def test_what_the_kernel_does_not_take_is_queued_and_later_writes_stay_behind_it(
    pair: Pair,
) -> None:
    """A write larger than the socket buffer sends what it can and queues the rest; a later
    write must queue behind that rest, never overtake it."""
    pair.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    pair.peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    eagerwrite.install(pair.connection)
    big = bytes(range(256)) * 4096  # 1 MiB, far above both buffers
    pair.connection.write(big)
    assert pair.writing
    pair.connection.write(b"TAIL")
    received = pair.peer_reads()
    assert 0 < len(received) < len(big)  # the eager part, and not the tail
    for _ in range(10_000):
        if not pair.writing:
            break
        pair.connection.doWrite()
        received += pair.peer_reads()
    received += pair.peer_reads()
    assert received == big + b"TAIL"


def test_write_on_a_disconnected_transport_takes_the_normal_path(pair: Pair) -> None:
    """After the connection is marked lost, writes are Twisted's to drop: nothing is sent."""
    eagerwrite.install(pair.connection)
    pair.connection.connected = False
    pair.connection.write(b"late")
    assert pair.peer_reads() == b""


def test_send_error_is_left_to_twisted(pair: Pair) -> None:
    """A peer that has gone makes send fail; write does not raise, and Twisted's own path gets
    the bytes (and will meet the error and close properly)."""
    eagerwrite.install(pair.connection)
    pair.peer.close()
    pair.connection.write(b"into the void")
    assert pair.writing

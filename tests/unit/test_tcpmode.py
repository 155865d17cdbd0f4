"""tlsproxy.tcpmode: ``--mode tcp`` relays decrypted bytes to a backend socket, both ways.

The client's transport here stands for the TLS layer (``handshakeCompleted`` is called as
MemoryTLS calls it); the backend is a ``MemoryReactorClock`` connection the test completes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import error as net_error
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from tests.certfactory import NOW
from tests.unit.harness import MemoryTransport, Proxy, address
from tlsproxy import proxyproto
from tlsproxy.backendoptions import parse_tcp_backend
from tlsproxy.config import Config, build_config
from tlsproxy.configerror import ConfigError
from tlsproxy.deadline import DeadlineSweeper
from tlsproxy.listen import TcpFrontFactory
from tlsproxy.proxyproto import header_for
from tlsproxy.tap import Options
from tlsproxy.tcpmode import TcpFront, TcpSettings

CONNECT_TIMEOUT = 5.0
IDLE_TIMEOUT = 60.0
HANDSHAKE_TIMEOUT = 10.0


class HalfCloseTransport(MemoryTransport):
    """A TCP transport that can end its sending side alone, as ``tcp.Connection`` can."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


@dataclass
class Rig:
    """One TcpFront on a fake client transport, dialling the backend through ``clock``."""

    backend_url: str = "tcp://127.0.0.1:6379"
    send_proxy_protocol: str | None = None
    tunnel_idle_timeout: float | None = None
    clock: MemoryReactorClock = field(default_factory=MemoryReactorClock)
    closed: list[TcpFront] = field(default_factory=list)
    logged: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sweeper = DeadlineSweeper(clock=self.clock)
        self.settings = TcpSettings(
            reactor=self.clock,
            backend=parse_tcp_backend(self.backend_url),
            sweeper=self.sweeper,
            handshake_timeout=HANDSHAKE_TIMEOUT,
            connect_timeout=CONNECT_TIMEOUT,
            idle_timeout=IDLE_TIMEOUT,
            tunnel_idle_timeout=self.tunnel_idle_timeout,
            send_proxy_protocol=self.send_proxy_protocol,
        )
        self.front = TcpFront(self.settings, self.closed.append)
        self.client = HalfCloseTransport(
            clock=self.clock, host=address("192.0.2.1", 8443), peer=address("203.0.113.7", 50123)
        )
        self.client.protocol = self.front
        self.front.makeConnection(self.client)  # type: ignore[no-untyped-call]
        self.backend: HalfCloseTransport | None = None
        self.backend_protocol: Any = None

    def handshake(self) -> None:
        self.front.handshakeCompleted()

    def accept(self) -> HalfCloseTransport:
        host, port, factory, _timeout, _bind = self.clock.tcpClients[-1]
        protocol: Any = factory.buildProtocol(address(host, port))
        transport = HalfCloseTransport(
            clock=self.clock, host=address("127.0.0.1", 40000), peer=address(host, port)
        )
        transport.protocol = protocol
        protocol.makeConnection(transport)
        self.backend, self.backend_protocol = transport, protocol
        return transport

    def refuse(self, reason: Exception) -> None:
        factory = self.clock.tcpClients[-1][2]
        factory.clientConnectionFailed(self.clock.connectors[-1], Failure(reason))


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    lines: list[str] = []
    from tlsproxy import tcpmode

    def info(format: str, **fields: Any) -> None:
        lines.append(format.format(**fields))

    monkeypatch.setattr(tcpmode.log, "info", info)
    return lines


# --- the PROXY header ---------------------------------------------------------------------------


def test_proxy_header_v2_names_client_and_our_address() -> None:
    """A v2 header parses back to the client as source and our listener as destination."""
    header = header_for("v2", ("203.0.113.7", 50123), ("192.0.2.1", 8443))
    parsed = proxyproto.parse(header)
    assert isinstance(parsed, proxyproto.Parsed)
    assert parsed.length == len(header)
    assert parsed.source == proxyproto.Address(ipaddress.ip_address("203.0.113.7"), 50123)
    assert parsed.destination == proxyproto.Address(ipaddress.ip_address("192.0.2.1"), 8443)


def test_proxy_header_v1_is_the_text_line() -> None:
    """v1 is the TCP4 text line HAProxy writes."""
    assert (
        header_for("v1", ("203.0.113.7", 50123), ("192.0.2.1", 8443))
        == b"PROXY TCP4 203.0.113.7 192.0.2.1 50123 8443\r\n"
    )


def test_proxy_header_mixed_families_are_written_as_ipv6() -> None:
    """An IPv4 client (from --proxy-protocol) on an IPv6 listener becomes an IPv4-mapped source."""
    assert (
        header_for("v1", ("203.0.113.7", 1), ("::1", 8443))
        == b"PROXY TCP6 ::ffff:cb00:7107 ::1 1 8443\r\n"
    )
    parsed = proxyproto.parse(header_for("v2", ("::ffff:203.0.113.7", 1), ("127.0.0.1", 2)))
    assert isinstance(parsed, proxyproto.Parsed)
    assert parsed.source is not None
    assert str(parsed.source.ip) == "203.0.113.7"  # a dual-stack socket's mapped address


def test_proxy_header_without_ip_says_unknown() -> None:
    """A unix socket client has no address to name: v1 UNKNOWN, v2 LOCAL."""
    assert header_for("v1", None, ("127.0.0.1", 8443)) == b"PROXY UNKNOWN\r\n"
    parsed = proxyproto.parse(header_for("v2", None, None))
    assert isinstance(parsed, proxyproto.Parsed)
    assert parsed.source is None


# --- connecting ---------------------------------------------------------------------------------


def test_backend_is_dialled_after_the_handshake_only() -> None:
    """No backend connection for a client that has not finished TLS; then one connectTCP."""
    rig = Rig()
    assert rig.clock.tcpClients == []
    rig.handshake()
    [(host, port, _factory, timeout, _bind)] = rig.clock.tcpClients
    assert (host, port, timeout) == ("127.0.0.1", 6379, CONNECT_TIMEOUT)


def test_unix_backend_is_dialled_with_connect_unix() -> None:
    """A unix:/path backend is a connectUNIX to that absolute path."""
    rig = Rig(backend_url="unix:/run/app.sock")
    rig.handshake()
    [(path, _factory, timeout, _check)] = rig.clock.unixClients
    assert (path, timeout) == ("/run/app.sock", CONNECT_TIMEOUT)


def test_client_bytes_before_the_backend_connects_arrive_first_in_order() -> None:
    """Reading pauses while connecting; what was already read goes out first, in order."""
    rig = Rig()
    rig.handshake()
    assert rig.client.paused
    rig.front.dataReceived(b"one ")
    rig.front.dataReceived(b"two ")
    backend = rig.accept()
    assert backend.take() == b"one two "
    assert not rig.client.paused
    rig.front.dataReceived(b"three")
    assert backend.take() == b"three"


def test_proxy_header_is_the_first_write_to_the_backend() -> None:
    """--send-proxy-protocol v2: the header, then the client's early bytes, then the rest."""
    rig = Rig(send_proxy_protocol="v2")
    rig.handshake()
    rig.front.dataReceived(b"PING\r\n")
    data = rig.accept().take()
    parsed = proxyproto.parse(data)
    assert isinstance(parsed, proxyproto.Parsed)
    assert parsed.source == proxyproto.Address(ipaddress.ip_address("203.0.113.7"), 50123)
    assert parsed.destination == proxyproto.Address(ipaddress.ip_address("192.0.2.1"), 8443)
    assert data[parsed.length :] == b"PING\r\n"


def test_refused_backend_closes_the_client_with_a_log_line(captured: list[str]) -> None:
    """Refused: the client gets close_notify (loseConnection) and the log says why."""
    rig = Rig()
    rig.handshake()
    rig.refuse(net_error.ConnectionRefusedError())
    assert rig.client.disconnecting
    assert any("connection refused" in line and "203.0.113.7" in line for line in captured)
    rig.clock.advance(0)
    assert rig.closed == [rig.front]


def test_connect_timeout_closes_the_client(captured: list[str]) -> None:
    """A backend that never answers: closed after --connect-timeout, logged as timed out."""
    rig = Rig()
    rig.handshake()
    rig.refuse(net_error.TimeoutError())
    assert rig.client.disconnecting
    assert any("timed out" in line for line in captured)


def test_localhost_tries_the_other_loopback_address() -> None:
    """localhost: 127.0.0.1 refused, then ::1 is tried before giving up."""
    rig = Rig(backend_url="tcp://localhost:6379")
    rig.handshake()
    rig.refuse(net_error.ConnectionRefusedError())
    assert [c[0] for c in rig.clock.tcpClients] == ["127.0.0.1", "::1"]
    assert not rig.client.disconnecting


def test_client_leaving_while_connecting_drops_the_backend() -> None:
    """A backend that connects after the client left is closed at once, nothing written."""
    rig = Rig()
    rig.handshake()
    rig.front.dataReceived(b"x")
    rig.client.loseConnection()
    rig.clock.advance(0)
    backend = rig.accept()
    assert backend.disconnecting
    assert backend.take() == b""


# --- relaying -----------------------------------------------------------------------------------


def connected(**kwargs: Any) -> tuple[Rig, HalfCloseTransport]:
    rig = Rig(**kwargs)
    rig.handshake()
    return rig, rig.accept()


def test_bytes_pass_both_ways_untouched() -> None:
    """Whatever either side sends reaches the other, byte for byte (no HTTP parsing)."""
    rig, backend = connected()
    rig.front.dataReceived(b"GET / HTTP/1.1\r\n\r\n\x00\xff")
    assert backend.take() == b"GET / HTTP/1.1\r\n\r\n\x00\xff"
    rig.backend_protocol.dataReceived(b"+PONG\r\n")
    assert rig.client.take() == b"+PONG\r\n"


def test_slow_backend_pauses_the_client_and_resumes_it() -> None:
    """Back-pressure: the backend's full send buffer stops reading the client, until it drains."""
    rig, backend = connected()
    assert backend.producer is rig.backend_protocol
    backend.producer.pauseProducing()
    assert rig.client.paused
    backend.producer.resumeProducing()
    assert not rig.client.paused


def test_slow_client_pauses_the_backend_and_resumes_it() -> None:
    """Back-pressure: the client's full send buffer stops reading the backend, until it drains."""
    rig, backend = connected()
    assert rig.client.producer is rig.front
    rig.front.pauseProducing()
    assert backend.paused
    rig.front.resumeProducing()
    assert not backend.paused


def test_connecting_and_back_pressure_holds_are_both_released() -> None:
    """The client is read again only when no reason to pause it is left."""
    rig, _backend = connected()
    rig.backend_protocol.pauseProducing()
    rig.front.hold_reading("other")
    rig.backend_protocol.resumeProducing()
    assert rig.client.paused
    rig.front.release_reading("other")
    assert not rig.client.paused


def test_backend_fin_sends_close_notify_and_client_may_still_send() -> None:
    """Half-close: the backend's FIN ends the client's receiving side only."""
    rig, backend = connected()
    rig.backend_protocol.dataReceived(b"bye")
    rig.backend_protocol.readConnectionLost()
    assert rig.client.take() == b"bye"
    assert rig.client.disconnecting  # TLS loseConnection: close_notify, then FIN
    rig.front.dataReceived(b"still talking")
    assert backend.take() == b"still talking"
    assert not backend.disconnecting


def test_client_end_of_sending_half_closes_the_backend() -> None:
    """Half-close: the client ends its sending cleanly; the backend gets a FIN and may answer."""
    rig, backend = connected()
    rig.front.dataReceived(b"QUIT\r\n")
    rig.front.readConnectionLost()
    assert backend.take() == b"QUIT\r\n"
    assert backend.write_closed
    assert not backend.disconnecting
    rig.backend_protocol.dataReceived(b"221 bye\r\n")
    assert rig.client.take() == b"221 bye\r\n"
    rig.client.loseConnection()  # then the client goes: the backend is closed too
    rig.clock.advance(0)
    assert backend.disconnecting


def test_client_end_of_sending_while_connecting_follows_its_bytes() -> None:
    """Bytes and the end of sending, both before the backend answered, reach it in order."""
    rig = Rig()
    rig.handshake()
    rig.front.dataReceived(b"12345")
    rig.front.readConnectionLost()
    assert not rig.client.disconnecting
    backend = rig.accept()
    assert backend.take() == b"12345"
    assert backend.write_closed
    rig.backend_protocol.dataReceived(b"got 5 bytes\r\n")
    assert rig.client.take() == b"got 5 bytes\r\n"


def test_client_gone_closes_the_backend_after_its_bytes() -> None:
    """The client's connection ends: the backend gets what was sent, then its close."""
    rig, backend = connected()
    rig.front.dataReceived(b"last")
    rig.client.loseConnection()
    rig.clock.advance(0)
    assert backend.take() == b"last"
    assert backend.disconnecting
    assert rig.closed == [rig.front]


def test_backend_gone_closes_the_client() -> None:
    """The backend's connection ends: the client gets what was sent, then close_notify."""
    rig, backend = connected()
    rig.backend_protocol.dataReceived(b"tail")
    backend.loseConnection()
    rig.clock.advance(0)
    assert rig.client.take() == b"tail"
    assert rig.client.disconnecting


# --- deadlines and shutdown ---------------------------------------------------------------------


def test_no_idle_limit_by_default() -> None:
    """Without --tunnel-idle-timeout a silent relay stays open (for hours)."""
    rig, backend = connected()
    rig.clock.advance(3600 * 5)
    assert not rig.client.disconnecting
    assert not backend.disconnecting


def test_tunnel_idle_timeout_closes_a_silent_relay() -> None:
    """--tunnel-idle-timeout: silence both ways for that long closes both sides."""
    rig, backend = connected(tunnel_idle_timeout=30.0)
    for _ in range(5):  # traffic keeps it open
        rig.clock.advance(20)
        rig.front.dataReceived(b".")
    assert not rig.client.disconnecting
    rig.clock.advance(31)
    assert rig.client.disconnecting
    assert backend.disconnecting


def test_handshake_that_never_finishes_is_closed() -> None:
    """A client that never completes TLS is closed after --header-timeout, backend untouched."""
    rig = Rig()
    rig.clock.advance(HANDSHAKE_TIMEOUT + 1)
    assert rig.client.disconnecting
    assert rig.clock.tcpClients == []


def test_drain_closes_a_connection_not_yet_relaying() -> None:
    """Shutdown: a connection still connecting closes now."""
    rig = Rig()
    rig.handshake()
    rig.front.drain()
    assert rig.client.disconnecting


def test_drain_leaves_a_relaying_connection_alone() -> None:
    """Shutdown: a relaying connection has no end to wait for; the drain deadline ends it."""
    rig, backend = connected()
    rig.front.drain()
    assert not rig.client.disconnecting
    assert not backend.disconnecting


def test_tcp_fronts_count_towards_max_connections() -> None:
    """TcpFrontFactory builds TcpFronts and stops accepting at --max-connections."""
    proxy = Proxy()
    rig = Rig()
    factory = TcpFrontFactory(
        proxy.settings, max_connections=1, build=lambda closed: TcpFront(rig.settings, closed)
    )
    port = _Port()
    factory.ports = [port]  # type: ignore[list-item]
    front = factory.buildProtocol(address("203.0.113.7", 1))
    assert isinstance(front, TcpFront)
    assert factory.connections == {front}
    assert port.reading is False
    other = MemoryTransport(clock=rig.clock, host=address("::1", 1), peer=address("::1", 2))
    front.makeConnection(other)  # type: ignore[no-untyped-call]
    front.connectionLost(Failure(net_error.ConnectionDone()))
    assert factory.connections == set()
    assert port.reading is True


class _Port:
    reading: bool | None = None

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


# --- configuration ------------------------------------------------------------------------------


def configure(tmp_path: Path, *argv: str) -> Config:
    """Parse ``argv`` as ``twistd tlsproxy`` would and build the Config (dev certs in tmp_path)."""
    options = Options()
    options.parseOptions(["--certs-dir", str(tmp_path / "certs"), *argv])
    values = {name.replace("-", "_"): value for name, value in options.items()}
    return build_config(values, now=NOW)


def refusal(tmp_path: Path, *argv: str) -> str:
    with pytest.raises(ConfigError) as caught:
        configure(tmp_path, "--mode", "tcp", *argv)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_tcp_mode_configuration(tmp_path: Path) -> None:
    """--mode tcp with a tcp:// backend and --send-proxy-protocol is a valid configuration."""
    argv = ("--mode", "tcp", "--backend", "tcp://127.0.0.1:6379", "--send-proxy-protocol", "V2")
    config = configure(tmp_path, *argv)
    assert (config.mode, config.send_proxy_protocol) == ("tcp", "v2")
    assert (config.backend.host, config.backend.port) == ("127.0.0.1", 6379)
    assert parse_tcp_backend("unix:/run/x.sock").socket_path == "/run/x.sock"
    assert configure(tmp_path, "--backend", "http://127.0.0.1:1").mode == "http"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--backend", "http://127.0.0.1:8000"], "tcp://host:port"),
        (["--backend", "tcp://127.0.0.1"], "needs a host and a port"),
        (["--backend", "tcp://127.0.0.1:80/path"], "only tcp://host:port"),
        (["--backend", "tcp://h:1", "--send-proxy-protocol", "v3"], "use v1 or v2"),
        (["--backend", "tcp://h:1", "--hsts", "60"], "--hsts is about HTTP"),
        (["--backend", "tcp://h:1", "--mode", "udp"], "--mode 'udp' is not a mode"),
    ],
)
def test_tcp_mode_refusals(tmp_path: Path, argv: list[str], expected: str) -> None:
    """Each wrong combination is refused in one line naming the flag."""
    assert expected in refusal(tmp_path, *argv)


def test_send_proxy_protocol_needs_tcp_mode(tmp_path: Path) -> None:
    """--send-proxy-protocol in http mode is refused; a tcp:// backend needs --mode tcp."""
    with pytest.raises(ConfigError, match="--mode tcp only"):
        configure(tmp_path, "--backend", "http://127.0.0.1:1", "--send-proxy-protocol", "v1")
    with pytest.raises(ConfigError, match="add --mode tcp"):
        configure(tmp_path, "--backend", "tcp://127.0.0.1:1")

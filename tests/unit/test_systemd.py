"""tlsproxy.systemd: sd_notify datagrams on a real unix socket, and where their settings come from.

These tests open unix datagram sockets (the notifier's whole job is one); time still moves only
through ``task.Clock``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from zope.interface import implementer

from tlsproxy.config import systemd_environment
from tlsproxy.configerror import ConfigError
from tlsproxy.systemd import STATUS_INTERVAL, SystemdNotifier, socket_address


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A unix datagram socket standing in for systemd: (its NOTIFY_SOCKET value, the socket)."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    yield str(path), sock
    sock.close()


@implementer(ILogObserver)
class LogLines(list[str]):
    """The text of each log event, as an observer."""

    def __call__(self, event: LogEvent) -> None:
        self.append(formatEvent(event))


@pytest.fixture
def logged() -> Iterator[LogLines]:
    """The text of every log event emitted during the test."""
    lines = LogLines()
    globalLogPublisher.addObserver(lines)
    yield lines
    globalLogPublisher.removeObserver(lines)


def received(sock: socket.socket) -> list[list[str]]:
    """Every datagram waiting on ``sock``, each split into its fields."""
    messages: list[list[str]] = []
    while True:
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return messages
        messages.append(data.decode().split("\n"))


def notifier(
    address: str | None,
    *,
    clock: Clock | None = None,
    watchdog_usec: int | None = None,
    status: str | None = None,
) -> SystemdNotifier:
    return SystemdNotifier(
        notify_socket=address,
        watchdog_usec=watchdog_usec,
        clock=clock or Clock(),
        status=(lambda: status) if status is not None else None,
        monotonic=lambda: 123456789,
    )


def test_ready_sends_ready_and_status_in_one_datagram(
    listener: tuple[str, socket.socket],
) -> None:
    """READY=1 and the current STATUS= travel together, as one datagram."""
    address, sock = listener
    notifier(address, status="serving https://127.0.0.1:443/; 0 connections").ready()
    assert received(sock) == [
        ["READY=1", "STATUS=serving https://127.0.0.1:443/; 0 connections"],
    ]


def test_reloading_carries_the_monotonic_time(listener: tuple[str, socket.socket]) -> None:
    """RELOADING=1 comes with MONOTONIC_USEC (systemd >= 253 needs it for notify-reload)."""
    address, sock = listener
    notifier(address).reloading()
    assert received(sock) == [["RELOADING=1", "MONOTONIC_USEC=123456789", "STATUS=reloading"]]


def test_stopping_sends_stopping(listener: tuple[str, socket.socket]) -> None:
    """STOPPING=1 is sent when shutdown begins."""
    address, sock = listener
    notifier(address).stopping()
    [message] = received(sock)
    assert message[0] == "STOPPING=1"


def test_real_monotonic_time_is_the_clock_systemd_reads(
    listener: tuple[str, socket.socket],
) -> None:
    """By default MONOTONIC_USEC is CLOCK_MONOTONIC in microseconds, not wall time."""
    address, sock = listener
    SystemdNotifier(notify_socket=address, watchdog_usec=None, clock=Clock()).reloading()
    [message] = received(sock)
    sent = int(message[1].removeprefix("MONOTONIC_USEC="))
    now = time.monotonic()  # CLOCK_MONOTONIC on Linux
    assert abs(sent / 1e6 - now) < 5


def test_status_is_refreshed_only_when_it_changes(listener: tuple[str, socket.socket]) -> None:
    """After READY, STATUS= is re-sent every STATUS_INTERVAL only if its text changed."""
    address, sock = listener
    clock = Clock()
    count = [0]
    sender = SystemdNotifier(
        notify_socket=address,
        watchdog_usec=None,
        clock=clock,
        status=lambda: f"{count[0]} connections",
    )
    sender.ready()
    assert received(sock) == [["READY=1", "STATUS=0 connections"]]
    clock.advance(STATUS_INTERVAL)
    assert received(sock) == []
    count[0] = 3
    clock.advance(STATUS_INTERVAL)
    assert received(sock) == [["STATUS=3 connections"]]
    sender.stopping()
    received(sock)
    count[0] = 4
    clock.advance(STATUS_INTERVAL)
    assert received(sock) == []


def test_a_newline_in_a_status_cannot_start_another_field(
    listener: tuple[str, socket.socket],
) -> None:
    """A status with a line break is sent as one STATUS= line, not as an extra field."""
    address, sock = listener
    notifier(address, status="first\nWATCHDOG=1").ready()
    assert received(sock) == [["READY=1", "STATUS=first WATCHDOG=1"]]


def test_watchdog_pings_every_half_interval(listener: tuple[str, socket.socket]) -> None:
    """With WATCHDOG_USEC, WATCHDOG=1 goes out at once on READY and then every half interval."""
    address, sock = listener
    clock = Clock()
    sender = notifier(address, clock=clock, watchdog_usec=10_000_000)
    assert sender.watchdog_interval == 5.0
    sender.ready()
    assert received(sock) == [["READY=1"], ["WATCHDOG=1"]]
    clock.advance(4.9)
    assert received(sock) == []
    clock.advance(0.1)
    assert received(sock) == [["WATCHDOG=1"]]
    sender.ready()  # after a reload: no second ping loop
    clock.advance(5.0)
    assert received(sock) == [["READY=1"], ["WATCHDOG=1"]]
    sender.close()
    clock.advance(10.0)
    assert received(sock) == []


def test_no_watchdog_without_watchdog_usec(listener: tuple[str, socket.socket]) -> None:
    """Without WATCHDOG_USEC nothing is scheduled and no WATCHDOG=1 is sent."""
    address, sock = listener
    clock = Clock()
    notifier(address, clock=clock).ready()
    clock.advance(3600)
    assert received(sock) == [["READY=1"]]
    assert clock.getDelayedCalls() == []


def test_abstract_namespace_address() -> None:
    """``@name`` means the abstract namespace: a leading NUL byte, no file; paths stay paths."""
    assert socket_address("@systemd/notify") == b"\0systemd/notify"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"


def test_sends_to_an_abstract_namespace_socket() -> None:
    """A datagram reaches a socket bound in the abstract namespace through its ``@`` name."""
    name = f"tlsproxy-test-{os.getpid()}-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.setblocking(False)
        notifier(f"@{name}").stopping()
        assert received(sock)[0][0] == "STOPPING=1"


def test_nothing_is_sent_or_scheduled_without_notify_socket() -> None:
    """Without NOTIFY_SOCKET every call is a no-op: no socket, no timers, even with a watchdog."""
    clock = Clock()
    sender = notifier(None, clock=clock, watchdog_usec=1_000_000, status="x")
    assert not sender.enabled
    sender.ready()
    sender.reloading()
    sender.stopping()
    assert sender.send("READY=1") is False
    assert clock.getDelayedCalls() == []
    assert sender._socket is None


def test_a_send_error_is_logged_once_and_never_raised(
    tmp_path: Path, logged: LogLines, listener: tuple[str, socket.socket]
) -> None:
    """A missing socket costs one log line per run of failures, and no exception."""
    clock = Clock()
    missing = str(tmp_path / "gone")
    sender = notifier(missing, clock=clock, watchdog_usec=2_000_000)
    sender.ready()
    clock.advance(1.0)
    clock.advance(1.0)
    assert sender.send("STATUS=x") is False
    failures = [line for line in logged if "cannot notify systemd" in line]
    assert len(failures) == 1
    assert missing in failures[0]
    # systemd comes back (same path): one line says so, and datagrams flow again.
    address, sock = listener
    os.symlink(address, missing)
    assert sender.send("STATUS=back") is True
    assert received(sock) == [["STATUS=back"]]
    assert any("works again" in line for line in logged)
    sender.close()


# Where the settings come from: the environment, read once by config.py.


def test_environment_gives_socket_and_watchdog() -> None:
    """NOTIFY_SOCKET and WATCHDOG_USEC are taken as systemd sets them."""
    environ = {"NOTIFY_SOCKET": "@abc", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}
    assert systemd_environment(environ, pid=42) == ("@abc", 30_000_000)
    assert systemd_environment({"WATCHDOG_USEC": "30000000"}, pid=42) == (None, None)
    assert systemd_environment({}, pid=42) == (None, None)


def test_watchdog_meant_for_another_process_is_ignored() -> None:
    """WATCHDOG_PID naming another process means the watchdog is not ours to ping."""
    environ = {"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}
    assert systemd_environment(environ, pid=42) == ("/run/n", None)


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"NOTIFY_SOCKET": "vsock:2:1"}, "NOTIFY_SOCKET"),
        ({"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "soon"}, "WATCHDOG_USEC"),
        ({"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "0"}, "WATCHDOG_USEC"),
    ],
)
def test_unusable_values_are_configuration_errors(environ: dict[str, str], named: str) -> None:
    """A value tlsproxy cannot use stops startup with a message naming the variable."""
    with pytest.raises(ConfigError, match=named):
        systemd_environment(environ, pid=1)

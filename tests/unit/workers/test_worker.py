"""tlsproxy.workers.worker: a worker's configuration, its messages, and its supervisor watch.

Messages go through a real pipe (no socket): the worker's side of the channel is file
descriptors, and what arrives at the other end is what the supervisor would read.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.python.failure import Failure

from tlsproxy.config import Config, build_config
from tlsproxy.listenoptions import Listener
from tlsproxy.tap import Options
from tlsproxy.workers.channel import (
    Inheritance,
    LineBuffer,
    Logged,
    Measured,
    Message,
    Reloaded,
    Started,
    Unreadable,
    decode,
)
from tlsproxy.workers.worker import (
    ControlPipe,
    LogForwarder,
    MessageWriter,
    WorkerService,
    adopt_access_log,
    worker_config,
)


def configure(tmp_path: Path, *argv: str, environ: dict[str, str] | None = None) -> Config:
    options = Options()
    options.parseOptions(
        ["--backend", "http://127.0.0.1:8000", "--certs-dir", str(tmp_path / "certs"), *argv]
    )
    values = {name.replace("-", "_"): value for name, value in options.items()}
    return build_config(values, now=datetime.now(UTC), environ=environ)


@pytest.fixture
def pipe() -> Iterator[tuple[MessageWriter, int]]:
    """A MessageWriter on a pipe, and the pipe's read end."""
    read, write = os.pipe()
    os.set_blocking(read, False)
    yield MessageWriter(write), read
    for fd in (read, write):
        with contextlib.suppress(OSError):  # closed by the test already
            os.close(fd)


def received(fd: int) -> list[Message | Unreadable]:
    lines = LineBuffer()
    try:
        data = os.read(fd, 1 << 20)
    except BlockingIOError:
        return []
    return [decode(line) for line in lines.feed(data)]


def test_a_worker_adopts_the_inherited_sockets_and_leaves_the_rest_to_its_supervisor(
    tmp_path: Path,
) -> None:
    """Listeners become the inherited descriptors (TLS, then redirect); metrics, certificate
    watching, systemd and further workers are the supervisor's."""
    config = configure(
        tmp_path,
        "--listen",
        "tcp:8443:interface=127.0.0.1",
        "--listen",
        "unix:/run/tlsproxy.sock",
        "--redirect-http",
        "8080",
        "--metrics-listen",
        "tcp:9100:interface=127.0.0.1",
        "--watch-certs",
        "--workers",
        "3",
        environ={"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": "1000000"},
    )
    assert config.notify_socket == "/run/notify"
    mine = worker_config(config, Inheritance(2, (4, 5), (6,)))
    assert [listener.fd for listener in mine.listeners] == [4, 5]
    assert mine.redirect_listeners == (Listener("inherited socket 6", fd=6),)
    assert (mine.workers, mine.metrics_listen, mine.watch_certs) == (1, None, False)
    assert (mine.notify_socket, mine.watchdog_usec) == (None, None)
    assert mine.backend == config.backend
    assert mine.certificates == config.certificates


def test_messages_arrive_whole_and_a_gone_supervisor_breaks_nothing(
    pipe: tuple[MessageWriter, int],
) -> None:
    """Each message arrives as one line; once nobody reads (EPIPE), sending is a no-op."""
    writer, read = pipe
    writer.send(Started())
    writer.send(Reloaded(ok=True))
    assert received(read) == [Started(), Reloaded(ok=True)]
    os.close(read)
    writer.send(Started())
    assert writer.broken


def test_log_events_become_messages_with_level_namespace_and_traceback(
    pipe: tuple[MessageWriter, int],
) -> None:
    """What the supervisor needs to log it again as the worker would have."""
    writer, read = pipe
    forward = LogForwarder(writer)
    log = Logger(namespace="tlsproxy.service", observer=forward)
    log.warn("reload failed: {why}", why="bad {file}")
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.failure("while reloading")
    first, second = received(read)
    assert first == Logged(
        level="warn", namespace="tlsproxy.service", text="reload failed: bad {file}"
    )
    assert isinstance(second, Logged)
    assert second.level == "critical"
    assert second.text.startswith("while reloading\nTraceback (most recent call last):")
    assert "ZeroDivisionError" in second.text


def test_the_end_of_the_control_pipe_means_the_supervisor_is_gone() -> None:
    """Data on the control pipe is ignored; its end (the supervisor died, however) calls gone."""
    read, write = os.pipe()
    gone: list[bool] = []
    control = ControlPipe(MemoryReactorClock(), read, gone=lambda: gone.append(True))
    os.write(write, b"anything")
    assert control.doRead() is None
    assert control.doRead() is None  # nothing to read: not an end
    os.close(write)
    result = control.doRead()
    assert isinstance(result, Failure)
    assert result.check(ConnectionDone)
    control.connectionLost(result)
    assert gone == [True]
    os.close(read)


def test_a_worker_service_says_started_reports_each_second_and_answers_reloads(
    tmp_path: Path, pipe: tuple[MessageWriter, int]
) -> None:
    """Started once serving; its counters and certificates every second; Reloaded after each
    SIGHUP reload; no banner (the supervisor printed it)."""
    writer, read = pipe
    reactor = MemoryReactorClock()
    reactor.advance(time.time())  # reloads check validity at the reactor's time
    config = worker_config(configure(tmp_path, "--workers", "2"), Inheritance(1, ()))
    service = WorkerService(config, reactor=reactor, messages=writer)
    previous = signal.getsignal(signal.SIGHUP)
    try:
        service.startService()
        assert received(read) == [Started()]
        service.metrics.connections_accepted = 3
        reactor.advance(1.0)
        [measured] = received(read)
        assert isinstance(measured, Measured)
        assert measured.counters["connections_accepted"] == 3
        assert [c.names for c in measured.certificates] == [
            c.names for c in config.certificates.certificates
        ]
        assert service.reload_certificates()
        assert received(read)[-1] == Reloaded(ok=True)
        assert service._banner() == []
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_worker_writes_the_access_log_it_inherited(
    tmp_path: Path, pipe: tuple[MessageWriter, int]
) -> None:
    """The supervisor opened --access-log FILE (before privileges were dropped): the worker
    neither checks nor opens the file by name, and writes its lines, in its format, to the
    descriptor it inherited."""
    writer, _ = pipe
    read, write = os.pipe()
    options = Options()
    options.parseOptions(
        [
            "--backend",
            "http://127.0.0.1:8000",
            "--certs-dir",
            str(tmp_path / "certs"),
            "--access-log",
            str(tmp_path / "root-only" / "access.log"),  # no such folder: the check would fail
            "--access-log-format",
            "json",
        ]
    )
    values = {name.replace("-", "_"): value for name, value in options.items()}
    inherited = Inheritance(1, (), access_log=write)
    log_stream = adopt_access_log(values, inherited)
    config = build_config(values, now=datetime.now(UTC))
    service = WorkerService(
        worker_config(config, inherited),
        reactor=MemoryReactorClock(),
        messages=writer,
        log_stream=log_stream,
    )
    assert service.access_log is not None
    service.access_log.record(
        client=b"127.0.0.1",
        method=b"GET",
        target=b"/",
        version=b"HTTP/1.1",
        status=200,
        size=2,
        headers=[],
    )
    service.access_log.close()  # flushes, and closes the inherited descriptor
    assert json.loads(os.read(read, 4096))["status"] == 200
    os.close(read)

"""Stand-ins for worker processes: a spawner that records what it started, and their messages.

:class:`Spawner` is a :data:`tlsproxy.workers.pool.Spawn`: instead of a process, each worker
protocol is connected to a :class:`FakeProcess`, which records the signals it is sent. Tests
play the worker's side with :func:`say` (a message on its pipe) and :func:`end` (its exit).
:class:`SpawningReactor` does the same one level lower, for the supervisor's own spawning:
``spawnProcess`` records its arguments, and ``listenTCP`` gives :class:`FakePort` sockets.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IListeningPort
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from tlsproxy.workers.channel import ERRORS_FD, MESSAGES_FD, Message, encode
from tlsproxy.workers.pool import Worker


@dataclass
class FakeProcess:
    """What a worker protocol's transport is asked: its pid, and signals."""

    pid: int
    signals: list[str] = field(default_factory=list)

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class Spawner:
    """Starts fake worker processes with pids 100, 101, ...; keeps every one started."""

    def __init__(self) -> None:
        self.started: list[tuple[int, Worker, FakeProcess]] = []
        self.fail_with: OSError | None = None

    def __call__(self, number: int, worker: Worker) -> FakeProcess:
        if self.fail_with is not None:
            raise self.fail_with
        process = FakeProcess(100 + len(self.started))
        worker.makeConnection(process)  # type: ignore[no-untyped-call]
        self.started.append((number, worker, process))
        return process

    def worker(self, pid: int) -> Worker:
        return next(w for _, w, p in self.started if p.pid == pid)

    def process(self, pid: int) -> FakeProcess:
        return next(p for _, _, p in self.started if p.pid == pid)


@implementer(IListeningPort)
@dataclass
class FakePort:
    """A listening socket the supervisor holds: its descriptor, whether it listens and reads."""

    fd: int
    listening: bool = True
    reading: bool = True

    def fileno(self) -> int:
        return self.fd

    def startListening(self) -> None:
        self.listening = True

    def stopReading(self) -> None:
        self.reading = False

    def stopListening(self) -> None:
        self.listening = False

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 8443)


@dataclass
class Spawned:
    """One ``spawnProcess`` call: what the worker was started with."""

    args: list[str]
    env: dict[str, str]
    child_fds: dict[int, int | str]
    worker: Worker
    process: FakeProcess


class SpawningReactor(MemoryReactorClock):
    """A reactor that starts fake processes (pids 100, 101, ...) and listens on fake ports."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.spawned: list[Spawned] = []
        self.fail_with: OSError | None = None
        self._fds = itertools.count(1000)

    def spawnProcess(  # noqa: PLR0917 (Twisted's signature)
        self,
        worker: Worker,
        executable: str,
        args: list[str],
        env: dict[str, str],
        path: str,
        childFDs: dict[int, int | str],  # noqa: N803 (Twisted's)
    ) -> FakeProcess:
        if self.fail_with is not None:
            raise self.fail_with
        process = FakeProcess(100 + len(self.spawned))
        worker.makeConnection(process)  # type: ignore[no-untyped-call]
        self.spawned.append(Spawned(args, env, childFDs, worker, process))
        return process

    def listenTCP(self, port: Any, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        return FakePort(next(self._fds))


def say(worker: Worker, *messages: Message) -> None:
    """The worker sends ``messages`` on its message pipe, in one read."""
    worker.childDataReceived(MESSAGES_FD, b"".join(encode(m) for m in messages))


def print_error(worker: Worker, text: bytes) -> None:
    """The worker writes ``text`` on its standard error."""
    worker.childDataReceived(ERRORS_FD, text)


def end(worker: Worker, *, status: int = 0, signal: int | None = None) -> None:
    """The worker process ends: with ``status``, or killed by ``signal``."""
    if signal is not None:
        reason: Exception = ProcessTerminated(signal=signal)
    elif status:
        reason = ProcessTerminated(exitCode=status)
    else:
        reason = ProcessDone(0)
    worker.processEnded(Failure(reason))


@implementer(ILogObserver)
class LogLines(list[str]):
    """Each log event as ``LEVEL namespace: text``, as an observer."""

    def __call__(self, event: LogEvent) -> None:
        level = event.get("log_level")
        self.append(
            f"{getattr(level, 'name', '?')} {event.get('log_namespace')}: {formatEvent(event)}"
        )

    def __enter__(self) -> LogLines:
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self)

"""tlsproxy.workers.supervisor, starting workers itself: the command line and descriptors they
get, their listening sockets as they die and are replaced, and the development certificate
written only by the supervisor. The reactor's spawnProcess and listenTCP are fakes."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.unit.workers.fakes import FakePort, Spawned, SpawningReactor, end, say
from tests.unit.workers.test_supervisor import RecordingNotifier, config
from tlsproxy.workers import supervisor as supervisor_module
from tlsproxy.workers.channel import Inheritance, Started
from tlsproxy.workers.reuseport import ListenerGroup
from tlsproxy.workers.supervisor import Supervisor


@dataclass
class Spawning:
    supervisor: Supervisor
    reactor: SpawningReactor
    group: ListenerGroup
    opened: list[FakePort]

    def start_all(self) -> None:
        for spawned in self.reactor.spawned:
            if not spawned.worker.ended:
                say(spawned.worker, Started())

    def latest(self, number: int) -> Spawned:
        """The last process started as worker ``number``."""
        return [s for s in self.reactor.spawned if s.worker.number == number][-1]

    @staticmethod
    def listener_fd(spawned: Spawned) -> int | str:
        """The supervisor's descriptor a worker got as its listener."""
        return spawned.child_fds[4]


@pytest.fixture
def spawning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Spawning]:
    """A supervisor of 2 workers that spawns them itself (through a fake reactor), with one
    SO_REUSEPORT listener of fake sockets, and its own development CA."""
    monkeypatch.setattr(supervisor_module, "exit_with_status", lambda status: None)
    reactor = SpawningReactor()
    reactor.advance(time.time())  # the development certificate is checked at the reactor's time
    supervisor = Supervisor(
        config(tmp_path / "certs", "--workers", "2"),
        reactor=reactor,
        arguments=["--workers", "2"],
        environ={"PATH": "/usr/bin"},
        cwd="/",
    )
    supervisor.notifier = RecordingNotifier(clock=reactor, status=supervisor.status)
    fds = iter(range(10, 100))
    opened = [FakePort(next(fds)), FakePort(next(fds))]

    def reopen() -> FakePort:
        opened.append(FakePort(next(fds)))
        return opened[-1]

    group = ListenerGroup(opened[:], reopen=reopen)
    supervisor.ports, supervisor.groups = [opened[0]], [group]
    previous = signal.getsignal(signal.SIGHUP)
    supervisor.startService()
    yield Spawning(supervisor, reactor, group, opened)
    signal.signal(signal.SIGHUP, previous)


def test_a_dead_workers_socket_leaves_its_group_until_its_replacement_starts(
    spawning: Spawning,
) -> None:
    """The kernel would go on giving a dead worker's socket its share of new connections, to
    hang there: while the slot waits for its backoff its socket is closed, and the replacement
    gets a new one. With every worker dead, one socket stays (the port stays ours), and leaves
    once another worker serves."""
    s = spawning
    first, second = s.opened
    assert [s.listener_fd(s.latest(1)), s.listener_fd(s.latest(2))] == [first.fd, second.fd]
    s.start_all()
    end(s.latest(1).worker, signal=9)
    assert not first.listening
    assert s.group.open == [second]
    s.reactor.advance(0.5)
    third = s.opened[-1]
    assert s.listener_fd(s.latest(1)) == third.fd
    assert (third.listening, third.reading) == (True, False)
    end(s.latest(1).worker, status=2)  # it cannot start: its socket leaves again
    assert not third.listening
    end(s.latest(2).worker, signal=9)  # now every worker is dead
    assert second.listening
    s.reactor.advance(0.5)  # worker 2's replacement (worker 1's waits 1 s)
    assert s.listener_fd(s.latest(2)) == second.fd
    end(s.latest(2).worker, status=2)  # it dies at once
    assert second.listening  # the last socket: kept
    s.reactor.advance(0.5)
    fourth = s.opened[-1]
    assert s.listener_fd(s.latest(1)) == fourth.fd
    say(s.latest(1).worker, Started())
    assert not second.listening  # worker 2 still waits: its socket leaves now
    assert s.group.open == [fourth]


def test_workers_start_without_the_working_directory_on_their_path_and_get_the_access_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -P -m tlsproxy.workers`` (a json.py where twistd was started must not run as
    the worker); the --access-log file is opened by the supervisor before privileges are
    dropped, as a single tlsproxy opens it, and each worker inherits it after its listeners."""
    monkeypatch.setattr(supervisor_module, "exit_with_status", lambda status: None)
    access_log = tmp_path / "access.log"
    reactor = SpawningReactor()
    supervisor = Supervisor(
        config(
            tmp_path / "certs",
            "--workers",
            "2",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--access-log",
            str(access_log),
        ),
        reactor=reactor,
        arguments=["--workers", "2"],
        environ={},
        cwd="/",
    )
    supervisor.privilegedStartService()
    assert access_log.exists()
    previous = signal.getsignal(signal.SIGHUP)
    try:
        supervisor.startService()
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert supervisor.access_log_fd is not None
    try:
        first = reactor.spawned[0]
        assert first.args[1:4] == ["-P", "-m", "tlsproxy.workers"]
        inherited = Inheritance.decode(first.env["TLSPROXY_WORKER"])
        assert (inherited.listeners, inherited.access_log) == ((4,), 5)
        assert first.child_fds[4] == supervisor.ports[0].fileno()
        assert first.child_fds[5] == supervisor.access_log_fd
        assert os.fstat(supervisor.access_log_fd).st_ino == access_log.stat().st_ino
    finally:
        os.close(supervisor.access_log_fd)


def test_only_the_supervisor_writes_the_development_certificate(spawning: Spawning) -> None:
    """Before it forwards a reload and before it starts a replacement, the supervisor makes
    the development certificate again if it is gone: workers only read it."""
    s = spawning
    source = s.supervisor.config.certificate_source
    assert source is not None
    leaf = source.certs_dir / "localhost.pem"
    s.start_all()
    leaf.unlink()
    s.supervisor.reload()
    assert leaf.exists()
    leaf.unlink()
    end(s.reactor.spawned[0].worker, signal=9)
    assert not leaf.exists()
    s.reactor.advance(0.5)
    assert leaf.exists()


def test_a_replacement_that_cannot_be_spawned_leaves_no_socket_behind(
    spawning: Spawning,
) -> None:
    """spawnProcess failing after startup (EMFILE): the new socket opened for the replacement
    leaves the group again while the pool waits to retry, and tlsproxy keeps running."""
    s = spawning
    s.start_all()
    end(s.latest(1).worker, signal=9)
    s.reactor.fail_with = OSError(24, "Too many open files")
    s.reactor.advance(0.5)
    assert not s.opened[-1].listening
    assert s.group.open == [s.opened[1]]
    assert not s.supervisor.failed
    s.reactor.fail_with = None
    s.reactor.advance(1.0)
    assert s.listener_fd(s.latest(1)) == s.opened[-1].fd
    assert s.opened[-1].listening

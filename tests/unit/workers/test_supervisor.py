"""tlsproxy.workers.supervisor: readiness, reload and stop of N workers, as systemd and a
scraper see them; no process is started (a fake spawner stands in)."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from twisted.internet.interfaces import IReactorTime
from twisted.internet.testing import MemoryReactorClock

from tests.unit.workers.fakes import LogLines, Spawner, end, say
from tlsproxy.config import Config, build_config
from tlsproxy.systemd import SystemdNotifier
from tlsproxy.tap import Options
from tlsproxy.workers import supervisor as supervisor_module
from tlsproxy.workers.channel import Expiry, Measured, Reloaded, Started
from tlsproxy.workers.supervisor import RELOAD_TIMEOUT, STOP_GRACE, Supervisor

EXPIRY = datetime(2030, 1, 1, tzinfo=UTC)


class RecordingNotifier(SystemdNotifier):
    """A notifier as if systemd listened: each datagram's fields are kept, nothing is sent."""

    def __init__(self, *, clock: IReactorTime, status: Callable[[], str]) -> None:
        super().__init__(notify_socket=None, watchdog_usec=None, clock=clock, status=status)
        self.sent: list[tuple[str, ...]] = []

    @property
    def enabled(self) -> bool:
        return True

    def send(self, *fields: str) -> bool:
        self.sent.append(fields)
        return True

    def states(self) -> list[str]:
        """The state field of each datagram (READY=1, RELOADING=1, ...), status refreshes out."""
        return [f[0] for f in self.sent if not f[0].startswith("STATUS=")]


@pytest.fixture(scope="module")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("certs")


def config(certs_dir: Path, *argv: str) -> Config:
    options = Options()
    options.parseOptions(
        ["--backend", "http://127.0.0.1:8000", "--certs-dir", str(certs_dir), *argv]
    )
    values = {name.replace("-", "_"): value for name, value in options.items()}
    return build_config(values, now=datetime.now(UTC))


@dataclass
class Running:
    supervisor: Supervisor
    reactor: MemoryReactorClock
    spawner: Spawner
    notifier: RecordingNotifier
    exit_statuses: list[int]

    def pids(self) -> list[int]:
        return [p.pid for _, _, p in self.spawner.started]

    def all_started(self) -> None:
        for _, worker, _ in self.spawner.started:
            say(worker, Started())


@pytest.fixture
def running(certs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Running]:
    """A supervisor of 2 workers, started (the workers are fakes with pids 100 and 101)."""
    statuses: list[int] = []
    monkeypatch.setattr(supervisor_module, "exit_with_status", statuses.append)
    reactor, spawner = MemoryReactorClock(), Spawner()
    supervisor = Supervisor(
        config(certs_dir, "--workers", "2", "--drain-timeout", "10"),
        reactor=reactor,
        arguments=["--workers", "2"],
        environ={},
        cwd="/",
        spawn=spawner,
    )
    notifier = RecordingNotifier(clock=reactor, status=supervisor.status)
    supervisor.notifier = notifier
    previous = signal.getsignal(signal.SIGHUP)
    supervisor.startService()
    yield Running(supervisor, reactor, spawner, notifier, statuses)
    signal.signal(signal.SIGHUP, previous)


def test_ready_and_the_banner_come_once_every_worker_serves(running: Running) -> None:
    """systemd hears READY=1 (with the worker count in STATUS) and the banner is logged only
    when the last worker has said Started, once; it names the workers' pids."""
    assert running.pids() == [100, 101]
    with LogLines() as lines:
        say(running.spawner.worker(100), Started())
        assert running.notifier.sent == []
        say(running.spawner.worker(101), Started())
    assert running.notifier.sent == [
        ("READY=1", "STATUS=serving nothing; 2 of 2 workers, 0 connections")
    ]
    assert any("2 worker processes share these listeners (pids 100, 101)" in x for x in lines)
    assert sum("forwarding to the backend http://127.0.0.1:8000" in x for x in lines) == 1
    end(running.spawner.worker(100), signal=9)
    running.reactor.advance(0.5)
    say(running.spawner.worker(102), Started())
    assert running.notifier.states() == ["READY=1"]  # a replacement is no new startup


def test_sighup_reaches_every_worker_and_ready_follows_their_answers(running: Running) -> None:
    """RELOADING=1, SIGHUP to each worker, then READY=1 only after both reported (one failed
    reload counts as an answer: the old certificate serves)."""
    running.all_started()
    running.notifier.sent.clear()
    running.supervisor.reload()
    assert running.notifier.states() == ["RELOADING=1"]
    assert [running.spawner.process(p).signals for p in (100, 101)] == [["HUP"], ["HUP"]]
    say(running.spawner.worker(100), Reloaded(ok=True))
    assert running.notifier.states() == ["RELOADING=1"]
    say(running.spawner.worker(101), Reloaded(ok=False))
    assert running.notifier.states() == ["RELOADING=1", "READY=1"]


def test_a_worker_that_never_answers_a_reload_delays_ready_only_until_the_timeout(
    running: Running,
) -> None:
    """A worker that dies or hangs during a reload cannot keep systemd in "reloading"."""
    running.all_started()
    running.notifier.sent.clear()
    with LogLines() as lines:
        running.supervisor.reload()
        say(running.spawner.worker(100), Reloaded(ok=True))
        running.reactor.advance(RELOAD_TIMEOUT - 0.1)
        assert running.notifier.states() == ["RELOADING=1"]
        running.reactor.advance(0.1)
    assert running.notifier.states() == ["RELOADING=1", "READY=1"]
    assert any("1 worker(s) did not answer the reload within 30s" in x for x in lines)


def test_metrics_sum_every_worker_and_keep_what_exited_workers_counted(
    running: Running,
) -> None:
    """The page adds the workers' latest counters sample by sample; a worker that died leaves
    its counts (not its open connections) in the sum, so no counter goes down."""
    running.all_started()
    first, second = running.spawner.worker(100), running.spawner.worker(101)
    certificates = (Expiry(("localhost",), EXPIRY, "AB:CD"),)
    counters = {"connections_open": 2, "connections_accepted": 10, "responses": [0, 0, 7]}
    say(first, Measured(counters, certificates))
    say(second, Measured({**counters, "connections_accepted": 5}, certificates))
    page = running.supervisor.render_metrics()
    assert "tlsproxy_connections_open 4\n" in page
    assert "tlsproxy_connections_accepted_total 15\n" in page
    assert 'tlsproxy_requests_total{status_class="2xx"} 14\n' in page
    assert f'{{names="localhost",sha256="abcd"}} {EXPIRY.timestamp()}' in page
    assert running.supervisor.status() == ("serving nothing; 2 of 2 workers, 4 connections")
    end(first, signal=9)
    page = running.supervisor.render_metrics()
    assert "tlsproxy_connections_open 2\n" in page
    assert "tlsproxy_connections_accepted_total 15\n" in page
    assert running.supervisor.status() == "serving nothing; 1 of 2 workers, 2 connections"


def test_stop_says_stopping_terms_every_worker_and_exits_0_once_they_have(
    running: Running,
) -> None:
    """STOPPING=1 first; SIGTERM to each worker; the stop completes (and twistd's exit signal
    is cleared, so the status is 0) only once both exited; a worker still running after
    --drain-timeout plus a grace is killed."""
    running.all_started()
    running.reactor._exitSignal = signal.SIGTERM  # type: ignore[attr-defined]
    stopped = running.supervisor.stopService()
    assert running.notifier.states()[-1] == "STOPPING=1"
    assert [running.spawner.process(p).signals for p in (100, 101)] == [["TERM"], ["TERM"]]
    end(running.spawner.worker(100))
    assert not stopped.called
    running.reactor.advance(10 + STOP_GRACE)
    assert running.spawner.process(101).signals == ["TERM", "KILL"]
    end(running.spawner.worker(101), signal=9)
    assert stopped.called
    assert running.reactor._exitSignal is None
    assert running.exit_statuses == []


def test_a_worker_that_cannot_start_stops_tlsproxy_with_status_1(running: Running) -> None:
    """The first worker exiting before it served: one critical line, the reactor stops, and the
    exit status will be 1; the other worker is stopped."""
    running.reactor.running = True
    with LogLines() as lines:
        end(running.spawner.worker(100), status=2)
    assert running.exit_statuses == [1]
    assert running.reactor.hasStopped
    assert lines == [
        "critical tlsproxy.workers.supervisor: tlsproxy cannot start: worker 1 (pid 100) "
        "exited with status 2 before it was ready (its output is above)"
    ]
    stopped = running.supervisor.stopService()
    assert running.spawner.process(101).signals == ["TERM"]
    end(running.spawner.worker(101))
    assert stopped.called


def test_a_reload_while_starting_is_owed_until_every_worker_serves(running: Running) -> None:
    """SIGHUP before every worker serves: no RELOADING=1 and no signal yet (a starting worker
    would die of it); READY=1 comes when all serve, and the reload right after it."""
    say(running.spawner.worker(100), Started())
    running.supervisor.reload()
    running.supervisor.reload()
    assert running.notifier.sent == []
    assert running.spawner.process(100).signals == []
    say(running.spawner.worker(101), Started())
    assert running.notifier.states() == ["READY=1", "RELOADING=1"]
    assert [running.spawner.process(p).signals for p in (100, 101)] == [["HUP"], ["HUP"]]
    say(running.spawner.worker(100), Reloaded(ok=True))
    say(running.spawner.worker(101), Reloaded(ok=True))
    assert running.notifier.states() == ["READY=1", "RELOADING=1", "READY=1"]


def test_one_line_sums_up_each_reload(running: Running) -> None:
    """After the workers' own lines, the supervisor says how many reloaded."""
    running.all_started()
    with LogLines() as lines:
        running.supervisor.reload()
        say(running.spawner.worker(100), Reloaded(ok=True))
        say(running.spawner.worker(101), Reloaded(ok=True))
        running.supervisor.reload()
        say(running.spawner.worker(100), Reloaded(ok=False))
        say(running.spawner.worker(101), Reloaded(ok=True))
    summaries = [line for line in lines if "reload" in line and "in 2 workers" not in line]
    assert summaries[-3:] == [
        "info tlsproxy.workers.supervisor: reloaded in 2 of 2 workers",
        "info tlsproxy.workers.supervisor: reloading certificates in 2 worker(s)",
        "error tlsproxy.workers.supervisor: reload failed in 1 of 2 workers (their lines say "
        "why); they serve the previous certificates",
    ]


def test_a_reload_starts_a_worker_waiting_for_its_backoff_at_once(running: Running) -> None:
    """The operator likely just fixed what made it die: no waiting out the backoff."""
    running.all_started()
    end(running.spawner.worker(100), status=1)
    running.supervisor.reload()
    assert running.pids() == [100, 101, 102]
    assert running.spawner.process(101).signals == ["HUP"]
    assert running.spawner.process(102).signals == []  # it loads the files as it starts


def test_metrics_show_every_certificate_some_worker_serves(running: Running) -> None:
    """Workers may serve different certificates (one's reload failed): the page lists each
    one once, by fingerprint, not only the first worker's."""
    running.all_started()
    old = Expiry(("localhost",), EXPIRY, "AB:CD")
    new = Expiry(("localhost",), EXPIRY, "EF:01")
    say(running.spawner.worker(100), Measured({}, (old,)))
    say(running.spawner.worker(101), Measured({}, (new, old)))
    page = running.supervisor.render_metrics()
    series = [
        line.split("{", 1)[1].split("}")[0]
        for line in page.splitlines()
        if line.startswith("tlsproxy_certificate_expiry_timestamp_seconds{")
    ]
    assert series == ['names="localhost",sha256="abcd"', 'names="localhost",sha256="ef01"']

"""tlsproxy.workers.pool: N workers kept running, replaced with backoff, signalled, stopped."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from twisted.internet.task import Clock

from tests.unit.workers.fakes import LogLines, Spawner, end, print_error, say
from tlsproxy.workers.backoff import Backoff
from tlsproxy.workers.channel import Logged, Measured, Reloaded, Started
from tlsproxy.workers.pool import SLOW_START, Worker, WorkerPool


@dataclass
class Events:
    """A PoolEvents that records what the pool told it."""

    started: list[tuple[int, bool]] = field(default_factory=list)
    reloaded: list[tuple[int, bool]] = field(default_factory=list)
    measured: list[int] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def worker_started(self, worker: Worker, *, first_time: bool) -> None:
        self.started.append((worker.number, first_time))

    def worker_reloaded(self, worker: Worker, ok: bool) -> None:
        self.reloaded.append((worker.number, ok))

    def worker_measured(self, worker: Worker, measured: Measured) -> None:
        self.measured.append(worker.number)

    def worker_ended(self, worker: Worker) -> None:
        self.ended.append(worker.number)

    def worker_pending(self, number: int) -> None:
        self.pending.append(number)

    def startup_failed(self, reason: str) -> None:
        self.failed.append(reason)


@dataclass
class Pool:
    pool: WorkerPool
    spawner: Spawner
    clock: Clock
    events: Events


def make_pool(count: int = 2) -> Pool:
    clock, spawner, events = Clock(), Spawner(), Events()
    pool = WorkerPool(
        count=count,
        clock=clock,
        spawn=spawner,
        events=events,
        backoff=Backoff(first=0.5, maximum=4.0, stable=10.0),
    )
    return Pool(pool, spawner, clock, events)


def started(count: int = 2) -> Pool:
    """A pool whose ``count`` workers (pids 100...) have all said they serve."""
    p = make_pool(count)
    p.pool.start()
    for _, worker, _ in p.spawner.started:
        say(worker, Started())
    return p


def test_start_spawns_n_numbered_workers_and_completes_when_all_serve() -> None:
    """Workers 1..N start at once; the pool is complete only once every one said Started."""
    p = make_pool(3)
    p.pool.start()
    assert [n for n, _, _ in p.spawner.started] == [1, 2, 3]
    say(p.spawner.worker(100), Started())
    say(p.spawner.worker(101), Started())
    assert not p.pool.complete_once
    say(p.spawner.worker(102), Started())
    assert p.pool.complete_once
    assert p.events.started == [(1, True), (2, True), (3, True)]


def test_a_dead_worker_is_logged_and_replaced_under_its_number_after_the_backoff() -> None:
    """kill -9 of a serving worker: one error line with pid and signal, then a new process for
    the same number after 0.5 s, which is "serving" again once it says so."""
    p = started()
    with LogLines() as lines:
        end(p.spawner.worker(100), signal=9)
        assert p.events.ended == [1]
        assert len(p.spawner.started) == 2
        p.clock.advance(0.49)
        assert len(p.spawner.started) == 2
        p.clock.advance(0.01)
        number, replacement, process = p.spawner.started[-1]
        assert (number, process.pid) == (1, 102)
        say(replacement, Started())
    assert lines == [
        "error tlsproxy.workers.pool: worker 1 (pid 100) killed by signal 9 (SIGKILL); "
        "starting another in 0.5s",
        "info tlsproxy.workers.pool: worker 1 is serving (pid 102)",
    ]
    assert p.events.started[-1] == (1, False)
    assert sorted(p.pool.workers) == [1, 2]


def test_a_crash_loop_backs_off_to_the_maximum_and_a_stable_run_resets_it() -> None:
    """A replacement that dies at once doubles the wait each time (0.5, 1, 2, 4, 4); one that
    ran past ``stable`` is replaced after the first delay again."""
    p = started()
    waits = []
    victim = p.spawner.worker(100)
    for _ in range(5):
        before = len(p.spawner.started)
        end(victim, status=1)
        waited = 0.0
        while len(p.spawner.started) == before:
            p.clock.advance(0.25)
            waited += 0.25
        waits.append(waited)
        victim = p.spawner.started[-1][1]
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0]
    survivor = p.spawner.started[-1][1]
    say(survivor, Started())
    p.clock.advance(60)
    end(survivor, status=1)
    p.clock.advance(0.5)
    assert p.spawner.started[-1][0] == 1
    assert len(p.spawner.started) == 2 + 6


def test_a_worker_dying_before_the_pool_was_ever_complete_fails_startup() -> None:
    """While tlsproxy starts, a worker that exits before serving would only die again: the
    pool reports it (with its pid and status) and starts no replacement."""
    p = make_pool()
    p.pool.start()
    say(p.spawner.worker(101), Started())
    end(p.spawner.worker(100), status=2)
    assert p.events.failed == [
        "worker 1 (pid 100) exited with status 2 before it was ready (its output is above)"
    ]
    p.clock.advance(60)
    assert len(p.spawner.started) == 2


def test_an_interpreter_that_cannot_start_fails_startup() -> None:
    """spawnProcess itself failing (no such executable) is reported, not raised."""
    p = make_pool()
    p.spawner.fail_with = FileNotFoundError(2, "No such file or directory")
    p.pool.start()
    assert p.events.failed[0].startswith("cannot start worker 1: ")
    assert not p.pool.workers


def test_signals_reach_ready_workers_and_a_starting_worker_gets_its_reload_when_ready() -> None:
    """SIGHUP goes to every serving worker only (a starting one has no handler yet and would
    die of it); the starting one is sent it once it says Started."""
    p = started()
    end(p.spawner.worker(101), signal=9)
    p.clock.advance(0.5)
    sent = p.pool.signal("HUP")
    assert [w.number for w in sent] == [1]
    assert p.spawner.process(100).signals == ["HUP"]
    assert p.spawner.process(102).signals == []
    say(p.spawner.worker(102), Started())
    assert p.spawner.process(102).signals == ["HUP"]


def test_messages_reach_the_owner_and_log_lines_keep_their_level_and_namespace() -> None:
    """Reloaded and Measured go to the owner; a worker's log event is logged again with its
    level and namespace and a ``worker N:`` prefix; stderr lines are warnings."""
    p = started()
    worker = p.spawner.worker(101)
    measured = Measured({"connections_open": 1}, ())
    with LogLines() as lines:
        say(
            worker,
            Reloaded(ok=False),
            measured,
            Logged(level="error", namespace="tlsproxy.service", text="reload failed: x"),
        )
        print_error(worker, b"Traceback (most recent call last):\n  File")
        print_error(worker, b' "x.py"\n')
        worker.childDataReceived(3, b"garbage\n")
    assert p.events.reloaded == [(2, False)]
    assert p.events.measured == [2]
    assert worker.last_measured == measured
    assert lines == [
        "error tlsproxy.service: worker 2: reload failed: x",
        "warn tlsproxy.workers.pool: worker 2: Traceback (most recent call last):",
        'warn tlsproxy.workers.pool: worker 2:   File "x.py"',
        "warn tlsproxy.workers.pool: worker 2 sent an unreadable message: garbage",
    ]


def test_stop_terms_every_worker_waits_for_all_and_kills_the_rest_at_the_timeout() -> None:
    """stop(): SIGTERM to each worker (starting ones too), no more replacements; the Deferred
    fires when the last one has exited; one still there at the timeout gets SIGKILL."""
    p = started(3)
    end(p.spawner.worker(102), signal=9)  # its replacement is due in 0.5 s
    stopped = p.pool.stop(timeout=35.0)
    p.clock.advance(1)
    assert len(p.spawner.started) == 3  # no replacement while stopping
    assert p.spawner.process(100).signals == ["TERM"]
    assert p.spawner.process(101).signals == ["TERM"]
    with LogLines() as lines:
        end(p.spawner.worker(100), signal=15)  # before its handler: counts as a clean stop
        assert not stopped.called
        p.clock.advance(34)
        assert p.spawner.process(101).signals == ["TERM", "KILL"]
        end(p.spawner.worker(101), signal=9)
    assert stopped.called
    assert lines == [
        "info tlsproxy.workers.pool: worker 1 (pid 100) killed by signal 15 (SIGTERM)",
        "warn tlsproxy.workers.pool: worker 2 (pid 101) did not exit after SIGTERM: killing it",
        "warn tlsproxy.workers.pool: worker 2 (pid 101) killed by signal 9 (SIGKILL)",
    ]


@pytest.mark.parametrize("count", [1, 3])
def test_stop_with_no_worker_left_fires_at_once(count: int) -> None:
    """A pool whose workers are all gone (or never started) is stopped already."""
    p = make_pool(count)
    assert p.pool.stop(timeout=1.0).called


def test_a_spawn_failure_after_startup_is_a_quick_death_retried_with_the_backoff() -> None:
    """Once every worker served, spawnProcess failing (out of descriptors, a tasks limit) is
    logged with its reason and retried after the backoff, doubling; tlsproxy does not stop."""
    p = started()
    p.spawner.fail_with = OSError(24, "Too many open files")
    with LogLines() as lines:
        end(p.spawner.worker(100), signal=9)
        p.clock.advance(0.5)
        p.clock.advance(1.0)
        p.spawner.fail_with = None
        p.clock.advance(1.9)
    assert p.events.failed == []
    assert lines == [
        "error tlsproxy.workers.pool: worker 1 (pid 100) killed by signal 9 (SIGKILL); "
        "starting another in 0.5s",
        "error tlsproxy.workers.pool: worker 1 could not be started ([Errno 24] Too many open "
        "files); 2 quick deaths in a row: starting another in 1s",
        "error tlsproxy.workers.pool: worker 1 could not be started ([Errno 24] Too many open "
        "files); 3 quick deaths in a row: starting another in 2s",
    ]
    assert p.events.pending == [1, 1, 1]
    assert len(p.spawner.started) == 2
    p.clock.advance(0.1)
    assert p.spawner.started[-1][0] == 1
    assert sorted(p.pool.workers) == [1, 2]


def wait_for_replacement(p: Pool) -> float:
    """Advance the clock until the pool starts another worker; the seconds that took."""
    before, waited = len(p.spawner.started), 0.0
    while len(p.spawner.started) == before:
        p.clock.advance(0.25)
        waited += 0.25
    return waited


def test_respawn_now_starts_waiting_replacements_with_their_streak_reset() -> None:
    """A reload (the files likely fixed) starts a worker waiting for its backoff at once; its
    next quick death waits the first delay again, not the doubled one."""
    p = started()
    waits = []
    for _ in range(3):
        end(p.spawner.started[-1][1] if len(p.spawner.started) > 2 else p.spawner.worker(100))
        waits.append(wait_for_replacement(p))
    assert waits == [0.5, 1.0, 2.0]
    end(p.spawner.started[-1][1], status=1)  # the next wait would be 4 s
    before = len(p.spawner.started)
    assert p.pool.respawn_now() == [1]
    assert len(p.spawner.started) == before + 1
    assert p.pool.respawn_now() == []
    p.clock.advance(4.5)  # past when the waiting start was due: it was cancelled
    assert len(p.spawner.started) == before + 1
    end(p.spawner.started[-1][1], status=1)
    assert wait_for_replacement(p) == 0.5


def test_a_worker_that_does_not_serve_within_a_minute_is_logged_once() -> None:
    """A worker stuck starting is said once, at SLOW_START; one that serves in time is not."""
    p = make_pool()
    p.pool.start()
    say(p.spawner.worker(101), Started())
    with LogLines() as lines:
        p.clock.advance(SLOW_START)
        p.clock.advance(SLOW_START)
    assert lines == [
        "warn tlsproxy.workers.pool: worker 1 (pid 100) has not said it serves 60s after it "
        "was started"
    ]

"""The worker processes of ``--workers N``, kept at N: spawned, watched, replaced, stopped.

Rules:

1. Workers are numbered 1..N; a replacement takes the number of the worker it replaces, so the
   log says "worker 2" for the same slot all along.
2. A worker's messages and its standard error are read line by line; every line it logs is
   logged again here, prefixed ``worker N:``, at the level the worker gave it.
3. A worker that dies unexpectedly is logged (pid, status or signal) and replaced after the
   backoff says (:mod:`.backoff`); a worker that cannot even be spawned (EMFILE, EAGAIN from a
   tasks limit) counts as a quick death. While the pool starts (before all N have been ready
   once), either would happen again: the pool gives up instead (``startup_failed``), and
   tlsproxy exits. A reload (:meth:`WorkerPool.respawn_now`) starts the waiting replacements
   at once, their streak reset: the operator has likely just fixed the files.
4. Signals go only to workers that said they are ready: before that, a worker has no handler
   and SIGHUP would kill it. A reload asked of a worker still starting is sent once it is ready.
5. Stopping sends SIGTERM to every worker and waits for each to exit; each honours
   --drain-timeout, and one still there at ``timeout`` is killed.
6. A worker not serving :data:`SLOW_START` seconds after it was started is logged, once.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable
from typing import Protocol

from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import InvalidLogLevelError, Logger, LogLevel
from twisted.python.failure import Failure

from tlsproxy.workers.backoff import Backoff, describe_exit
from tlsproxy.workers.channel import (
    ERRORS_FD,
    MESSAGES_FD,
    LineBuffer,
    Logged,
    Measured,
    Reloaded,
    Started,
    Unreadable,
    decode,
)

log = Logger()

#: Seconds after its start a worker that has not said it serves is logged (rule 6).
SLOW_START = 60.0


class PoolEvents(Protocol):
    """What the pool tells its owner (the supervisor)."""

    def worker_started(self, worker: Worker, *, first_time: bool) -> None: ...
    def worker_reloaded(self, worker: Worker, ok: bool) -> None: ...
    def worker_measured(self, worker: Worker, measured: Measured) -> None: ...
    def worker_ended(self, worker: Worker) -> None: ...
    def worker_pending(self, number: int) -> None: ...
    def startup_failed(self, reason: str) -> None: ...


#: Starts worker ``number`` with its protocol connected to its pipes (the process is returned).
Spawn = Callable[[int, "Worker"], object]


class Worker(ProcessProtocol):
    """One worker process, seen from the supervisor: its pipes and its state."""

    def __init__(self, number: int, *, pool: WorkerPool, started_at: float) -> None:
        self.number = number
        self.pid: int | None = None
        self.started_at = started_at
        self.ready = False
        self.owed_reload = False  # rule 4
        self.ended = False
        self.last_measured: Measured | None = None
        self.slow_start: IDelayedCall | None = None  # rule 6
        self._pool = pool
        self._messages = LineBuffer()
        self._errors = LineBuffer()

    def connectionMade(self) -> None:
        self.pid = getattr(self.transport, "pid", None)

    def childDataReceived(self, childFD: int, data: bytes) -> None:  # noqa: N803 (Twisted's)
        if childFD == MESSAGES_FD:
            for line in self._messages.feed(data):
                self._pool.received(self, line)
        elif childFD == ERRORS_FD:
            for line in self._errors.feed(data):
                self._error_line(line)

    def childConnectionLost(self, childFD: int) -> None:  # noqa: N803
        if childFD == MESSAGES_FD:
            for line in self._messages.end():
                self._pool.received(self, line)
        elif childFD == ERRORS_FD:
            for line in self._errors.end():
                self._error_line(line)

    def _error_line(self, line: bytes) -> None:
        log.warn("worker {n}: {line}", n=self.number, line=line.decode("utf-8", "replace"))

    def processEnded(self, reason: Failure) -> None:
        self.ended = True
        self._pool.ended(self, reason)

    def signal(self, name: str) -> None:
        """Send signal ``name`` ("HUP", "TERM", "KILL"), unless the process is gone already."""
        if self.transport is not None and not self.ended:
            # Exited already: processEnded is on its way.
            with contextlib.suppress(ProcessExitedAlready, OSError):
                self.transport.signalProcess(name)

    def __repr__(self) -> str:
        return f"<worker {self.number} pid {self.pid}>"


class WorkerPool:
    """Keeps ``count`` workers running (rules 1-5)."""

    def __init__(
        self,
        *,
        count: int,
        clock: IReactorTime,
        spawn: Spawn,
        events: PoolEvents,
        backoff: Backoff | None = None,
    ) -> None:
        self.count = count
        self._clock = clock
        self._spawn = spawn
        self._events = events
        self._backoff = backoff or Backoff()
        self.workers: dict[int, Worker] = {}  # by number: the live ones
        self._streaks: dict[int, int] = {}
        self._respawns: dict[int, IDelayedCall] = {}
        self.complete_once = False  # all N have been ready at the same time
        self.stopping = False
        self._stopped: defer.Deferred[None] | None = None
        self._kill: IDelayedCall | None = None

    def start(self) -> None:
        for number in range(1, self.count + 1):
            self._start(number)

    def _start(self, number: int) -> None:
        self._respawns.pop(number, None)
        worker = Worker(number, pool=self, started_at=self._clock.seconds())
        self.workers[number] = worker
        try:
            self._spawn(number, worker)
        except OSError as e:
            del self.workers[number]
            if not self.complete_once:  # no such interpreter, no fork: nothing else would work
                self._events.startup_failed(f"cannot start worker {number}: {e}")
            else:  # out of descriptors or processes for now: rule 3
                self._replace_later(number, lived=0.0, why=f"could not be started ({e})")
            return
        worker.slow_start = self._clock.callLater(SLOW_START, self._slow, worker)

    def _slow(self, worker: Worker) -> None:
        worker.slow_start = None
        log.warn(
            "worker {n} (pid {pid}) has not said it serves {t:g}s after it was started",
            n=worker.number,
            pid=worker.pid,
            t=SLOW_START,
        )

    def respawn_now(self) -> list[int]:
        """Start every replacement waiting for its backoff now, streak reset (rule 3)."""
        waiting = sorted(self._respawns)
        for number in waiting:
            self._respawns.pop(number).cancel()
            self._streaks[number] = 0
            log.info("reload: starting worker {n} now instead of after its backoff", n=number)
            self._start(number)
        return waiting

    @property
    def ready(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.ready]

    def signal(self, name: str) -> list[Worker]:
        """Send ``name`` to every ready worker; the workers signalled (rule 4)."""
        sent = self.ready
        for worker in sent:
            worker.signal(name)
        if name == "HUP":
            for worker in self.workers.values():
                worker.owed_reload = not worker.ready
        return sent

    def received(self, worker: Worker, line: bytes) -> None:
        message = decode(line)
        if isinstance(message, Logged):
            try:
                level = LogLevel.levelWithName(message.level)
            except InvalidLogLevelError:
                level = LogLevel.info
            Logger(namespace=message.namespace).emit(
                level, "worker {n}: {text}", n=worker.number, text=message.text
            )
        elif isinstance(message, Started):
            self._started(worker)
        elif isinstance(message, Reloaded):
            self._events.worker_reloaded(worker, message.ok)
        elif isinstance(message, Measured):
            worker.last_measured = message
            self._events.worker_measured(worker, message)
        elif isinstance(message, Unreadable):
            log.warn(
                "worker {n} sent an unreadable message: {line}", n=worker.number, line=message.line
            )

    def _started(self, worker: Worker) -> None:
        worker.ready = True
        _cancel(worker.slow_start)
        first_time = not self.complete_once
        if len(self.ready) == self.count:
            self.complete_once = True
        if not first_time:
            log.info("worker {n} is serving (pid {pid})", n=worker.number, pid=worker.pid)
        self._events.worker_started(worker, first_time=first_time)
        if worker.owed_reload:
            worker.owed_reload = False
            worker.signal("HUP")

    def ended(self, worker: Worker, reason: Failure) -> None:
        _cancel(worker.slow_start)
        if self.workers.get(worker.number) is worker:
            del self.workers[worker.number]
        self._events.worker_ended(worker)
        how = describe_exit(reason)
        if self.stopping:
            # Asked to stop: an exit, or the SIGTERM it was sent before it could handle it.
            terminated = getattr(reason.value, "signal", None) == signal.SIGTERM
            clean = reason.check(ProcessDone) is not None or terminated
            (log.info if clean else log.warn)(
                "worker {n} (pid {pid}) {how}", n=worker.number, pid=worker.pid, how=how
            )
            if not self.workers and self._stopped is not None and not self._stopped.called:
                if self._kill is not None and self._kill.active():
                    self._kill.cancel()
                self._stopped.callback(None)
            return
        if not worker.ready and not self.complete_once:
            self._events.startup_failed(
                f"worker {worker.number} (pid {worker.pid}) {how} before it was ready "
                "(its output is above)"
            )
            return
        lived = self._clock.seconds() - worker.started_at
        self._replace_later(worker.number, lived=lived, why=f"(pid {worker.pid}) {how}")

    def _replace_later(self, number: int, *, lived: float, why: str) -> None:
        """Worker ``number`` is gone after ``lived`` seconds: its replacement, after the backoff."""
        streak, delay = self._backoff.after(streak=self._streaks.get(number, 0), lived=lived)
        self._streaks[number] = streak
        if streak > 1:
            how_long = f", {lived:.1f}s after it started" if lived else ""
            log.error(
                "worker {n} {why}{how_long}; {streak} quick deaths in a row: starting another "
                "in {delay:g}s",
                n=number,
                why=why,
                how_long=how_long,
                streak=streak,
                delay=delay,
            )
        else:
            log.error(
                "worker {n} {why}; starting another in {delay:g}s", n=number, why=why, delay=delay
            )
        self._respawns[number] = self._clock.callLater(delay, self._start, number)
        self._events.worker_pending(number)

    def stop(self, *, timeout: float) -> defer.Deferred[None]:
        """SIGTERM to every worker; fires once all have exited (rule 5)."""
        self.stopping = True
        for call in self._respawns.values():
            _cancel(call)
        self._respawns.clear()
        for worker in self.workers.values():
            _cancel(worker.slow_start)
        self._stopped = defer.Deferred()
        if not self.workers:
            self._stopped.callback(None)
            return self._stopped
        for worker in list(self.workers.values()):
            worker.signal("TERM")
        self._kill = self._clock.callLater(timeout, self._kill_the_rest)
        return self._stopped

    def _kill_the_rest(self) -> None:
        self._kill = None
        for worker in list(self.workers.values()):
            log.warn(
                "worker {n} (pid {pid}) did not exit after SIGTERM: killing it",
                n=worker.number,
                pid=worker.pid,
            )
            worker.signal("KILL")


def _cancel(call: IDelayedCall | None) -> None:
    if call is not None and call.active():
        call.cancel()

"""One coarse timer for every connection's deadline, instead of a timer per request.

A ``callLater`` plus ``cancel`` per request costs microseconds on the hot path; setting a float
costs nothing. The sweeper wakes every ``resolution`` seconds and tells each tracked object whose
deadline has passed, so a timeout fires up to ``resolution`` late, which is fine for timeouts
measured in seconds. For the same reason deadlines are computed from :attr:`DeadlineSweeper.now`,
the time of the last sweep, which costs an attribute read instead of a clock call.
"""

from __future__ import annotations

import math
from typing import Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

NEVER = math.inf


class HasDeadline(Protocol):
    deadline: float

    def deadline_passed(self, now: float) -> None: ...


class DeadlineSweeper:
    """Calls ``deadline_passed`` on tracked objects once their ``deadline`` is behind ``clock``."""

    def __init__(self, *, clock: IReactorTime, resolution: float = 0.25) -> None:
        self._clock = clock
        self._tracked: set[HasDeadline] = set()
        self._loop = LoopingCall(self._sweep)
        self._loop.clock = clock
        self._resolution = resolution
        #: The clock's time at the last sweep: at most ``resolution`` old while anything is tracked.
        self.now = clock.seconds()

    def track(self, item: HasDeadline) -> None:
        self._tracked.add(item)
        if not self._loop.running:
            self.now = self._clock.seconds()
            self._loop.start(self._resolution, now=False)

    def untrack(self, item: HasDeadline) -> None:
        self._tracked.discard(item)
        if not self._tracked and self._loop.running:
            self._loop.stop()

    def _sweep(self) -> None:
        self.now = now = self._clock.seconds()
        due = [item for item in self._tracked if item.deadline <= now]
        for item in due:
            try:
                item.deadline_passed(now)
            except Exception:
                # One broken connection must not stop every other connection's timeouts.
                log.failure("handling a timeout failed")

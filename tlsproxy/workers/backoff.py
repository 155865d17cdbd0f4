"""When to start a replacement for a worker that died, and how to say how it died.

Rules:

1. A worker that ran for a while (``stable`` seconds) and died is replaced after ``first``
   seconds: a crash, not a pattern.
2. A worker that dies soon after it started (a quick death) is part of a crash loop: the first
   is replaced after ``first`` seconds, and each further one in a row doubles the wait, up to
   ``maximum``, so a worker that cannot start costs a line in the log now and then, never a
   busy loop. The streak counts quick deaths only.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure


@dataclass(frozen=True)
class Backoff:
    """The respawn policy; :meth:`after` is the whole decision."""

    first: float = 0.5
    maximum: float = 30.0
    stable: float = 10.0

    def after(self, *, streak: int, lived: float) -> tuple[int, float]:
        """A worker died after ``lived`` seconds, ``streak`` quick deaths before it in a row:
        the new streak (0 after a stable run), and the seconds to wait before starting its
        replacement."""
        streak = 0 if lived >= self.stable else streak + 1
        return streak, min(self.maximum, self.first * 2 ** max(0, streak - 1))


def describe_exit(reason: Failure) -> str:
    """How a process ended, as ``spawnProcess`` reports it: "exited with status 2", "killed by
    signal 9 (SIGKILL)"."""
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exited with status 0"
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            try:
                name = f" ({signal.Signals(value.signal).name})"
            except ValueError:
                name = ""
            return f"killed by signal {value.signal}{name}"
        return f"exited with status {value.exitCode}"
    return f"ended: {reason.getErrorMessage()}"

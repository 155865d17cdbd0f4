"""tlsproxy.workers.backoff: when a dead worker is replaced, and how its end is described."""

from __future__ import annotations

import pytest
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure

from tlsproxy.workers.backoff import Backoff, describe_exit


def test_a_worker_that_ran_a_while_is_replaced_after_the_first_delay() -> None:
    """Dying after ``stable`` seconds is a crash, not a loop: no quick death counted (streak
    0), the first delay, even after earlier quick deaths."""
    backoff = Backoff(first=0.5, maximum=30.0, stable=10.0)
    assert backoff.after(streak=0, lived=3600.0) == (0, 0.5)
    assert backoff.after(streak=5, lived=10.0) == (0, 0.5)


def test_the_streak_counts_quick_deaths_only() -> None:
    """A stable worker killed, then its replacement dying at once: one quick death in a row,
    not two (the log line says how many)."""
    backoff = Backoff(first=0.5, maximum=30.0, stable=10.0)
    streak, _ = backoff.after(streak=0, lived=3600.0)
    assert backoff.after(streak=streak, lived=0.3) == (1, 0.5)
    assert backoff.after(streak=1, lived=0.3) == (2, 1.0)


def test_quick_deaths_in_a_row_double_the_delay_up_to_the_maximum() -> None:
    """Each worker that dies soon after it started doubles the wait: 0.5, 1, 2 ... 30, 30."""
    backoff = Backoff(first=0.5, maximum=30.0, stable=10.0)
    streak, delays = 0, []
    for _ in range(9):
        streak, delay = backoff.after(streak=streak, lived=0.2)
        delays.append(delay)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert streak == 9


@pytest.mark.parametrize(
    ("reason", "said"),
    [
        (ProcessDone(0), "exited with status 0"),
        (ProcessTerminated(exitCode=2), "exited with status 2"),
        (ProcessTerminated(signal=9), "killed by signal 9 (SIGKILL)"),
        (ProcessTerminated(signal=15), "killed by signal 15 (SIGTERM)"),
    ],
)
def test_exits_are_described_as_an_operator_reads_them(reason: Exception, said: str) -> None:
    """Status or signal, with the signal's name."""
    assert describe_exit(Failure(reason)) == said

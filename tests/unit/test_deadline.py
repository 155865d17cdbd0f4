"""tlsproxy.deadline: one coarse timer tells each tracked object when its deadline has passed."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import pytest
from twisted.internet.task import Clock

from tlsproxy.deadline import NEVER, DeadlineSweeper

RESOLUTION = 0.25


@dataclass(eq=False)
class Item:
    """Something with a deadline that records when it was told."""

    deadline: float = NEVER
    told: list[float] = field(default_factory=list)

    def deadline_passed(self, now: float) -> None:
        self.told.append(now)
        self.deadline = NEVER


@dataclass(eq=False)
class Broken(Item):
    """An item whose timeout handling fails."""

    def deadline_passed(self, now: float) -> None:
        super().deadline_passed(now)
        raise RuntimeError("timeout handler failed")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sweeper(clock: Clock) -> DeadlineSweeper:
    return DeadlineSweeper(clock=clock, resolution=RESOLUTION)


def test_passed_deadline_is_reported_within_one_resolution(
    clock: Clock, sweeper: DeadlineSweeper
) -> None:
    """An item is told at the first sweep at or after its deadline, not before."""
    item = Item(deadline=1.1)
    sweeper.track(item)
    clock.advance(1.0)
    assert item.told == []
    clock.advance(RESOLUTION)
    assert item.told == [1.25]


def test_deadline_moved_later_is_not_reported_early(clock: Clock, sweeper: DeadlineSweeper) -> None:
    """Setting a later deadline (progress) is all it takes to push the timeout back."""
    item = Item(deadline=1.0)
    sweeper.track(item)
    clock.pump([RESOLUTION] * 3)
    item.deadline = 5.0
    clock.pump([RESOLUTION] * 16)
    assert item.told == []
    clock.pump([RESOLUTION])
    assert item.told == [5.0]


def test_never_never_fires(clock: Clock, sweeper: DeadlineSweeper) -> None:
    """An item whose deadline is NEVER is never told."""
    item = Item()
    sweeper.track(item)
    clock.pump([100.0] * 10)
    assert item.told == []


def test_untracked_item_is_not_told(clock: Clock, sweeper: DeadlineSweeper) -> None:
    """After untrack, a passed deadline goes unreported."""
    item, other = Item(deadline=1.0), Item()
    sweeper.track(item)
    sweeper.track(other)
    sweeper.untrack(item)
    clock.advance(2.0)
    assert item.told == []


def test_no_timer_runs_while_nothing_is_tracked(clock: Clock, sweeper: DeadlineSweeper) -> None:
    """The sweep stops with the last untrack and starts again with the next track."""
    assert clock.getDelayedCalls() == []
    item = Item(deadline=10.0)
    sweeper.track(item)
    assert len(clock.getDelayedCalls()) == 1
    sweeper.untrack(item)
    assert clock.getDelayedCalls() == []
    clock.advance(20.0)
    sweeper.track(item)
    clock.advance(RESOLUTION)
    assert item.told == [20.25]


def test_now_is_the_time_of_the_last_sweep(clock: Clock, sweeper: DeadlineSweeper) -> None:
    """``now`` lags the clock by at most one resolution while something is tracked."""
    clock.advance(3.0)
    sweeper.track(Item())
    assert sweeper.now == 3.0
    clock.advance(0.2)
    assert sweeper.now == 3.0
    clock.advance(0.1)
    assert sweeper.now == pytest.approx(3.3)


def test_an_item_may_untrack_others_while_being_told(
    clock: Clock, sweeper: DeadlineSweeper
) -> None:
    """Timeouts that close other tracked connections do not upset the sweep."""
    victim = Item(deadline=1.0)

    @dataclass(eq=False)
    class Closer(Item):
        def deadline_passed(self, now: float) -> None:
            super().deadline_passed(now)
            sweeper.untrack(self)
            sweeper.untrack(victim)

    closer = Closer(deadline=1.0)
    sweeper.track(closer)
    sweeper.track(victim)
    clock.advance(1.0)
    assert closer.told == [1.0]


def test_one_failing_timeout_does_not_stop_the_others(
    clock: Clock, sweeper: DeadlineSweeper
) -> None:
    """A deadline_passed that raises neither starves other items nor ends later sweeps, or one
    broken connection would switch off every timeout in the process."""
    broken, later = Broken(deadline=1.0), Item(deadline=2.0)
    sweeper.track(broken)
    sweeper.track(later)
    with contextlib.suppress(RuntimeError):  # whether it escapes to the reactor is not the point
        clock.advance(1.0)
    clock.advance(1.0)
    assert later.told == [2.0]

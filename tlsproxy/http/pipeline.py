"""Pipelined HTTP/1.1 requests: those a client sent ahead of their turn, held until it comes.

Rule: requests are answered in order. A request that arrives while the previous one is still
being answered is held as the parser's events for it, parsed but not started, and the connection
stops reading until its turn comes, so a pipelining client costs at most one read's worth of
memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

#: One parser callback and its arguments, as the parser made it.
ParserEvent = tuple[Callable[..., None], tuple[Any, ...]]


class Pipeline:
    """The parser events of requests that arrived ahead of their turn, oldest first."""

    __slots__ = ("_events",)

    def __init__(self, events: Iterable[ParserEvent] = ()) -> None:
        self._events: deque[ParserEvent] = deque(events)

    def hold(self, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        """Keep one parser event for later."""
        self._events.append((callback, args))

    def complete_requests(self, end: Callable[[], None]) -> Pipeline | None:
        """The events up to the end (``end``) of the last complete request; None if none is."""
        held = list(self._events)
        ends = [i for i, (callback, _) in enumerate(held) if callback == end]
        return Pipeline(held[: ends[-1] + 1]) if ends else None

    def replay(self, stop: Callable[[], bool]) -> None:
        """Run the held events in order until ``stop()`` is true after one; the rest stay held."""
        events = self._events
        while events:
            callback, args = events.popleft()
            callback(*args)
            if stop():
                return

    def hold_all(self, rest: Pipeline) -> None:
        """Keep ``rest`` after what is held already."""
        self._events.extend(rest._events)

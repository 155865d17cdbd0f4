"""The reload decision, the SIGHUP handler and the drain, without a reactor (task.Clock)."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest
from twisted.internet.task import Clock

from tlsproxy.config import ConfigError
from tlsproxy.lifecycle import Drain, Reloaded, ReloadFailed, ReloadSignal, attempt_reload


def test_reload_that_loads_is_used() -> None:
    """A build that completes gives the new state to swap in."""
    assert attempt_reload(lambda: "new") == Reloaded("new")


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("/etc/tls/cert.pem is not PEM; convert it with openssl x509"),
        FileNotFoundError(2, "No such file or directory"),
    ],
)
def test_reload_that_fails_keeps_the_old_state(error: Exception) -> None:
    """A user error while loading is a failed reload with the error's words, not a new state."""

    def build() -> str:
        raise error

    outcome = attempt_reload(build)
    assert isinstance(outcome, ReloadFailed)
    assert outcome.reason == str(error)


def test_reload_bug_is_not_mistaken_for_a_bad_file() -> None:
    """An error that no certificate file can cause propagates."""

    def build() -> str:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        attempt_reload(build)


class _Reactor:
    def __init__(self) -> None:
        self.calls: list[Callable[[], object]] = []

    def callFromThread(self, call: Callable[[], object]) -> None:
        self.calls.append(call)


def test_sighup_schedules_the_reload_and_uninstall_restores() -> None:
    """While installed, SIGHUP hands the reload to the reactor thread; uninstall puts the
    previous handler back."""
    previous = signal.getsignal(signal.SIGHUP)
    reactor = _Reactor()

    def reload() -> None:
        pass

    handler = ReloadSignal(reactor=reactor, reload=reload)
    handler.install()
    try:
        signal.raise_signal(signal.SIGHUP)
        assert reactor.calls == [reload]
    finally:
        handler.uninstall()
    assert signal.getsignal(signal.SIGHUP) == previous


class _Connection:
    def __init__(self, connections: set[_Connection], *, busy: bool) -> None:
        self.connections = connections
        self.busy = busy
        self.asked = False
        self.aborted = False
        connections.add(self)

    def end_gracefully(self) -> None:
        self.asked = True
        if not self.busy:
            self.connections.discard(self)

    def abort(self) -> None:
        self.aborted = True
        self.connections.discard(self)


def _drain(
    clock: Clock, connections: set[_Connection], timeout: float = 30.0
) -> Drain[_Connection]:
    return Drain(
        clock=clock,
        connections=connections,
        end_gracefully=_Connection.end_gracefully,
        abort=_Connection.abort,
        timeout=timeout,
    )


def test_drain_without_connections_is_done_at_once() -> None:
    """Nothing open: the drain's Deferred has fired already."""
    assert _drain(Clock(), set()).start().called


def test_drain_waits_for_busy_connections() -> None:
    """Idle connections end at once; the drain ends when the last busy one has, not before."""
    clock, connections = Clock(), set[_Connection]()
    idle = _Connection(connections, busy=False)
    busy = _Connection(connections, busy=True)
    done = _drain(clock, connections).start()
    assert idle.asked
    assert busy.asked
    assert connections == {busy}
    clock.advance(10)
    assert not done.called
    connections.discard(busy)  # its exchange ended and it closed
    clock.advance(0.1)
    assert done.called
    assert not busy.aborted
    assert not clock.getDelayedCalls()


def test_drain_aborts_what_is_left_at_the_deadline() -> None:
    """At the timeout every connection still open is aborted, and the drain ends."""
    clock, connections = Clock(), set[_Connection]()
    busy = _Connection(connections, busy=True)
    drain = _drain(clock, connections, timeout=1.0)
    done = drain.start()
    clock.advance(0.9)
    assert not busy.aborted
    clock.advance(0.1)
    assert busy.aborted
    assert drain.aborted == 1
    clock.advance(0.1)
    assert done.called
    assert not clock.getDelayedCalls()

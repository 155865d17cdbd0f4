"""The reload decision, the SIGHUP handler and the drain, without a reactor (task.Clock)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from tlsproxy.configerror import ConfigError
from tlsproxy.lifecycle import (
    CertificateWatcher,
    Drain,
    Reloaded,
    ReloadFailed,
    ReloadSignal,
    attempt_reload,
)


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


# --- --watch-certs ------------------------------------------------------------------------------


def test_watcher_reloads_once_the_changed_files_have_settled(tmp_path: Path) -> None:
    """A renewal writes the files; the reload comes one check after they stop changing, once."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(b"old cert")
    key.write_bytes(b"old key")
    clock, reloads = Clock(), list[int]()
    watcher = CertificateWatcher(
        clock=clock, paths=lambda: [cert, key], reload=lambda: reloads.append(1), interval=2.0
    )
    watcher.start()
    clock.advance(2)
    assert reloads == []  # nothing changed
    cert.write_bytes(b"new certificate")
    clock.advance(2)
    assert reloads == []  # changed, not yet settled (the key may follow)
    key.write_bytes(b"new key, longer")
    clock.advance(2)
    assert reloads == []  # changed again
    clock.advance(2)
    assert reloads == [1]  # settled: one reload
    clock.advance(10)
    assert reloads == [1]  # and no more until the files change again
    watcher.stop()


def test_watcher_does_not_retry_a_failed_reload_until_the_files_change(tmp_path: Path) -> None:
    """A broken renewal is reported once, not at every check; fixing the files reloads again."""
    cert = tmp_path / "cert.pem"
    cert.write_bytes(b"good")
    clock, reloads = Clock(), list[int]()
    watcher = CertificateWatcher(
        clock=clock, paths=lambda: [cert], reload=lambda: reloads.append(1)
    )
    watcher.start()
    cert.write_bytes(b"broken!")
    clock.advance(2)
    clock.advance(2)
    clock.advance(20)
    assert reloads == [1]
    cert.write_bytes(b"fixed again")
    clock.advance(2)
    clock.advance(2)
    assert reloads == [1, 1]
    cert.unlink()  # a file that vanishes is a change too (the reload then says what is missing)
    clock.advance(2)
    clock.advance(2)
    assert reloads == [1, 1, 1]


def test_watcher_reloads_when_a_file_appears_in_the_scanned_set(tmp_path: Path) -> None:
    """--certs-dir: the list of files is asked again at each check, so a new pair is seen."""
    first, added = tmp_path / "a.pem", tmp_path / "b.pem"
    first.write_bytes(b"a")
    files = [first]
    clock, reloads = Clock(), list[int]()
    watcher = CertificateWatcher(
        clock=clock, paths=lambda: list(files), reload=lambda: reloads.append(1)
    )
    watcher.start()
    clock.advance(2)
    clock.advance(2)
    assert reloads == []
    added.write_bytes(b"b")
    files.append(added)
    clock.advance(2)  # seen changed
    assert reloads == []
    clock.advance(2)  # settled
    assert reloads == [1]
    clock.advance(2)
    assert reloads == [1]
    watcher.stop()

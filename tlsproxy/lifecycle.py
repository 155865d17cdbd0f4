"""Signals and the drain: SIGHUP reloads the certificates, SIGTERM ends connections gracefully.

Rules:

1. Reload is rebuild, then swap. The new certificate and TLS context are built completely off to
   the side (:func:`attempt_reload`); only a complete success replaces the old ones, and only for
   new handshakes: open connections keep what they handshook with. A failure changes nothing and
   is one log line that names the file and the fix.
2. twistd leaves SIGHUP at its default, which kills the process: :class:`ReloadSignal` takes it
   over while the service runs and puts the previous handler back when it stops. The handler only
   hands the reload to the reactor thread (``callFromThread``, as Twisted's own SIGTERM handler
   does); nothing else runs inside a signal handler.
3. SIGTERM and SIGINT stay Twisted's: they stop the reactor, which calls ``stopService`` and
   waits, without limit, for its Deferred. :class:`Drain` is that Deferred, with the limit: the
   listeners close, every connection is asked to end once its exchanges have (idle ones end at
   once), and at ``--drain-timeout`` whatever is left is aborted.
4. Connections do not tell anyone here when they end (``FrontFactory`` keeps the open set), so the
   drain looks at that set every ``check_interval``: a tenth of a second, cheap, and bounded by
   the deadline.
5. A completed drain is a clean exit (status 0): twistd would otherwise send itself the signal
   that stopped the reactor once it has, and the exit status would say "killed". A run that
   failed after the reactor started (a ``--workers`` worker that cannot start) exits with the
   status it chose, once twistd has cleaned up (:func:`exit_with_status`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Generic, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

T = TypeVar("T")
C = TypeVar("C")


# -- reload: the decision (rule 1) ------------------------------------------------------------


@dataclass(frozen=True)
class Reloaded(Generic[T]):
    """Everything loaded: ``state`` may replace what serves now."""

    state: T


@dataclass(frozen=True)
class ReloadFailed:
    """Something did not load: what serves now stays; ``reason`` names the file and the fix."""

    reason: str


def attempt_reload(build: Callable[[], T]) -> Reloaded[T] | ReloadFailed:
    """Build the complete new state; a user error (bad file, unreadable path) is a failed reload.

    ``ValueError`` covers :class:`tlsproxy.configerror.ConfigError` (every certificate problem,
    worded for the user) and ``OSError`` covers ``ssl.SSLError`` and files that vanished
    mid-renewal. Anything else is a bug and propagates: it must not be mistaken for a broken
    certificate.
    """
    try:
        return Reloaded(build())
    except (ValueError, OSError) as e:
        return ReloadFailed(str(e) or type(e).__name__)


# -- SIGHUP (rule 2) ----------------------------------------------------------------------------


class ReloadSignal:
    """SIGHUP → ``reload()`` on the reactor thread, while installed."""

    def __init__(self, *, reactor: Any, reload: Callable[[], object]) -> None:
        self._reactor = reactor
        self._reload = reload
        self._previous: Any = None
        self._installed = False

    def install(self) -> None:
        """Take SIGHUP over (from the main thread, as ``signal.signal`` requires)."""
        if self._installed:
            return
        self._previous = signal.signal(signal.SIGHUP, self._received)
        self._installed = True

    def uninstall(self) -> None:
        """Give SIGHUP back to whoever had it before."""
        if not self._installed:
            return
        signal.signal(signal.SIGHUP, self._previous)
        self._installed = False

    def _received(self, number: int, frame: FrameType | None) -> None:
        self._reactor.callFromThread(self._reload)


# -- the drain (rules 3 to 5) -------------------------------------------------------------------


FileState = tuple[tuple[Path, tuple[int, int, int] | None], ...]


def file_state(paths: Collection[Path]) -> FileState:
    """What identifies each file's content cheaply: inode, size, mtime (None: missing)."""
    states: list[tuple[Path, tuple[int, int, int] | None]] = []
    for path in paths:
        try:
            info = path.stat()
        except OSError:
            states.append((path, None))
        else:
            states.append((path, (info.st_ino, info.st_size, info.st_mtime_ns)))
    return tuple(states)


class CertificateWatcher:
    """``--watch-certs``: reload when the certificate files change, as certbot renews them.

    A change is acted on once the files have stayed the same for one more check, so a renewal
    that writes the certificate and the key one after the other is loaded whole. A reload that
    fails is not tried again until the files change again (no log line every interval).
    ``paths`` is asked at every check: a scanned ``--certs-dir`` gains and loses files.
    """

    def __init__(
        self,
        *,
        clock: IReactorTime,
        paths: Callable[[], Collection[Path]],
        reload: Callable[[], object],
        interval: float = 2.0,
    ) -> None:
        self._paths = paths
        self._reload = reload
        self._loaded = file_state(paths())  # what the serving certificate was read from
        self._seen = self._loaded
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock
        self._interval = interval

    def start(self) -> None:
        self._loop.start(self._interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def check(self) -> None:
        try:
            state = file_state(self._paths())
        except ValueError:  # --certs-dir unreadable: the reload says why, once
            state = ()
        settled = state == self._seen
        self._seen = state
        if settled and state != self._loaded:
            self._loaded = state
            try:
                self._reload()
            except Exception:  # a bug in one reload must not stop watching for the next
                log.failure("--watch-certs: the reload failed unexpectedly")


class Drain(Generic[C]):
    """Ends ``connections`` gracefully; aborts the rest ``timeout`` seconds after :meth:`start`.

    ``end_gracefully(connection)`` asks one connection to close after its exchanges (HTTP/1.1
    ``Connection: close``, HTTP/2 GOAWAY); ``abort(connection)`` cuts it off. ``connections`` is
    the live set of open connections, which shrinks as they close.
    """

    def __init__(
        self,
        *,
        clock: IReactorTime,
        connections: Collection[C],
        end_gracefully: Callable[[C], None],
        abort: Callable[[C], None],
        timeout: float,
        check_interval: float = 0.1,
        abort_grace: float = 1.0,
    ) -> None:
        self._clock = clock
        self._connections = connections
        self._end_gracefully = end_gracefully
        self._abort = abort
        self._timeout = timeout
        self._check = LoopingCall(self._check_empty)
        self._check.clock = clock
        self._check_interval = check_interval
        self._abort_grace = abort_grace
        self._deadline: IDelayedCall | None = None
        self.done: defer.Deferred[None] = defer.Deferred()
        self.aborted = 0  # connections cut off at the deadline

    def start(self) -> defer.Deferred[None]:
        """Ask every connection to end; the Deferred fires once none is left (or the deadline)."""
        if self._connections:
            log.info(
                "draining {n} connection(s), for at most {t}s (--drain-timeout)",
                n=len(self._connections),
                t=self._timeout,
            )
        for connection in list(self._connections):
            self._end_gracefully(connection)
        if not self._check_empty():
            self._deadline = self._clock.callLater(self._timeout, self._deadline_passed)
            self._check.start(self._check_interval, now=False)
        return self.done

    def _check_empty(self) -> bool:
        if self._connections or self.done.called:
            return self.done.called
        self._finish()
        return True

    def _deadline_passed(self) -> None:
        self._deadline = None
        left = list(self._connections)
        self.aborted = len(left)
        log.warn(
            "--drain-timeout passed: aborting {n} connection(s) still open",
            n=len(left),
        )
        for connection in left:
            self._abort(connection)
        # An abort takes effect on the next reactor turn (Twisted resets the socket in
        # connectionLost); ending the drain now would let the reactor's shutdown close those
        # sockets in order first, and a cut-off response would look complete. The check loop
        # ends the drain once they are gone; the backstop below ends it regardless.
        self._deadline = self._clock.callLater(self._abort_grace, self._finish)

    def _finish(self) -> None:
        if self._check.running:
            self._check.stop()
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        if not self.done.called:
            self.done.callback(None)


def exit_cleanly(reactor: Any) -> None:
    """Make twistd exit with status 0 after a completed drain (rule 5).

    Twisted's SIGTERM and SIGINT handlers record the signal on the reactor
    (``_ISupportsExitSignalCapturing._exitSignal``); twistd re-raises it after the reactor stops.
    """
    if getattr(reactor, "_exitSignal", None) is not None:
        reactor._exitSignal = None


def exit_with_status(status: int) -> None:
    """Make the process exit with ``status`` once twistd is done (rule 5).

    twistd has no exit status of its own after the reactor ran: it returns, and Python exits 0.
    At interpreter exit, after twistd removed its pid file, the output is flushed and the
    process leaves with ``status``.
    """

    def leave() -> None:
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
        os._exit(status)

    atexit.register(leave)

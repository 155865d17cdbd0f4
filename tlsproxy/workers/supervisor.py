"""The twistd process of ``--workers N``: it opens the listeners, and N workers serve them.

Rules:

1. The supervisor does everything that must happen once: the configuration is checked (by
   ``tap``, as for a single process), every listener is opened before twistd drops privileges
   (so "address in use" is one line, and port 443 works as root), the banner is printed, and
   only the supervisor talks to systemd and serves ``--metrics-listen``.
2. It never accepts a connection: its listening sockets stop reading as soon as they open; the
   workers inherit and adopt them (:mod:`.channel`), each TCP listener as one socket per worker
   (:mod:`.reuseport`), others as one shared socket.
3. SIGHUP (and ``--watch-certs``) reach every worker, which reloads with the usual rules;
   systemd hears ``RELOADING=1``, then ``READY=1`` once every worker has answered (or
   :data:`RELOAD_TIMEOUT` passed). SIGTERM and SIGINT close the supervisor's copies of the
   listeners (new connections are refused), send SIGTERM to every worker, and exit 0 once all
   have drained and exited.
4. ``READY=1`` and the banner come once every worker is serving; ``STATUS=`` counts them.
5. The metrics page is the sum of the workers' latest counters (sent once a second), plus
   what workers that have exited had counted, so counters never go down.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from tlsproxy.config import Config
from tlsproxy.lifecycle import CertificateWatcher, ReloadSignal, exit_cleanly, exit_with_status
from tlsproxy.listen import ListenError, listen_all, listen_metrics, url_of
from tlsproxy.metrics import MetricsFactory, render, snapshot, total
from tlsproxy.service import ProxyService
from tlsproxy.systemd import SystemdNotifier
from tlsproxy.workers.channel import (
    CONTROL_FD,
    ERRORS_FD,
    MESSAGES_FD,
    OUTPUT_FD,
    Inheritance,
    Measured,
    worker_environment,
)
from tlsproxy.workers.pool import Spawn, Worker, WorkerPool
from tlsproxy.workers.reuseport import ReusePortReactor, reuses_port, siblings

log = Logger()

#: Seconds a reload may take before systemd hears READY=1 anyway.
RELOAD_TIMEOUT = 30.0
#: Seconds after --drain-timeout a worker still running is killed.
STOP_GRACE = 5.0


class _NeverAccepting(Factory):
    """The supervisor's listeners' factory: they stop reading before the reactor runs."""

    protocol = Protocol
    noisy = False

    def logPrefix(self) -> str:
        return "tlsproxy"


class Supervisor(Service):
    """Opens the listeners, keeps N workers serving them, and speaks for them (rules 1-5)."""

    def __init__(
        self,
        config: Config,
        *,
        reactor: Any,
        arguments: Sequence[str],
        environ: Mapping[str, str],
        cwd: str,
        executable: str = sys.executable,
        spawn: Spawn | None = None,
    ) -> None:
        self.config = config
        self._reactor = reactor
        self.arguments = list(arguments)
        self._environ = dict(environ)
        self._cwd = cwd
        self._executable = executable
        self.ports: list[Any] = []
        self.redirect_ports: list[Any] = []
        self.metrics_port: Any = None
        self._groups: list[list[Any]] = []  # per listener: its sockets (:mod:`.reuseport`)
        self.pool = WorkerPool(
            count=config.workers, clock=reactor, spawn=spawn or self._spawn, events=self
        )
        self.notifier = SystemdNotifier(
            notify_socket=config.notify_socket,
            watchdog_usec=config.watchdog_usec,
            clock=reactor,
            status=self.status,
        )
        self._reload_signal = ReloadSignal(reactor=reactor, reload=self.reload)
        source = config.certificate_source
        self._watcher = (
            CertificateWatcher(clock=reactor, paths=source.files, reload=self.reload)
            if config.watch_certs and source is not None
            else None
        )
        self._reloading: set[Worker] = set()
        self._reload_deadline: IDelayedCall | None = None
        self._retired: Mapping[str, Any] = {}  # counts of workers that have exited (rule 5)
        self.failed = False

    # -- listening (rules 1, 2) ----------------------------------------------------------------

    def privilegedStartService(self) -> None:
        never = _NeverAccepting()
        reuse = ReusePortReactor(self._reactor)
        try:
            self.ports = listen_all(reuse, self.config.listeners, never)
            if self.config.redirect_listeners:
                self.redirect_ports = listen_all(reuse, self.config.redirect_listeners, never)
            if self.config.metrics_listen is not None:
                page = MetricsFactory(self.render_metrics, clock=self._reactor)
                self.metrics_port = listen_metrics(self._reactor, self.config.metrics_listen, page)
        except ListenError as e:
            print(f"tlsproxy: error: {e}", file=sys.__stderr__)
            raise SystemExit(2) from None
        more = self.config.workers - 1
        self._groups = [
            [port, *siblings(self._reactor, port, more, never)] if reuses_port(port) else [port]
            for port in self.ports + self.redirect_ports
        ]
        for group in self._groups:
            for port in group:
                port.stopReading()
        super().privilegedStartService()  # type: ignore[no-untyped-call]

    def _spawn(self, number: int, worker: Worker) -> IProcessTransport:
        """Start worker ``number``: the user's arguments, the listeners, the pipes."""
        inherited = Inheritance.numbered(
            number, listeners=len(self.ports), redirect_listeners=len(self.redirect_ports)
        )
        fds: dict[int, int | str] = {
            CONTROL_FD: "w",
            OUTPUT_FD: OUTPUT_FD,
            ERRORS_FD: "r",
            MESSAGES_FD: "r",
        }
        # A worker's own socket of each SO_REUSEPORT group, or the one socket all share.
        mine = [group[(number - 1) % len(group)] for group in self._groups]
        fds.update(inherited.child_fds([port.fileno() for port in mine]))
        process: IProcessTransport = self._reactor.spawnProcess(
            worker,
            self._executable,
            [self._executable, "-m", "tlsproxy.workers", *self.arguments],
            env=worker_environment(self._environ, inherited),
            path=self._cwd,
            childFDs=fds,
        )
        return process

    # -- running ---------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._reload_signal.install()
        if self._watcher is not None:
            self._watcher.start()
        self.pool.start()

    def worker_started(self, worker: Worker, *, first_time: bool) -> None:
        if first_time and self.pool.complete_once:
            self._all_started()

    def _all_started(self) -> None:
        """Every worker serves (rule 4): the banner, and READY=1."""
        pids = ", ".join(str(w.pid) for w in sorted(self.pool.ready, key=lambda w: w.number))
        lines = ProxyService.banner(
            self.config,
            ports=self.ports,
            redirect_ports=self.redirect_ports,
            metrics_port=self.metrics_port,
        )
        lines.insert(
            len(self.ports) + len(self.redirect_ports),
            f"{self.config.workers} worker processes share these listeners (pids {pids}); "
            "see docs/workers.md",
        )
        for line in lines:
            log.info("{line}", line=line)
        self.notifier.ready()

    def worker_measured(self, worker: Worker, measured: Measured) -> None:
        pass  # the pool keeps each worker's latest; a scrape sums them

    def worker_ended(self, worker: Worker) -> None:
        if worker.last_measured is not None:
            retired = [self._retired, worker.last_measured.counters]
            self._retired = snapshot(total(retired, gauges=False))
        if worker in self._reloading:
            self.worker_reloaded(worker, ok=False)

    def startup_failed(self, reason: str) -> None:
        """A worker could not start while tlsproxy started: it would not start again."""
        if self.failed:
            return
        self.failed = True
        log.critical("tlsproxy cannot start: {reason}", reason=reason)
        exit_with_status(1)
        if self._reactor.running:
            self._reactor.stop()
        else:
            self._reactor.callWhenRunning(self._reactor.stop)

    # -- reload (rule 3) -------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: every serving worker reloads its certificates."""
        if self.pool.stopping:
            return
        self.notifier.reloading()
        self._reloading = set(self.pool.signal("HUP"))
        log.info("reloading certificates in {n} worker(s)", n=len(self._reloading))
        if self._reload_deadline is not None and self._reload_deadline.active():
            self._reload_deadline.cancel()
        self._reload_deadline = self._reactor.callLater(RELOAD_TIMEOUT, self._reload_ended)
        if not self._reloading:
            self._reload_ended()

    def worker_reloaded(self, worker: Worker, ok: bool) -> None:
        self._reloading.discard(worker)
        if not self._reloading and self._reload_deadline is not None:
            self._reload_ended()

    def _reload_ended(self) -> None:
        if self._reload_deadline is not None and self._reload_deadline.active():
            self._reload_deadline.cancel()
        self._reload_deadline = None
        if self._reloading:
            log.warn(
                "{n} worker(s) did not answer the reload within {t:g}s",
                n=len(self._reloading),
                t=RELOAD_TIMEOUT,
            )
            self._reloading = set()
        self.notifier.ready()

    # -- metrics and status (rules 4, 5) ---------------------------------------------------------

    def render_metrics(self) -> str:
        """The page a scrape gets: every worker's counters summed, and their certificates."""
        reports = [w.last_measured for w in self.pool.workers.values() if w.last_measured]
        counters = total([self._retired, *(r.counters for r in reports)])
        certificates: Sequence[Any] = (
            reports[0].certificates if reports else self.config.certificates.certificates
        )
        return render(counters, self._reactor.seconds(), certificates)

    def status(self) -> str:
        """The one line ``systemctl status`` shows."""
        where = ", ".join(url_of(port) for port in self.ports) or "nothing"
        reports = [w.last_measured for w in self.pool.workers.values() if w.last_measured]
        connections = sum(int(r.counters.get("connections_open", 0)) for r in reports)
        return (
            f"serving {where}; {len(self.pool.ready)} of {self.config.workers} workers, "
            f"{connections} connections"
        )

    # -- stopping (rule 3) -----------------------------------------------------------------------

    def stopService(self) -> defer.Deferred[None]:
        self.notifier.stopping()
        super().stopService()  # type: ignore[no-untyped-call]
        if self._watcher is not None:
            self._watcher.stop()
        # The workers stop accepting too; once every copy is closed, connections are refused.
        stopped = [
            defer.maybeDeferred(port.stopListening) for group in self._groups for port in group
        ]
        if self.metrics_port is not None:
            stopped.append(defer.maybeDeferred(self.metrics_port.stopListening))
        drained = self.pool.stop(timeout=self.config.drain_timeout + STOP_GRACE)
        return defer.gatherResults([*stopped, drained]).addCallback(self._stopped)

    def _stopped(self, _: object) -> None:
        self._reload_signal.uninstall()
        self.notifier.close()
        if not self.failed:
            exit_cleanly(self._reactor)


def build_supervisor(
    config: Config,
    *,
    reactor: Any,
    arguments: Sequence[str],
    environ: Mapping[str, str],
    cwd: str,
) -> Supervisor:
    return Supervisor(config, reactor=reactor, arguments=arguments, environ=environ, cwd=cwd)

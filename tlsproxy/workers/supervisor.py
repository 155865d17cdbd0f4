"""The twistd process of ``--workers N``: it opens the listeners, and N workers serve them.

Rules:

1. The supervisor does everything that must happen once: the configuration is checked (by
   ``tap``, as for a single process), every listener is opened before twistd drops privileges
   (so "address in use" is one line, and port 443 works as root), the banner is printed, and
   only the supervisor talks to systemd and serves ``--metrics-listen``.
2. It never accepts a connection: its listening sockets stop reading as soon as they open; the
   workers inherit and adopt them (:mod:`.channel`), each TCP listener as one socket per worker
   (:mod:`.reuseport`; a dead worker's socket leaves the group until its replacement starts),
   others as one shared socket. The ``--access-log`` file is opened here too, as a single
   tlsproxy opens it, and inherited by the workers.
3. SIGHUP (and ``--watch-certs``) reach every worker, which reloads with the usual rules;
   systemd hears ``RELOADING=1``, then ``READY=1`` once every worker has answered (or
   :data:`RELOAD_TIMEOUT` passed), and one line sums the answers up. Replacements waiting for
   their backoff start at once. A reload asked for while tlsproxy starts is owed: it follows
   ``READY=1``. SIGTERM and SIGINT close the supervisor's copies of the listeners (new
   connections are refused), send SIGTERM to every worker, and exit 0 once all have drained
   and exited.
4. ``READY=1`` and the banner come once every worker is serving; ``STATUS=`` counts them.
5. The metrics page is the sum of the workers' latest counters (sent once a second), plus
   what workers that have exited had counted, so counters never go down; the certificates are
   every one some worker serves.
6. Only the supervisor writes the development certificate (workers load it as it is): it makes
   or renews it before it forwards a reload and before it starts a replacement, so N workers
   never race to rewrite it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from tlsproxy.accesslog import open_for_appending
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
    Expiry,
    Inheritance,
    Measured,
    worker_environment,
)
from tlsproxy.workers.pool import Spawn, Worker, WorkerPool
from tlsproxy.workers.reuseport import ListenerGroup, ReusePortReactor

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
    """Opens the listeners, keeps N workers serving them, and speaks for them (rules 1-6)."""

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
        self.groups: list[ListenerGroup] = []  # per listener: its sockets (:mod:`.reuseport`)
        self._urls: list[str] = []
        self.access_log_fd: int | None = None  # --access-log FILE, for the workers (rule 2)
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
        self._reload_answers: list[bool] = []
        self._reload_deadline: IDelayedCall | None = None
        self._reload_owed = False  # asked for while starting (rule 3)
        self._renewal_failed: str | None = None  # rule 6, said once
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
        self._urls = [url_of(port) for port in self.ports]
        workers = self.config.workers
        self.groups = [
            ListenerGroup.of(self._reactor, port, workers, never)
            for port in self.ports + self.redirect_ports
        ]
        for group in self.groups:
            for port in group.open:
                port.stopReading()  # type: ignore[attr-defined]
        log_path = self.config.access_log
        if log_path is not None and log_path != "-":  # standard output is inherited anyway
            self.access_log_fd = open_for_appending(log_path)  # as a single tlsproxy opens it
        super().privilegedStartService()  # type: ignore[no-untyped-call]

    def _spawn(self, number: int, worker: Worker) -> IProcessTransport:
        """Start worker ``number``: the user's arguments, the listeners, the pipes."""
        if self.pool.complete_once:
            self._renew_certificates()  # a replacement reads them (rule 6)
        inherited = Inheritance.numbered(
            number,
            listeners=len(self.ports),
            redirect_listeners=len(self.redirect_ports),
            access_log=self.access_log_fd is not None,
        )
        fds: dict[int, int | str] = {
            CONTROL_FD: "w",
            OUTPUT_FD: OUTPUT_FD,
            ERRORS_FD: "r",
            MESSAGES_FD: "r",
        }
        # A worker's own socket of each SO_REUSEPORT group, or the one socket all share.
        mine: list[Any] = [group.port_for(number) for group in self.groups]
        parent_fds = [port.fileno() for port in mine]
        if self.access_log_fd is not None:
            parent_fds.append(self.access_log_fd)
        fds.update(inherited.child_fds(parent_fds))
        try:
            process: IProcessTransport = self._reactor.spawnProcess(
                worker,
                self._executable,
                # -P: not the current directory first on sys.path, where a json.py would run as
                # the worker (python -m puts it there).
                [self._executable, "-P", "-m", "tlsproxy.workers", *self.arguments],
                env=worker_environment(self._environ, inherited),
                path=self._cwd,
                childFDs=fds,
            )
        except OSError:
            self.worker_pending(number)
            raise
        return process

    def worker_pending(self, number: int) -> None:
        """Worker slot ``number`` has no process for now: its sockets leave their groups."""
        for group in self.groups:
            group.withdraw(number)

    # -- running ---------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._reload_signal.install()
        if self._watcher is not None:
            self._watcher.start()
        self.pool.start()

    def worker_started(self, worker: Worker, *, first_time: bool) -> None:
        # A group keeps its last socket even when its worker is gone; it has a worker again.
        for number in range(1, self.pool.count + 1):
            if number not in self.pool.workers:
                self.worker_pending(number)
        if first_time and self.pool.complete_once:
            self._all_started()

    def _all_started(self) -> None:
        """Every worker serves (rule 4): the banner, and READY=1; then an owed reload."""
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
        if self._reload_owed:
            self._reload_owed = False
            self.reload()

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

    # -- reload (rules 3, 6) ---------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: every serving worker reloads its certificates; waiting ones start."""
        if self.pool.stopping:
            return
        if not self.pool.complete_once:
            if not self._reload_owed:
                log.info("reload asked for while starting: it follows once every worker serves")
            self._reload_owed = True
            return
        self._renew_certificates()
        self.notifier.reloading()
        self._reloading = set(self.pool.signal("HUP"))
        self._reload_answers = []
        log.info("reloading certificates in {n} worker(s)", n=len(self._reloading))
        if self._reload_deadline is not None and self._reload_deadline.active():
            self._reload_deadline.cancel()
        self._reload_deadline = self._reactor.callLater(RELOAD_TIMEOUT, self._reload_ended)
        self.pool.respawn_now()  # after the signal: they load the files as they are now
        if not self._reloading:
            self._reload_ended()

    def _renew_certificates(self) -> None:
        """Make or renew the development certificate if it is the one served (rule 6)."""
        source = self.config.certificate_source
        if source is None or source.pairs:
            return
        try:
            source.load(now=datetime.fromtimestamp(self._reactor.seconds(), UTC))
        except (ValueError, OSError) as e:  # the workers load the same files and say why too
            if str(e) != self._renewal_failed:
                log.warn("cannot check the certificates for the workers: {e}", e=e)
            self._renewal_failed = str(e)
        else:
            self._renewal_failed = None

    def worker_reloaded(self, worker: Worker, ok: bool) -> None:
        if worker in self._reloading:
            self._reloading.discard(worker)
            self._reload_answers.append(ok)
        if not self._reloading and self._reload_deadline is not None:
            self._reload_ended()

    def _reload_ended(self) -> None:
        if self._reload_deadline is not None and self._reload_deadline.active():
            self._reload_deadline.cancel()
        self._reload_deadline = None
        asked = len(self._reload_answers) + len(self._reloading)
        if self._reloading:
            log.warn(
                "{n} worker(s) did not answer the reload within {t:g}s",
                n=len(self._reloading),
                t=RELOAD_TIMEOUT,
            )
            self._reloading = set()
        failed = asked - self._reload_answers.count(True)
        if failed:
            log.error(
                "reload failed in {failed} of {asked} workers (their lines say why); "
                "they serve the previous certificates",
                failed=failed,
                asked=asked,
            )
        elif asked:
            log.info("reloaded in {asked} of {asked} workers", asked=asked)
        self.notifier.ready()

    # -- metrics and status (rules 4, 5) ---------------------------------------------------------

    def render_metrics(self) -> str:
        """The page a scrape gets: every worker's counters summed, and their certificates."""
        reports = [w.last_measured for w in self.pool.workers.values() if w.last_measured]
        counters = total([self._retired, *(r.counters for r in reports)])
        certificates: Sequence[Any] = (
            served_certificates(reports) if reports else self.config.certificates.certificates
        )
        return render(counters, self._reactor.seconds(), certificates)

    def status(self) -> str:
        """The one line ``systemctl status`` shows."""
        where = ", ".join(self._urls) or "nothing"
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
        stopped: list[defer.Deferred[Any]] = [
            defer.maybeDeferred(port.stopListening) for group in self.groups for port in group.open
        ]
        if self.metrics_port is not None:
            stopped.append(defer.maybeDeferred(self.metrics_port.stopListening))
        drained = self.pool.stop(timeout=self.config.drain_timeout + STOP_GRACE)
        return defer.gatherResults([*stopped, drained]).addCallback(self._stopped)

    def _stopped(self, _: object) -> None:
        self._reload_signal.uninstall()
        self.notifier.close()
        if self.access_log_fd is not None:
            os.close(self.access_log_fd)
            self.access_log_fd = None
        if not self.failed:
            exit_cleanly(self._reactor)


def served_certificates(reports: Sequence[Measured]) -> list[Expiry]:
    """Every certificate some worker serves, once each by fingerprint, in the order seen."""
    seen: dict[str, Expiry] = {}
    for report in reports:
        for certificate in report.certificates:
            seen.setdefault(certificate.fingerprint_sha256, certificate)
    return list(seen.values())


def build_supervisor(
    config: Config,
    *,
    reactor: Any,
    arguments: Sequence[str],
    environ: Mapping[str, str],
    cwd: str,
) -> Supervisor:
    return Supervisor(config, reactor=reactor, arguments=arguments, environ=environ, cwd=cwd)

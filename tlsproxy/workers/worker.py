"""One worker process of ``--workers N``: the proxy, on the sockets its supervisor opened.

Rules:

1. A worker builds its configuration from the same arguments as the supervisor (so it loads
   the same certificates with the same checks), then keeps only what is a worker's: it adopts
   the inherited listeners and access log file, leaves ``--metrics-listen``, ``--watch-certs``
   and systemd to the supervisor, and prints no banner. It never writes the development
   certificate (at startup or on reload): it loads it as the supervisor left it.
2. Everything a worker has to tell goes to the supervisor as messages (:mod:`.channel`): that it
   is serving, how each reload went, its counters once a second, and every log event.
3. SIGTERM drains the worker as it drains a single tlsproxy. The end of the control pipe (the
   supervisor is gone, however it died) does the same. SIGINT is ignored: a ^C in a terminal
   reaches the whole process group, and the supervisor turns it into SIGTERM for each worker.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from twisted.internet import abstract, defer
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, LogEvent, eventAsText, globalLogBeginner
from twisted.python.failure import Failure
from zope.interface import implementer

from tlsproxy.accesslog import LineFile
from tlsproxy.config import Config, build_config
from tlsproxy.configerror import ConfigError
from tlsproxy.listenoptions import Listener
from tlsproxy.metrics import snapshot
from tlsproxy.service import ProxyService
from tlsproxy.tap import Options
from tlsproxy.workers.channel import (
    CONTROL_FD,
    ENVIRONMENT,
    MESSAGES_FD,
    Expiry,
    Inheritance,
    Logged,
    Measured,
    Message,
    Reloaded,
    Started,
    encode,
)

#: Seconds between two reports of the counters (the supervisor's scrape sums the latest ones).
REPORT_INTERVAL = 1.0


class MessageWriter:
    """Writes messages to the supervisor's pipe, whole, in order; blocking, like a log file.

    A supervisor that is gone makes every later send a no-op: the control pipe's end stops
    the worker (rule 3).
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.broken = False

    def send(self, message: Message) -> None:
        data = encode(message)
        while data and not self.broken:
            try:
                data = data[os.write(self._fd, data) :]
            except InterruptedError:
                continue
            except OSError:
                self.broken = True


@implementer(ILogObserver)
class LogForwarder:
    """Every log event of the worker, as a :class:`Logged` message (tracebacks included)."""

    def __init__(self, writer: MessageWriter) -> None:
        self._writer = writer

    def __call__(self, event: LogEvent) -> None:
        text = eventAsText(event, includeTimestamp=False, includeSystem=False)
        level = event.get("log_level")
        self._writer.send(
            Logged(
                level=getattr(level, "name", "info"),
                namespace=str(event.get("log_namespace", "-")),
                text=text,
            )
        )


def worker_config(config: Config, inherited: Inheritance) -> Config:
    """The supervisor's configuration, as one of its workers serves it (rule 1)."""
    return dataclasses.replace(
        config,
        listeners=tuple(Listener(f"inherited socket {fd}", fd=fd) for fd in inherited.listeners),
        redirect_listeners=tuple(
            Listener(f"inherited socket {fd}", fd=fd) for fd in inherited.redirect_listeners
        ),
        workers=1,
        metrics_listen=None,
        watch_certs=False,
        notify_socket=None,
        watchdog_usec=None,
    )


def adopt_access_log(values: dict[str, Any], inherited: Inheritance) -> LineFile | None:
    """The ``--access-log`` file the supervisor opened, if any; ``values`` (the options) then
    name no file, which this user might not be allowed to open."""
    if inherited.access_log is None:
        return None
    # "-" keeps --access-log-format valid; the lines go to the inherited file, not to stdout.
    values["access_log"] = "-"
    return LineFile(inherited.access_log)


class WorkerService(ProxyService):
    """The proxy, reporting to its supervisor (rule 2)."""

    def __init__(
        self,
        config: Config,
        *,
        reactor: Any,
        messages: MessageWriter,
        log_stream: LineFile | None = None,
    ) -> None:
        super().__init__(config, reactor=reactor, log_stream=log_stream)
        self._messages = messages
        self._report = LoopingCall(self.report)
        self._report.clock = reactor

    def startService(self) -> None:
        super().startService()
        self._messages.send(Started())
        self._report.start(REPORT_INTERVAL, now=False)

    def stopService(self) -> defer.Deferred[None]:
        # systemd (KillMode=control-group) sends SIGTERM to every process, and the supervisor
        # forwards its own: the second must not stop a reactor that is stopping already.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self._report.running:
            self._report.stop()
        return super().stopService().addCallback(lambda _: self.report())

    def report(self) -> None:
        """Send the counters and the certificates new handshakes get."""
        certificates = tuple(
            Expiry(tuple(c.names), c.not_after, c.fingerprint_sha256)
            for c in self.certificates.certificates
        )
        self._messages.send(Measured(snapshot(self.metrics), certificates))

    def _banner(self) -> list[str]:
        return []  # the supervisor printed it, once for every worker

    def _on_reload_end(self, ok: bool) -> None:
        super()._on_reload_end(ok)
        self._messages.send(Reloaded(ok))


class ControlPipe(abstract.FileDescriptor):
    """The read end of the supervisor's control pipe: its end calls ``gone`` (rule 3)."""

    def __init__(self, reactor: Any, fd: int, gone: Callable[[], None]) -> None:
        super().__init__(reactor)
        self._fd = fd
        self._gone = gone
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> Failure | None:
        try:
            data = os.read(self._fd, 4096)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EINTR):
                return None
            data = b""
        return Failure(CONNECTION_DONE) if not data else None

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        self._gone()


def main(argv: list[str], environ: Mapping[str, str]) -> int:
    """Run one worker until it has drained; the exit status."""
    # Until the reload handler is in place, a SIGHUP must not kill a starting worker.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # rule 3; Twisted keeps a handler it finds
    try:
        inherited = Inheritance.decode(environ[ENVIRONMENT])
    except (KeyError, ValueError):
        print(
            "tlsproxy: error: python -m tlsproxy.workers is started by twistd tlsproxy "
            "--workers N, not by hand",
            file=sys.stderr,
        )
        return 2
    messages = MessageWriter(MESSAGES_FD)
    globalLogBeginner.beginLoggingTo([LogForwarder(messages)], redirectStandardIO=False)
    options = Options()
    options.parseOptions(argv)  # the supervisor parsed the same: this cannot fail
    values = options.config_values()
    log_stream = adopt_access_log(values, inherited)
    try:
        config = build_config(
            values, now=datetime.now(UTC), environ=environ, write_dev_certificates=False
        )
    except ConfigError as e:  # the files changed since the supervisor read them
        print(f"tlsproxy: error: {e}", file=sys.stderr)
        return 2
    from twisted.internet import reactor  # noqa: PLC0415 (the default reactor, installed here)

    service = WorkerService(
        worker_config(config, inherited), reactor=reactor, messages=messages, log_stream=log_stream
    )
    service.privilegedStartService()
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    ControlPipe(reactor, CONTROL_FD, gone=lambda: _stop(reactor)).startReading()  # type: ignore[no-untyped-call]
    reactor.run()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # Twisted put the default back: stay ours
    return 0


def _stop(reactor: Any) -> None:
    if reactor.running:
        reactor.stop()

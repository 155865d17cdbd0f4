"""Assembles the running proxy from a :class:`Config`: pool, fronts, TLS, listeners, access log,
metrics."""

from __future__ import annotations

import ssl
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from tlsproxy.accesslog import AccessLog, JsonAccessLog, LineFile
from tlsproxy.backend import BackendAddress
from tlsproxy.backendpool import BackendPool
from tlsproxy.config import Config
from tlsproxy.deadline import DeadlineSweeper
from tlsproxy.frameworks import hint_lines
from tlsproxy.http.h1 import FrontSettings, H1Connection
from tlsproxy.http.h2 import H2Connection
from tlsproxy.http.redirect import RedirectFactory
from tlsproxy.lifecycle import (
    CertificateWatcher,
    Drain,
    ReloadFailed,
    ReloadSignal,
    attempt_reload,
    exit_cleanly,
)
from tlsproxy.listen import (
    FrontConnection,
    FrontFactory,
    ListenError,
    Takeover,
    TcpFrontBuilder,
    TcpFrontFactory,
    browse_url,
    listen_all,
    listen_metrics,
    memory_tls_factory,
    url_of,
)
from tlsproxy.metrics import Metrics, MetricsFactory, render
from tlsproxy.names import NameTable
from tlsproxy.proxyheader import with_proxy_header
from tlsproxy.routing import Router
from tlsproxy.systemd import SystemdNotifier
from tlsproxy.tcpmode import TcpFront, TcpSettings
from tlsproxy.tls.certset import CertificateSet
from tlsproxy.tls.devca import trust_instructions
from tlsproxy.tls.memorytls import MemoryTLSFactory
from tlsproxy.tls.policy import (
    HTTP1_ALPN,
    HTTP2_ALPN,
    server_ssl_context,
)
from tlsproxy.tls.sni import sni_context

log = Logger()


class ProxyService(Service):
    """Listens for TLS clients and proxies them to the backend while running."""

    def __init__(self, config: Config, *, reactor: Any, log_stream: LineFile | None = None) -> None:
        """``log_stream``: the access log, opened already (a ``--workers`` worker inherits it)."""
        self.config = config
        self._reactor = reactor
        self.router = _router(config, reactor)
        # Whole lines per write: with --workers, processes append to the same file or stdout.
        self._log_stream = log_stream
        if log_stream is None and config.access_log is not None:
            self._log_stream = LineFile.open(config.access_log)  # "-": standard output
        log_class = JsonAccessLog if config.access_log_format == "json" else AccessLog
        self.access_log = log_class(self._log_stream) if self._log_stream else None
        # Request durations use the reactor's clock: one time.time() call at a request's head and
        # one at its end (~0.1 µs together); the sweeper's clock is 0.25 s coarse, too coarse for
        # the histogram's millisecond buckets.
        self.metrics = Metrics(seconds=reactor.seconds)
        self.metrics_port: Any = None
        self._flush_log = LoopingCall(self._flush_access_log)
        self._flush_log.clock = reactor
        limits = config.limits
        settings = FrontSettings(
            router=self.router,
            sweeper=DeadlineSweeper(clock=reactor),
            trusted_proxies=config.trusted_proxies,
            header_timeout=limits.header_timeout,
            idle_timeout=limits.idle_timeout,
            backend_timeout=limits.backend_timeout,
            max_header_bytes=limits.max_header_bytes,
            access_log=self.access_log,
            tunnel_idle_timeout=config.tunnel_idle_timeout,
            hsts=b"max-age=%d" % config.hsts_seconds if config.hsts_seconds else b"",
            metrics=self.metrics,
            client_certificates=config.client_ca is not None,
        )
        # ALPN offers h2 only when a protocol is there to take the connection over.
        takeovers: dict[bytes, Takeover] = {}
        if config.http2 and config.mode == "http":
            takeovers[b"h2"] = partial(H2Connection, settings)
        # --mode tcp offers http/1.1 only, never h2 (docs/tcp-mode.md): ALPN must be set anyway.
        self.alpn = HTTP2_ALPN if takeovers else HTTP1_ALPN
        self.front: FrontFactory
        if config.mode == "tcp":
            self.front = TcpFrontFactory(
                settings, max_connections=limits.max_connections, build=self._tcp_front(settings)
            )
        else:
            self.front = FrontFactory(
                settings, max_connections=limits.max_connections, takeovers=takeovers
            )
        self.ports: list[Any] = []
        self.redirect_ports: list[Any] = []
        self.certificates = config.certificates  # what new handshakes use; replaced by reloads
        self._tls: MemoryTLSFactory | None = None
        self._reload_signal = ReloadSignal(reactor=reactor, reload=self.reload_certificates)
        source = config.certificate_source
        self._watcher = (
            CertificateWatcher(clock=reactor, paths=source.files, reload=self.reload_certificates)
            if config.watch_certs and source is not None
            else None
        )
        self.notifier = SystemdNotifier(
            notify_socket=config.notify_socket,
            watchdog_usec=config.watchdog_usec,
            clock=reactor,
            status=self._status,
        )

    def _tcp_front(self, settings: FrontSettings) -> TcpFrontBuilder:
        """How ``--mode tcp`` builds its fronts: the same sweeper, its own backend dialling."""
        config = self.config
        routes: NameTable[BackendAddress] = NameTable()
        for route in config.routes:
            routes.add(route.host, route.backend)
        tcp = TcpSettings(
            reactor=self._reactor,
            backend=config.backend,
            sweeper=settings.sweeper,
            handshake_timeout=config.limits.header_timeout,
            connect_timeout=config.limits.connect_timeout,
            idle_timeout=config.limits.idle_timeout,
            tunnel_idle_timeout=config.tunnel_idle_timeout,
            send_proxy_protocol=config.send_proxy_protocol,
            routes=routes,
        )
        return partial(TcpFront, tcp)

    def privilegedStartService(self) -> None:
        # Bind before twistd drops privileges, so --port 443 works when started as root.
        tls = self._tls = self._tls_factory()
        accept: IProtocolFactory = tls
        if self.config.proxy_protocol:
            accept = with_proxy_header(
                tls,
                trusted=self.config.trusted_proxies,
                clock=self._reactor,
                timeout=self.config.limits.header_timeout,
            )
        try:
            self.ports = listen_all(self._reactor, self.config.listeners, accept)
            if self.config.redirect_listeners:
                redirect = RedirectFactory(
                    https_port=self._https_port,
                    clock=self._reactor,
                    timeout=self.config.limits.header_timeout,
                )
                self.redirect_ports = listen_all(
                    self._reactor, self.config.redirect_listeners, redirect
                )
            if self.config.metrics_listen is not None:
                self.metrics_port = self._listen_metrics(self.config.metrics_listen)
        except ListenError as e:
            # twistd has already redirected sys.stderr into its log; say it plainly.
            print(f"tlsproxy: error: {e}", file=sys.__stderr__)
            raise SystemExit(2) from None
        self.front.ports = self.ports
        super().privilegedStartService()  # type: ignore[no-untyped-call]

    def _listen_metrics(self, description: str) -> Any:
        """Open ``--metrics-listen``: plain HTTP, apart from the proxy; raise ListenError."""
        factory = MetricsFactory(self.render_metrics, clock=self._reactor)
        return listen_metrics(self._reactor, description, factory)

    def render_metrics(self) -> str:
        """The page a scrape gets: the counters, and the certificate new handshakes use now."""
        return render(self.metrics, self._reactor.seconds(), self.certificates.certificates)

    def _tls_factory(self) -> MemoryTLSFactory:
        """The front's TLS layer (CPython's ``ssl``: :mod:`tlsproxy.tls.memorytls`)."""
        return memory_tls_factory(self._server_tls(self.certificates), self.front)

    def _server_tls(self, certificates: CertificateSet) -> ssl.SSLContext:
        """Handshake state for ``certificates``, built completely now (a bad pair fails here)."""
        config = self.config
        build = partial(
            server_ssl_context,
            alpn=self.alpn,
            client_ca=config.client_ca,
            client_auth=config.client_auth,
        )
        return sni_context(certificates, build)

    def reload_certificates(self) -> bool:
        """SIGHUP: load every certificate file again; new handshakes get them only if all loaded.

        Open connections keep the certificate they handshook with. True if the new one serves.
        """
        self._on_reload_start()
        ok = False
        try:
            ok = self._reload()
        finally:  # systemd hears READY=1 again even if the reload hit a bug
            self._on_reload_end(ok=ok)
        return ok

    def _reload(self) -> bool:
        outcome = attempt_reload(self._load_certificate)
        if isinstance(outcome, ReloadFailed):
            log.error(
                "reload failed, still serving the previous certificate: {reason}",
                reason=outcome.reason,
            )
            return False
        certificates, server_tls = outcome.state
        self._swap(server_tls)
        self.certificates = certificates
        self.router.use_certificates(certificates)
        for certificate in certificates.certificates:
            log.info(
                "reloaded certificates: {names}, expires {expires}, sha256 {fingerprint}",
                names=", ".join(certificate.names) or "(no subjectAltName)",
                expires=f"{certificate.not_after:%Y-%m-%d}",
                fingerprint=certificate.fingerprint_sha256,
            )
        for warning in certificates.all_warnings:
            log.warn("warning: {warning}", warning=warning)
        return True

    def _load_certificate(self) -> tuple[CertificateSet, ssl.SSLContext]:
        """The startup loading again (:meth:`CertificateSource.load`), then its TLS state."""
        source = self.config.certificate_source
        if source is None:
            raise ValueError("this configuration names no certificate files to reload")
        now = datetime.fromtimestamp(self._reactor.seconds(), UTC)
        certificates, _ = source.load(now=now)  # development certificates are renewed here too
        return certificates, self._server_tls(certificates)

    def _swap(self, server_tls: ssl.SSLContext) -> None:
        """One reference replaced: handshakes from now on use ``server_tls``."""
        if self._tls is not None:  # not listening yet: _tls_factory will use self.certificates
            self._tls.context = server_tls

    def _on_reload_start(self) -> None:
        """Hook: a reload begins (systemd: RELOADING=1)."""
        self.notifier.reloading()

    def _on_reload_end(self, ok: bool) -> None:
        """Hook: a reload ended, ``ok`` if the new certificate serves (systemd: READY=1)."""
        self.notifier.ready()  # after a failed reload too: the previous certificate serves

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        if self.access_log is not None:
            self._flush_log.start(1.0, now=False)
        for line in self._banner():
            log.info("{line}", line=line)
        self._reload_signal.install()  # twistd leaves SIGHUP deadly; here it reloads
        if self._watcher is not None:
            self._watcher.start()
        self.notifier.ready()  # systemd: READY=1, after every listener is open

    def stopService(self) -> defer.Deferred[None]:
        self.notifier.stopping()  # systemd: STOPPING=1, before anything closes
        super().stopService()  # type: ignore[no-untyped-call]
        if self._watcher is not None:
            self._watcher.stop()
        stopped = [
            defer.maybeDeferred(port.stopListening) for port in self.ports + self.redirect_ports
        ]
        if self.metrics_port is not None:
            stopped.append(defer.maybeDeferred(self.metrics_port.stopListening))
        self.front.ports = []  # closed: the connection limit must not resume reading them
        drain = Drain(
            clock=self._reactor,
            connections=self.front.connections,
            end_gracefully=_end_gracefully,
            abort=_abort,
            timeout=self.config.drain_timeout,
        )
        drained = drain.start().addCallback(self._drained)
        return defer.gatherResults([*stopped, drained]).addCallback(lambda _: None)

    def _drained(self, _: None) -> None:
        """Every connection has ended (or was cut off at --drain-timeout): release the rest."""
        self._reload_signal.uninstall()
        for pool in self.router.pools():
            pool.close_idle()
        if self._flush_log.running:
            self._flush_log.stop()
        self._flush_access_log()
        if self._log_stream is not None:
            self._log_stream.close()  # stdout stays open
        exit_cleanly(self._reactor)

    def _flush_access_log(self) -> None:
        if self.access_log is not None:
            self.access_log.flush()

    def _status(self) -> str:
        """The one line ``systemctl status`` shows: where we serve, and how busy we are."""
        where = ", ".join(url_of(port) for port in self.ports) or "nothing"
        return f"serving {where}; {len(self.front.connections)} connections"

    def _https_port(self) -> int:
        return https_port(self.ports)

    def _banner(self) -> list[str]:
        return self.banner(
            self.config,
            ports=self.ports,
            redirect_ports=self.redirect_ports,
            metrics_port=self.metrics_port,
        )

    @staticmethod
    def banner(
        config: Config, *, ports: Sequence[Any], redirect_ports: Sequence[Any], metrics_port: Any
    ) -> list[str]:
        """What startup prints (once, by the supervisor, with ``--workers``)."""
        lines = [f"listening on {url_of(port)}" for port in ports]
        lines += [
            f"redirecting {url_of(port).replace('https://', 'http://')} to https"
            for port in redirect_ports
        ]
        url = browse_url(ports)
        if url is not None:
            lines.append(f"open {url}")
        if metrics_port is not None:
            where = url_of(metrics_port)  # https://host:port/ or unix:PATH
            if where.startswith("https://"):
                where = where.replace("https://", "http://", 1) + "metrics"
            lines.append(f"metrics on {where}")
        lines.append(f"forwarding to the backend {config.backend.url}")
        lines += [f"route: {route.host} → {route.backend.url}" for route in config.routes]
        tls = config.backend.tls
        if tls is not None and not tls.verify:
            lines.append(
                f"warning: --insecure-backend: the certificate of {config.backend.url} is not "
                "verified, so anyone on the path to it can read and change the traffic; give "
                "its CA with --backend-ca instead"
            )
        if config.mode == "http":  # raw TCP mode has no headers to tell the app anything
            lines.append("tell the app it is behind HTTPS (docs/frameworks.md):")
            lines += [f"  {hint}" for hint in hint_lines(https_port(ports))]
        lines += config.certificates.describe()
        lines += [f"warning: {w}" for w in config.certificates.all_warnings]
        dev = config.dev_certificates
        if dev is not None:
            lines += list(dev.messages)
            lines += trust_instructions(dev.ca_cert_path, url=url or "https://localhost:PORT/")
        return lines


def _router(config: Config, reactor: Any) -> Router:
    """A backend pool for ``--backend`` and one for each other backend ``--route`` names."""
    pools: dict[str, BackendPool] = {}

    def pool(backend: BackendAddress) -> BackendPool:
        if backend.url not in pools:
            pools[backend.url] = BackendPool(
                reactor=reactor,
                clock=reactor,
                address=backend,
                connect_timeout=config.limits.connect_timeout,
            )
        return pools[backend.url]

    default = pool(config.backend)
    routes = [(route.host, pool(route.backend)) for route in config.routes]
    return Router(default, routes, config.certificates)


def https_port(ports: Sequence[Any]) -> int:
    """The port of the first TCP listener: where redirects and hints send clients."""
    for port in ports:
        number = getattr(port.getHost(), "port", None)
        if number is not None:
            return int(number)
    return 443


def _end_gracefully(connection: FrontConnection) -> None:
    """Shutdown, politely: HTTP/1.1 closes after its exchange, HTTP/2 sends GOAWAY.

    A raw TCP connection closes at once unless it is relaying (then --drain-timeout ends it).
    """
    if isinstance(connection, H1Connection | TcpFront):
        connection.drain()
    else:
        connection.close()


def _abort(connection: FrontConnection) -> None:
    """Shutdown deadline: reset TCP under TLS, so that a cut-off response looks truncated."""
    transport: Any = connection.transport
    if transport is not None:
        getattr(transport, "transport", transport).abortConnection()


def build_service(config: Config, *, reactor: Any) -> ProxyService:
    return ProxyService(config, reactor=reactor)

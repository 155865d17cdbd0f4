"""Assembles the running proxy from a :class:`Config`: pool, fronts, TLS, listeners, access log."""

from __future__ import annotations

import sys
from functools import partial
from typing import Any, TextIO

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from tlsproxy.accesslog import AccessLog
from tlsproxy.backend import BackendPool
from tlsproxy.config import Config
from tlsproxy.deadline import DeadlineSweeper
from tlsproxy.frameworks import hint_lines
from tlsproxy.http.h1 import FrontSettings
from tlsproxy.http.h2 import H2Connection
from tlsproxy.http.redirect import RedirectFactory
from tlsproxy.listen import (
    FrontFactory,
    ListenError,
    Takeover,
    browse_url,
    listen_all,
    memory_tls_factory,
    tls_factory,
    url_of,
)
from tlsproxy.tls.devca import trust_instructions
from tlsproxy.tls.policy import (
    HTTP1_ALPN,
    HTTP2_ALPN,
    TLS_ENGINE,
    server_connection_creator,
    server_ssl_context,
)

log = Logger()


class ProxyService(Service):
    """Listens for TLS clients and proxies them to the backend while running."""

    def __init__(self, config: Config, *, reactor: Any) -> None:
        self.config = config
        self._reactor = reactor
        self.pool = BackendPool(
            reactor=reactor,
            clock=reactor,
            address=config.backend,
            connect_timeout=config.limits.connect_timeout,
        )
        self._log_stream: TextIO | None = None
        if config.access_log == "-":
            self._log_stream = sys.stdout
        elif config.access_log is not None:
            self._log_stream = open(config.access_log, "a", encoding="utf-8")  # noqa: SIM115
        self.access_log = AccessLog(self._log_stream) if self._log_stream else None
        self._flush_log = LoopingCall(self._flush_access_log)
        self._flush_log.clock = reactor
        limits = config.limits
        settings = FrontSettings(
            pool=self.pool,
            sweeper=DeadlineSweeper(clock=reactor),
            trusted_proxies=config.trusted_proxies,
            header_timeout=limits.header_timeout,
            idle_timeout=limits.idle_timeout,
            backend_timeout=limits.backend_timeout,
            max_header_bytes=limits.max_header_bytes,
            access_log=self.access_log,
            tunnel_idle_timeout=config.tunnel_idle_timeout,
            hsts=b"max-age=%d" % config.hsts_seconds if config.hsts_seconds else b"",
        )
        # ALPN offers h2 only when a protocol is there to take the connection over.
        takeovers: dict[bytes, Takeover] = {}
        if config.http2:
            takeovers[b"h2"] = partial(H2Connection, settings)
        self.alpn = HTTP2_ALPN if takeovers else HTTP1_ALPN
        self.front = FrontFactory(
            settings, max_connections=limits.max_connections, takeovers=takeovers
        )
        self.ports: list[Any] = []
        self.redirect_ports: list[Any] = []

    def privilegedStartService(self) -> None:
        # Bind before twistd drops privileges, so --port 443 works when started as root.
        tls = self._tls_factory()
        try:
            self.ports = listen_all(self._reactor, self.config.listeners, tls)
            if self.config.redirect_listeners:
                redirect = RedirectFactory(
                    https_port=self._https_port,
                    clock=self._reactor,
                    timeout=self.config.limits.header_timeout,
                )
                self.redirect_ports = listen_all(
                    self._reactor, self.config.redirect_listeners, redirect
                )
        except ListenError as e:
            # twistd has already redirected sys.stderr into its log; say it plainly.
            print(f"tlsproxy: error: {e}", file=sys.__stderr__)
            raise SystemExit(2) from None
        self.front.ports = self.ports
        super().privilegedStartService()  # type: ignore[no-untyped-call]

    def _tls_factory(self) -> IProtocolFactory:
        """The front's TLS layer, by the engine policy.TLS_ENGINE names."""
        certificate = self.config.certificate
        if TLS_ENGINE == "stdlib":
            return memory_tls_factory(server_ssl_context(certificate, alpn=self.alpn), self.front)
        if TLS_ENGINE == "pyopenssl":
            return tls_factory(server_connection_creator(certificate, alpn=self.alpn), self.front)
        raise ValueError(f"unknown TLS_ENGINE {TLS_ENGINE!r}: 'pyopenssl' or 'stdlib'")

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        if self.access_log is not None:
            self._flush_log.start(1.0, now=False)
        for line in self._banner():
            log.info("{line}", line=line)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        self.pool.close_idle()
        stopped = [
            defer.maybeDeferred(port.stopListening) for port in self.ports + self.redirect_ports
        ]
        for connection in list(self.front.connections):
            connection.close()
        if self._flush_log.running:
            self._flush_log.stop()
        self._flush_access_log()
        if self._log_stream is not None and self._log_stream is not sys.stdout:
            self._log_stream.close()
        return defer.gatherResults(stopped).addCallback(lambda _: None)

    def _flush_access_log(self) -> None:
        if self.access_log is not None:
            self.access_log.flush()

    def _https_port(self) -> int:
        for port in self.ports:
            number = getattr(port.getHost(), "port", None)
            if number is not None:
                return int(number)
        return 443

    def _banner(self) -> list[str]:
        config = self.config
        lines = [f"listening on {url_of(port)}" for port in self.ports]
        lines += [
            f"redirecting {url_of(port).replace('https://', 'http://')} to https"
            for port in self.redirect_ports
        ]
        url = browse_url(self.ports)
        if url is not None:
            lines.append(f"open {url}")
        lines.append(f"forwarding to the backend {config.backend.url}")
        lines.append("tell the app it is behind HTTPS (docs/frameworks.md):")
        lines += [f"  {hint}" for hint in hint_lines(self._https_port())]
        lines += config.certificate.describe()
        lines += [f"warning: {w}" for w in config.certificate.warnings]
        dev = config.dev_certificates
        if dev is not None:
            lines += list(dev.messages)
            lines += trust_instructions(dev.ca_cert_path, url=url or "https://localhost:PORT/")
        return lines


def build_service(config: Config, *, reactor: Any) -> ProxyService:
    return ProxyService(config, reactor=reactor)

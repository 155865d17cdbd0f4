"""The frozen, fully validated configuration: every user error is found here, once, with the fix.

Nothing after this module reads options, files named by options, or the environment: the
certificate is loaded (or the development one made) here too, so a bad file stops startup
before anything listens.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from tlsproxy import listenoptions as listen_options
from tlsproxy.backend import BackendAddress
from tlsproxy.backendoptions import backend_tls, parse_backend, parse_tcp_backend, read_ca_pem
from tlsproxy.configerror import ConfigError
from tlsproxy.http.headers import IPNetwork
from tlsproxy.listenoptions import Listener
from tlsproxy.names import HOSTNAME, normalise
from tlsproxy.tls.certset import CertificateSet
from tlsproxy.tls.certsource import CertificatePair, CertificateSource
from tlsproxy.tls.devca import DevCertificates
from tlsproxy.tls.pemfile import CertificateError
from tlsproxy.tls.policy import CLIENT_AUTH_MODES


@dataclass(frozen=True)
class Limits:
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    backend_timeout: float = 60.0
    connect_timeout: float = 5.0
    max_header_bytes: int = 64 * 1024
    max_connections: int = 10_000


@dataclass(frozen=True)
class Config:
    backend: BackendAddress
    listeners: tuple[Listener, ...]
    certificates: CertificateSet  # the default first; chosen per handshake by SNI name
    dev_certificates: DevCertificates | None
    limits: Limits
    access_log: str | None
    trusted_proxies: tuple[IPNetwork, ...]
    http2: bool = True
    tunnel_idle_timeout: float | None = None  # upgraded (websocket) connections; None: no limit
    redirect_listeners: tuple[Listener, ...] = ()  # --redirect-http: plain HTTP, 308 to https
    hsts_seconds: int | None = None  # --hsts: Strict-Transport-Security max-age
    # Reloaded on SIGHUP; None (tests that build a Config by hand): reload keeps what is loaded.
    certificate_source: CertificateSource | None = None
    drain_timeout: float = 30.0  # --drain-timeout: SIGTERM waits this long for exchanges to end
    watch_certs: bool = False  # --watch-certs: reload when the certificate files change
    notify_socket: str | None = None  # $NOTIFY_SOCKET: where systemd reads sd_notify datagrams
    watchdog_usec: int | None = None  # $WATCHDOG_USEC, when $WATCHDOG_PID is absent or ours
    metrics_listen: str | None = None  # --metrics-listen: plain-HTTP endpoint for /metrics
    access_log_format: str = "combined"  # --access-log-format: "combined" or "json"
    proxy_protocol: bool = False  # --proxy-protocol: a PROXY header first, from trusted_proxies
    mode: str = "http"  # --mode: "http" proxies requests, "tcp" relays bytes (docs/tcp-mode.md)
    send_proxy_protocol: str | None = None  # --send-proxy-protocol v1|v2 to the backend (tcp mode)
    client_ca: bytes | None = None  # --client-ca: PEM CAs client certificates must chain to
    client_auth: str = "required"  # --client-auth: "required" or "optional" (with --client-ca)
    workers: int = 1  # --workers: processes sharing the listeners (docs/workers.md)
    routes: tuple[Route, ...] = ()  # --route HOST=BACKEND, in the order given


def _mode(options: Mapping[str, Any]) -> tuple[str, str | None]:
    """``--mode`` and ``--send-proxy-protocol``, checked against each other and the HTTP flags."""
    mode = options.get("mode") or "http"
    if mode not in ("http", "tcp"):
        raise ConfigError(f"--mode {mode!r} is not a mode; use --mode http or --mode tcp")
    send = options.get("send_proxy_protocol")
    if send is not None:
        send = send.lower()
        if send not in ("v1", "v2"):
            raise ConfigError(f"--send-proxy-protocol {send!r}: use v1 or v2")
        if mode != "tcp":
            raise ConfigError(
                "--send-proxy-protocol works with --mode tcp only (in http mode the backend "
                "learns the client from X-Forwarded-For); add --mode tcp or remove it"
            )
    if mode == "tcp":
        http_only = [
            flag
            for flag, name in (
                ("--hsts", "hsts"),
                ("--redirect-http", "redirect_http"),
                ("--access-log", "access_log"),
                ("--no-http2", "no_http2"),
            )
            if options.get(name)
        ]
        if http_only:
            raise ConfigError(
                f"{http_only[0]} is about HTTP, and --mode tcp relays bytes without reading "
                f"them; remove {http_only[0]} (or use --mode http)"
            )
    return mode, send


MAX_WORKERS = 64


def _workers(options: Mapping[str, Any]) -> int:
    """``--workers``: how many processes serve (1: this one, as without the option)."""
    raw = options.get("workers") or "1"
    try:
        workers = int(raw)
    except (TypeError, ValueError):
        raise ConfigError(
            f"--workers {raw!r} is not a whole number; e.g. --workers 2 (one per CPU core)"
        ) from None
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(
            f"--workers {workers} is out of range; use 1-{MAX_WORKERS} (one per CPU core)"
        )
    return workers


def _access_log_format(options: Mapping[str, Any]) -> str:
    """``--access-log-format``: combined (the default) or json, and only with ``--access-log``."""
    given: str | None = options.get("access_log_format")
    if given is None:
        return "combined"
    if given not in ("combined", "json"):
        raise ConfigError(f"--access-log-format {given!r} is not a format; use combined or json")
    if options.get("access_log") is None:
        raise ConfigError(
            "--access-log-format needs --access-log: say where the log goes, "
            "e.g. --access-log - for stdout"
        )
    return given


def _client_auth(options: Mapping[str, Any]) -> tuple[bytes | None, str]:
    """``--client-ca`` (its certificates, as clean PEM) and ``--client-auth``; see docs/mtls.md."""
    ca, auth = options.get("client_ca"), options.get("client_auth")
    if auth is not None:
        auth = auth.lower()
        if auth not in CLIENT_AUTH_MODES:
            raise ConfigError(f"--client-auth {auth!r}: use required or optional")
        if ca is None:
            raise ConfigError(
                f"--client-auth {auth} needs --client-ca: the PEM CA certificate(s) that "
                "client certificates must be signed by"
            )
    if ca is None:
        return None, "required"
    pem = read_ca_pem("--client-ca", Path(ca), what="signs your client certificates")
    return pem, auth or "required"


def _positive(options: Mapping[str, Any], name: str, *, integer: bool = False) -> Any:
    raw = options[name.replace("-", "_")]
    try:
        value = int(raw) if integer else float(raw)
    except (TypeError, ValueError):
        kind = "a whole number" if integer else "a number of seconds"
        raise ConfigError(f"--{name} {raw!r} is not {kind}") from None
    if value <= 0 or (not integer and not math.isfinite(value)):
        raise ConfigError(f"--{name} must be greater than 0 (got {raw})")
    return value


def _hostnames(values: Sequence[str]) -> tuple[str, ...]:
    names = []
    for value in values:
        try:
            names.append(str(ipaddress.ip_address(value)))
        except ValueError:
            if not HOSTNAME.match(value):
                raise ConfigError(
                    f"--hostname {value!r} is neither a DNS name nor an IP address"
                ) from None
            names.append(value.lower().rstrip("."))
    return tuple(dict.fromkeys(names))


def _trusted(values: Sequence[str]) -> tuple[IPNetwork, ...]:
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ConfigError(
                f"--trusted-proxy {value!r} is not an address or CIDR range, "
                "e.g. --trusted-proxy 10.0.0.0/8"
            ) from None
    return tuple(networks)


@dataclass(frozen=True)
class Route:
    """``--route HOST=BACKEND``: requests for HOST (a name or ``*.`` wildcard) go to BACKEND."""

    host: str
    backend: BackendAddress


def _routes(options: Mapping[str, Any], mode: str) -> tuple[Route, ...]:
    routes: list[Route] = []
    for value in options.get("route", ()):
        host, equals, url = value.partition("=")
        example = "e.g. --route app.example.com=http://127.0.0.1:8001"
        if not equals or not url:
            raise ConfigError(f"--route {value!r} is not HOST=BACKEND; {example}")
        if not HOSTNAME.match(host):
            hint = " (without a port: a route matches any port)" if ":" in host else ""
            raise ConfigError(f"--route {value!r}: {host!r} is not a host name{hint}; {example}")
        if any(normalise(r.host) == normalise(host) for r in routes):
            raise ConfigError(f"--route {value!r}: {host} is routed twice; keep one --route")
        try:
            backend = parse_tcp_backend(url) if mode == "tcp" else parse_backend(url)
            if backend.tls is not None:
                backend = backend_tls(backend, {**options, "backend_server_name": None})
        except ConfigError as e:
            raise ConfigError(str(e).replace(f"--backend {url!r}", f"--route {value!r}")) from None
        routes.append(Route(normalise(host), backend))
    return tuple(routes)


def _certificate_source(options: Mapping[str, Any]) -> CertificateSource:
    passphrase_file = options["key_passphrase_file"]
    strict_sni = bool(options.get("strict_sni"))
    default_name = options.get("sni_default")
    if default_name is not None and not HOSTNAME.match(default_name):
        raise ConfigError(f"--sni-default {default_name!r} is not a host name, e.g. example.com")
    return CertificateSource(
        pairs=_certificate_pairs(options.get("cert_files", ())),
        passphrase_file=Path(passphrase_file) if passphrase_file is not None else None,
        certs_dir=Path(options["certs_dir"]),
        hostnames=_hostnames(options["hostname"]),
        default_name=default_name,
        strict_sni=strict_sni,
    )


def _certificate_pairs(given: Sequence[tuple[str, str]]) -> tuple[CertificatePair, ...]:
    """``--cert``/``--key`` in command-line order: each --key is for the --cert before it.

    With one --cert, the order does not matter (``--key k.pem --cert c.pem`` works too).
    """
    certs = [path for flag, path in given if flag == "cert"]
    keys = [path for flag, path in given if flag == "key"]
    if keys and not certs:
        raise ConfigError("--key needs --cert too (or give neither for a development certificate)")
    if len(certs) == 1:
        if len(keys) > 1:
            raise ConfigError("--key is given twice for one --cert; give one key per certificate")
        return (CertificatePair(Path(certs[0]), Path(keys[0]) if keys else None),)
    pairs: list[tuple[str, str | None]] = []
    for flag, path in given:
        if flag == "cert":
            pairs.append((path, None))
        elif not pairs:
            raise ConfigError(
                f"--key {path} comes before any --cert; with several certificates, give each "
                "--key right after its --cert"
            )
        elif pairs[-1][1] is not None:
            raise ConfigError(
                f"--cert {pairs[-1][0]} has two keys ({pairs[-1][1]}, {path}); give each "
                "--key right after its --cert"
            )
        else:
            pairs[-1] = (pairs[-1][0], path)
    return tuple(CertificatePair(Path(c), Path(k) if k else None) for c, k in pairs)


def _check_log_file(path: Path) -> None:
    if path.is_dir():
        raise ConfigError(f"--access-log {path} is a directory; name a file in it")
    if not path.parent.is_dir():
        raise ConfigError(f"--access-log {path}: the directory {path.parent} does not exist")
    writable = os.access(path, os.W_OK) if path.exists() else os.access(path.parent, os.W_OK)
    if not writable:
        raise ConfigError(f"--access-log {path}: not writable by this user")


def systemd_environment(environ: Mapping[str, str], *, pid: int) -> tuple[str | None, int | None]:
    """``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` as systemd sets them: (socket, microseconds).

    The watchdog belongs to process ``WATCHDOG_PID`` when that is set (a wrapper that forked
    us may have passed it on); pinging for another process would only confuse systemd.
    """
    notify_socket = environ.get("NOTIFY_SOCKET") or None
    if notify_socket is not None and not notify_socket.startswith(("/", "@")):
        raise ConfigError(
            f"NOTIFY_SOCKET={notify_socket!r} is not a socket tlsproxy can notify "
            "(a /path or an @abstract name); unset it, or let systemd set it (Type=notify)"
        )
    raw = environ.get("WATCHDOG_USEC")
    if not raw or notify_socket is None:
        return notify_socket, None
    watchdog_pid = environ.get("WATCHDOG_PID")
    if watchdog_pid and watchdog_pid != str(pid):
        return notify_socket, None
    try:
        usec = int(raw)
    except ValueError:
        usec = 0
    if usec <= 0:
        raise ConfigError(
            f"WATCHDOG_USEC={raw!r} is not a positive number of microseconds; "
            "check WatchdogSec= in the unit"
        )
    return notify_socket, usec


def build_config(
    options: Mapping[str, Any],
    *,
    now: datetime,
    environ: Mapping[str, str] | None = None,
    write_dev_certificates: bool = True,
) -> Config:
    """Validate parsed command-line options; raise :class:`ConfigError` on the first problem.

    ``environ`` is the process environment (only systemd's notify variables are read from it);
    None means none of them, as for a run outside systemd. ``write_dev_certificates`` False
    (a ``--workers`` worker): the development certificate is loaded as it is, never written.
    """
    if not options["backend"]:
        raise ConfigError(
            "--backend is required: the URL of your plain-HTTP app, "
            "e.g. --backend http://127.0.0.1:8000"
        )
    mode, send_proxy_protocol = _mode(options)
    if mode == "tcp":
        backend = backend_tls(parse_tcp_backend(options["backend"]), options)
    else:
        backend = backend_tls(parse_backend(options["backend"]), options)
    limits = Limits(
        header_timeout=_positive(options, "header-timeout"),
        idle_timeout=_positive(options, "idle-timeout"),
        backend_timeout=_positive(options, "backend-timeout"),
        connect_timeout=_positive(options, "connect-timeout"),
        max_header_bytes=_positive(options, "max-header-bytes", integer=True),
        max_connections=_positive(options, "max-connections", integer=True),
    )
    if limits.max_header_bytes < 1024:
        raise ConfigError("--max-header-bytes below 1024 would refuse ordinary browser requests")
    listeners = listen_options.listeners(options)
    trusted = _trusted(options["trusted_proxy"])
    proxy_protocol = bool(options.get("proxy_protocol"))
    if proxy_protocol and not trusted:
        raise ConfigError(
            "--proxy-protocol needs --trusted-proxy: the PROXY header names the client's "
            "address, so only your load balancers may send it, e.g. --trusted-proxy 10.0.0.5/32"
        )
    access_log = options["access_log"]
    if access_log not in (None, "-"):
        _check_log_file(Path(access_log))
    notify_socket, watchdog_usec = systemd_environment(environ or {}, pid=os.getpid())
    client_ca, client_auth = _client_auth(options)
    routes = _routes(options, mode)
    source = replace(_certificate_source(options), writes_dev_files=write_dev_certificates)
    try:
        certificates, dev = source.load(now=now)
    except CertificateError as e:
        raise ConfigError(str(e)) from None
    source = source.keeping_default(certificates, dev)
    return Config(
        backend=backend,
        listeners=listeners,
        certificates=certificates,
        dev_certificates=dev,
        certificate_source=source,
        drain_timeout=_positive(options, "drain-timeout"),
        watch_certs=bool(options.get("watch_certs")),
        limits=limits,
        access_log=access_log,
        trusted_proxies=trusted,
        http2=not options.get("no_http2", False),
        redirect_listeners=listen_options.redirect_listeners(options),
        hsts_seconds=(
            _positive(options, "hsts", integer=True) if options.get("hsts") is not None else None
        ),
        tunnel_idle_timeout=(
            _positive(options, "tunnel-idle-timeout")
            if options.get("tunnel_idle_timeout") is not None
            else None
        ),
        notify_socket=notify_socket,
        watchdog_usec=watchdog_usec,
        proxy_protocol=proxy_protocol,
        metrics_listen=listen_options.metrics_listen(options),
        access_log_format=_access_log_format(options),
        mode=mode,
        send_proxy_protocol=send_proxy_protocol,
        client_ca=client_ca,
        client_auth=client_auth,
        workers=_workers(options),
        routes=routes,
    )

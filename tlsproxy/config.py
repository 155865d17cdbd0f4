"""The frozen, fully validated configuration: every user error is found here, once, with the fix.

Nothing after this module reads options, files named by options, or the environment: the
certificate is loaded (or the development one made) here too, so a bad file stops startup
before anything listens.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tlsproxy.backend import BackendAddress
from tlsproxy.http.headers import IPNetwork
from tlsproxy.names import normalise
from tlsproxy.tls.certset import CertificateSet
from tlsproxy.tls.certsource import CertificatePair, CertificateSource
from tlsproxy.tls.client import BackendTLS
from tlsproxy.tls.devca import DevCertificates
from tlsproxy.tls.pemfile import CertificateError

DEFAULT_PORT = 8443
DEFAULT_INTERFACES = ("127.0.0.1", "::1")
_LISTEN_KINDS = ("tcp", "tcp6", "unix", "systemd")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?\.)*[a-z0-9_]"
    r"([a-z0-9-]{0,61}[a-z0-9])?\.?$",
    re.IGNORECASE,
)


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the flag and the fix, in one line."""


@dataclass(frozen=True)
class Limits:
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    backend_timeout: float = 60.0
    connect_timeout: float = 5.0
    max_header_bytes: int = 64 * 1024
    max_connections: int = 10_000


@dataclass(frozen=True)
class Listener:
    """A Twisted plain endpoint description; tlsproxy adds TLS around it."""

    description: str
    optional: bool = False  # the default ::1 listener: a host without IPv6 only gets a warning
    fd: int | None = None  # a --workers worker: the supervisor's socket, adopted, never opened


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


def parse_backend(url: str) -> BackendAddress:
    """``http://host:port[/prefix]``, ``https://…`` or ``unix:/path`` → :class:`BackendAddress`.

    An https backend is verified against the system store for its own host name here; the
    flags that change that are applied by :func:`backend_tls`.
    """
    example = "e.g. --backend http://127.0.0.1:8000"
    if url[:5].lower() == "unix:":
        return _parse_unix_backend(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"--backend {url!r} is not a valid URL ({e}); {example}") from None
    if parts.scheme == "tcp":
        raise ConfigError(
            f"--backend {url!r}: a tcp:// backend receives raw bytes; add --mode tcp "
            "(or give the app's http:// URL)"
        )
    if parts.scheme not in ("http", "https"):
        raise ConfigError(
            f"--backend {url!r}: the backend must be an http://, https:// or unix:/path URL; "
            f"{example}"
        )
    if not parts.hostname:
        raise ConfigError(f"--backend {url!r} has no host; {example}")
    if port == 0:
        raise ConfigError(f"--backend {url!r}: port 0 is not a port a backend listens on")
    try:
        parts.hostname.encode("idna")
    except UnicodeError:
        raise ConfigError(
            f"--backend {url!r}: {parts.hostname!r} is not a valid host name"
        ) from None
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(
            f"--backend {url!r}: only scheme, host, port and a path prefix are allowed; {example}"
        )
    prefix = parts.path.rstrip("/")
    if not prefix.isascii() or any(c.isspace() or not c.isprintable() for c in prefix):
        raise ConfigError(
            f"--backend {url!r}: the path prefix must be URL-encoded ASCII without spaces "
            "(write é as %C3%A9 and a space as %20)"
        )
    if parts.scheme == "https":
        return BackendAddress(
            url=url,
            host=parts.hostname,
            port=port or 443,
            path_prefix=prefix.encode("ascii"),
            tls=BackendTLS(server_name=parts.hostname),
        )
    return BackendAddress(
        url=url, host=parts.hostname, port=port or 80, path_prefix=prefix.encode("ascii")
    )


def parse_tcp_backend(url: str) -> BackendAddress:
    """``tcp://host:port`` or ``unix:/path`` → :class:`BackendAddress`, for ``--mode tcp``."""
    example = "e.g. --backend tcp://127.0.0.1:6379 or --backend unix:/run/app.sock"
    if url[:5].lower() == "unix:":
        return _parse_unix_backend(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"--backend {url!r} is not a valid address ({e}); {example}") from None
    if parts.scheme != "tcp":
        raise ConfigError(
            f"--backend {url!r}: --mode tcp relays bytes, not HTTP, so the backend is a "
            f"tcp://host:port or unix:/path address; {example}"
        )
    if not parts.hostname or not port:
        raise ConfigError(f"--backend {url!r} needs a host and a port (1-65535); {example}")
    try:
        parts.hostname.encode("idna")
    except UnicodeError:
        raise ConfigError(
            f"--backend {url!r}: {parts.hostname!r} is not a valid host name"
        ) from None
    if parts.path.strip("/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"--backend {url!r}: only tcp://host:port is allowed; {example}")
    return BackendAddress(url=url, host=parts.hostname, port=port, path_prefix=b"")


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


def _metrics_listen(options: Mapping[str, Any]) -> str | None:
    """``--metrics-listen``: a plain Twisted endpoint (the metrics are served without TLS)."""
    description: str | None = options.get("metrics_listen")
    if description is None:
        return None
    kind = description.split(":", 1)[0].lower()
    if kind not in _LISTEN_KINDS:
        raise ConfigError(
            f"--metrics-listen {description!r}: unknown endpoint type {kind!r}; use one of "
            + ", ".join(f"{k}:" for k in _LISTEN_KINDS)
            + ", e.g. --metrics-listen tcp:9100:interface=127.0.0.1"
        )
    return description


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


def _parse_unix_backend(url: str) -> BackendAddress:
    """``unix:/run/app.sock`` (or ``unix:///run/app.sock``, or relative to the working directory).

    No path prefix: the whole rest is the socket's file name, which may contain any character.
    """
    path = url[5:]
    if path.startswith("//"):  # the URL form of Docker and curl: unix:///abs/path
        path = path[2:]
    if not path or path.endswith("/"):
        raise ConfigError(
            f"--backend {url!r}: name the socket file, e.g. --backend unix:/run/app/http.sock"
        )
    if "\0" in path:
        raise ConfigError(f"--backend {url!r}: a socket path cannot contain a NUL character")
    absolute = os.path.abspath(path)  # twistd may change directory later (--rundir)
    return BackendAddress(url=url, host="localhost", port=0, path_prefix=b"", socket_path=absolute)


def backend_tls(backend: BackendAddress, options: Mapping[str, Any]) -> BackendAddress:
    """Apply --backend-ca, --insecure-backend and --backend-server-name to an https backend."""
    ca, insecure = options.get("backend_ca"), bool(options.get("insecure_backend"))
    server_name = options.get("backend_server_name")
    given = [
        flag
        for flag, value in (
            ("--backend-ca", ca),
            ("--insecure-backend", insecure),
            ("--backend-server-name", server_name),
        )
        if value
    ]
    if backend.tls is None:
        if given:
            raise ConfigError(
                f"{given[0]} applies to an https:// backend only, and --backend is "
                f"{backend.url}; remove {given[0]} (or use an https:// backend)"
            )
        return backend
    if ca is not None and insecure:
        raise ConfigError(
            "--backend-ca and --insecure-backend contradict each other (verify with that CA, "
            "or verify nothing); keep --backend-ca"
        )
    name = backend.tls.server_name
    if server_name is not None:
        name = _backend_server_name(server_name)
    ca_pem = _read_backend_ca(Path(ca)) if ca is not None else None
    tls = BackendTLS(server_name=name, ca_pem=ca_pem, verify=not insecure)
    return dataclasses.replace(backend, tls=tls)


def _backend_server_name(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        if not _HOSTNAME.match(value) or value.startswith("*"):
            raise ConfigError(
                f"--backend-server-name {value!r} is neither a DNS name nor an IP address; "
                "give the name in the backend's certificate, e.g. --backend-server-name "
                "app.internal"
            ) from None
        return value.lower().rstrip(".")


def _read_ca_file(flag: str, path: Path, *, what: str) -> list[x509.Certificate]:
    """The PEM certificates in the file ``flag`` names; ``what`` says which CA is wanted."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot read it ({e.strerror})") from None
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise ConfigError(
            f"{flag} {path}: no PEM certificate in it; give the CA certificate that {what} "
            "(-----BEGIN CERTIFICATE-----)"
        )
    return certificates


def _read_backend_ca(path: Path) -> bytes:
    """The ``--backend-ca`` file's contents, checked to hold certificates."""
    _read_ca_file("--backend-ca", path, what="signed the backend's certificate")
    return path.read_bytes()


def _client_auth(options: Mapping[str, Any]) -> tuple[bytes | None, str]:
    """``--client-ca`` (its certificates, as clean PEM) and ``--client-auth``; see docs/mtls.md."""
    ca, auth = options.get("client_ca"), options.get("client_auth")
    if auth is not None:
        auth = auth.lower()
        if auth not in ("required", "optional"):
            raise ConfigError(f"--client-auth {auth!r}: use required or optional")
        if ca is None:
            raise ConfigError(
                f"--client-auth {auth} needs --client-ca: the PEM CA certificate(s) that "
                "client certificates must be signed by"
            )
    if ca is None:
        return None, "required"
    certificates = _read_ca_file("--client-ca", Path(ca), what="signs your client certificates")
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)
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


def _listeners(options: Mapping[str, Any]) -> tuple[Listener, ...]:
    listen: Sequence[str] = options["listen"]
    if listen:
        for description in listen:
            kind = description.split(":", 1)[0].lower()
            if kind in ("ssl", "tls", "le", "lets"):
                raise ConfigError(
                    f"--listen {description!r}: give a plain endpoint such as tcp:8443; "
                    "tlsproxy wraps it in TLS itself"
                )
            if kind not in _LISTEN_KINDS:
                raise ConfigError(
                    f"--listen {description!r}: unknown endpoint type {kind!r}; use one of "
                    + ", ".join(f"{k}:" for k in _LISTEN_KINDS)
                )
        return tuple(Listener(d) for d in listen)
    try:
        port = int(options["port"])
    except ValueError:
        raise ConfigError(f"--port {options['port']!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} is out of range; use 1-65535 (or 0 for any free port)")
    interfaces: Sequence[str] = options["interface"] or DEFAULT_INTERFACES
    listeners = []
    for interface in interfaces:
        try:
            ip = ipaddress.ip_address(interface)
        except ValueError:
            raise ConfigError(
                f"--interface {interface!r} is not an IP address; e.g. --interface 127.0.0.1 "
                "(or 0.0.0.0 for every IPv4 interface)"
            ) from None
        escaped = str(ip).replace(":", r"\:")
        kind = "tcp6" if ip.version == 6 else "tcp"
        listeners.append(
            Listener(f"{kind}:{port}:interface={escaped}", optional=not options["interface"])
        )
    return tuple(listeners)


def _redirect_listeners(options: Mapping[str, Any]) -> tuple[Listener, ...]:
    raw = options.get("redirect_http")
    if raw is None:
        return ()
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"--redirect-http {raw!r} is not a port number, e.g. 8080") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"--redirect-http {port} is out of range; use 1-65535")
    plain = _listeners({**options, "listen": [], "port": str(port)})
    tls_ports = {d.description.split(":")[1] for d in _listeners(options)}
    if str(port) in tls_ports:
        raise ConfigError(f"--redirect-http {port} is the TLS port too; pick another port")
    return plain


def _hostnames(values: Sequence[str]) -> tuple[str, ...]:
    names = []
    for value in values:
        try:
            names.append(str(ipaddress.ip_address(value)))
        except ValueError:
            if not _HOSTNAME.match(value):
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
        if not _HOSTNAME.match(host):
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
    if default_name is not None and not _HOSTNAME.match(default_name):
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
    options: Mapping[str, Any], *, now: datetime, environ: Mapping[str, str] | None = None
) -> Config:
    """Validate parsed command-line options; raise :class:`ConfigError` on the first problem.

    ``environ`` is the process environment (only systemd's notify variables are read from it);
    None means none of them, as for a run outside systemd.
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
    listeners = _listeners(options)
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
    source = _certificate_source(options)
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
        redirect_listeners=_redirect_listeners(options),
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
        metrics_listen=_metrics_listen(options),
        access_log_format=_access_log_format(options),
        mode=mode,
        send_proxy_protocol=send_proxy_protocol,
        client_ca=client_ca,
        client_auth=client_auth,
        workers=_workers(options),
        routes=routes,
    )

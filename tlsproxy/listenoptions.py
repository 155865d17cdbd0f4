"""``--listen``, ``--port``/``--interface``, ``--redirect-http`` and ``--metrics-listen``: which
plain endpoints tlsproxy opens (and wraps in TLS where it serves HTTPS)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tlsproxy.configerror import ConfigError

__all__ = ["DEFAULT_PORT", "Listener", "listeners", "metrics_listen", "redirect_listeners"]

DEFAULT_PORT = 8443
DEFAULT_INTERFACES = ("127.0.0.1", "::1")
LISTEN_KINDS = ("tcp", "tcp6", "unix", "systemd")


@dataclass(frozen=True)
class Listener:
    """A Twisted plain endpoint description; tlsproxy adds TLS around it."""

    description: str
    optional: bool = False  # the default ::1 listener: a host without IPv6 only gets a warning
    fd: int | None = None  # a --workers worker: the supervisor's socket, adopted, never opened


def listeners(options: Mapping[str, Any]) -> tuple[Listener, ...]:
    listen: Sequence[str] = options["listen"]
    if listen:
        for description in listen:
            kind = description.split(":", 1)[0].lower()
            if kind in ("ssl", "tls", "le", "lets"):
                raise ConfigError(
                    f"--listen {description!r}: give a plain endpoint such as tcp:8443; "
                    "tlsproxy wraps it in TLS itself"
                )
            if kind not in LISTEN_KINDS:
                raise ConfigError(
                    f"--listen {description!r}: unknown endpoint type {kind!r}; use one of "
                    + ", ".join(f"{k}:" for k in LISTEN_KINDS)
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


def redirect_listeners(options: Mapping[str, Any]) -> tuple[Listener, ...]:
    raw = options.get("redirect_http")
    if raw is None:
        return ()
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"--redirect-http {raw!r} is not a port number, e.g. 8080") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"--redirect-http {port} is out of range; use 1-65535")
    plain = listeners({**options, "listen": [], "port": str(port)})
    tls_ports = {d.description.split(":")[1] for d in listeners(options)}
    if str(port) in tls_ports:
        raise ConfigError(f"--redirect-http {port} is the TLS port too; pick another port")
    return plain


def metrics_listen(options: Mapping[str, Any]) -> str | None:
    """``--metrics-listen``: a plain Twisted endpoint (the metrics are served without TLS)."""
    description: str | None = options.get("metrics_listen")
    if description is None:
        return None
    kind = description.split(":", 1)[0].lower()
    if kind not in LISTEN_KINDS:
        raise ConfigError(
            f"--metrics-listen {description!r}: unknown endpoint type {kind!r}; use one of "
            + ", ".join(f"{k}:" for k in LISTEN_KINDS)
            + ", e.g. --metrics-listen tcp:9100:interface=127.0.0.1"
        )
    return description

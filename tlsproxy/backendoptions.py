"""``--backend`` (and ``--route``) URLs and the flags that say how an https backend is verified.

Every mistake is a :class:`ConfigError` naming the flag and the fix, in one line.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tlsproxy.backend import BackendAddress
from tlsproxy.configerror import ConfigError
from tlsproxy.names import HOSTNAME
from tlsproxy.tls.client import BackendTLS

__all__ = ["backend_tls", "parse_backend", "parse_tcp_backend", "read_ca_pem"]


def parse_backend(url: str) -> BackendAddress:
    """``http://host:port[/prefix]``, ``https://…`` or ``unix:/path`` → :class:`BackendAddress`.

    An https backend is verified against the system store for its own host name here; the
    flags that change that are applied by :func:`backend_tls`.
    """
    example = "e.g. --backend http://127.0.0.1:8000"
    if url[:5].lower() == "unix:":
        return _parse_unix_backend(url)
    parts, port = _split(url, "URL", example)
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
    _check_host(url, parts.hostname)
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
    parts, port = _split(url, "address", example)
    if parts.scheme != "tcp":
        raise ConfigError(
            f"--backend {url!r}: --mode tcp relays bytes, not HTTP, so the backend is a "
            f"tcp://host:port or unix:/path address; {example}"
        )
    if not parts.hostname or not port:
        raise ConfigError(f"--backend {url!r} needs a host and a port (1-65535); {example}")
    _check_host(url, parts.hostname)
    if parts.path.strip("/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"--backend {url!r}: only tcp://host:port is allowed; {example}")
    return BackendAddress(url=url, host=parts.hostname, port=port, path_prefix=b"")


def _split(url: str, what: str, example: str) -> tuple[SplitResult, int | None]:
    """The URL's parts and port, or the one-line error naming ``what`` it is not."""
    try:
        parts = urlsplit(url)
        return parts, parts.port
    except ValueError as e:
        raise ConfigError(f"--backend {url!r} is not a valid {what} ({e}); {example}") from None


def _check_host(url: str, hostname: str) -> None:
    try:
        hostname.encode("idna")
    except UnicodeError:
        raise ConfigError(f"--backend {url!r}: {hostname!r} is not a valid host name") from None


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
    ca_pem = (
        read_ca_pem("--backend-ca", Path(ca), what="signed the backend's certificate")
        if ca is not None
        else None
    )
    tls = BackendTLS(server_name=name, ca_pem=ca_pem, verify=not insecure)
    return dataclasses.replace(backend, tls=tls)


def _backend_server_name(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        if not HOSTNAME.match(value) or value.startswith("*"):
            raise ConfigError(
                f"--backend-server-name {value!r} is neither a DNS name nor an IP address; "
                "give the name in the backend's certificate, e.g. --backend-server-name "
                "app.internal"
            ) from None
        return value.lower().rstrip(".")


def read_ca_pem(flag: str, path: Path, *, what: str) -> bytes:
    """The CA certificates in the file ``flag`` names, as clean PEM; ``what``: which CA."""
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
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)

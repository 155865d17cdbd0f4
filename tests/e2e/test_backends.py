"""Backends other than plain http://: https:// (verified with service-identity) and unix: sockets.

Each backend here is a real server in a thread (``http.server``), reached by a real tlsproxy:
an HTTPS one with certificates made by ``tests.certfactory`` (dated now: the proxy checks them
against the real clock), and one on a unix socket in the test's directory.
"""

from __future__ import annotations

import hashlib
import socketserver
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.certfactory import Issued, make_ca, make_leaf, write_pem

from .proxyprocess import ProxyFactory, ProxyProcess

pytestmark = pytest.mark.e2e

BIG = 4 * 1024 * 1024  # /big streams this many bytes
BIG_CHUNK = bytes(range(256)) * 256  # 64 KiB


@dataclass
class Seen:
    """What a test backend saw: each request's path and Host, connections, SNI names."""

    requests: list[tuple[str, str]] = field(default_factory=list)
    connections: int = 0
    server_names: list[str | None] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def handler_for(seen: Seen) -> type[BaseHTTPRequestHandler]:
    """A keep-alive HTTP/1.1 handler: ``/big`` streams BIG bytes, anything else echoes."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            with seen.lock:
                seen.connections += 1

        def do_GET(self) -> None:
            with seen.lock:
                seen.requests.append((self.path, self.headers.get("Host", "")))
            if self.path == "/big":
                self.send_response(200)
                self.send_header("Content-Length", str(BIG))
                self.end_headers()
                for _ in range(BIG // len(BIG_CHUNK)):
                    self.wfile.write(BIG_CHUNK)
                return
            body = f"GET {self.path}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a unix peer has no address for the default log line; tests read ``seen``

    return Handler


class _QuietTLSServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # failed handshakes are what several tests are about; the proxy reports them


@pytest.fixture
def https_backend() -> Iterator[Any]:
    """Start HTTPS backends: ``start(issued) -> (port, seen)``, with its SNI recorded."""
    servers: list[ThreadingHTTPServer] = []

    def start(issued: Issued, tmp: Path) -> tuple[int, Seen]:
        seen = Seen()
        chain = write_pem(tmp / f"backend-{len(servers)}.pem", issued.cert, issued.key)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain)

        def record_sni(_sock: Any, name: str | None, _context: Any) -> None:
            with seen.lock:
                seen.server_names.append(name)

        context.sni_callback = record_sni
        server = _QuietTLSServer(("127.0.0.1", 0), handler_for(seen))
        # The handshake happens in the handler's thread, on its first read, not in accept().
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return int(server.server_address[1]), seen

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def unix_backend(tmp_path: Path) -> Iterator[tuple[Path, Seen]]:
    """An HTTP/1.1 server on a unix socket in the test's directory."""
    seen = Seen()
    path = tmp_path / "app.sock"
    server = _UnixHTTPServer(str(path), handler_for(seen))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield path, seen
    server.shutdown()
    server.server_close()


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Issued, Path]:
    """A CA dated now, and its certificate in ``ca.pem``."""
    ca = make_ca("Backend Test CA", now=datetime.now(UTC))
    return ca, write_pem(tmp_path / "ca.pem", ca.cert)


def leaf(ca: Issued | None, *names: str) -> Issued:
    """A backend certificate for ``names``, dated now (self-signed when ``ca`` is None)."""
    return make_leaf(ca, names=names, now=datetime.now(UTC))


def get(proxy: ProxyProcess, path: str = "/hello") -> tuple[int, str]:
    with proxy.client() as client:
        answer = client.get(path)
    return answer.status_code, answer.text


# --- https:// backends ----------------------------------------------------------------------


def test_https_backend_verified_with_backend_ca(
    proxy_factory: ProxyFactory, https_backend: Any, pki: tuple[Issued, Path], tmp_path: Path
) -> None:
    """An https backend whose certificate (IP SAN) is signed by --backend-ca serves requests, and
    it gets the client's Host, not its own address."""
    ca, ca_path = pki
    port, seen = https_backend(leaf(ca, "127.0.0.1"), tmp_path)
    proxy = proxy_factory("--backend", f"https://127.0.0.1:{port}", "--backend-ca", str(ca_path))
    assert get(proxy) == (200, "GET /hello\n")
    assert seen.requests == [("/hello", f"127.0.0.1:{proxy.port}")]
    assert seen.server_names == [None]  # SNI carries names, never an IP address


def test_backend_server_name_is_sent_as_sni_and_verified(
    proxy_factory: ProxyFactory, https_backend: Any, pki: tuple[Issued, Path], tmp_path: Path
) -> None:
    """Reached by IP with a certificate for a name only, --backend-server-name makes it verify,
    and that name is the SNI the backend sees."""
    ca, ca_path = pki
    port, seen = https_backend(leaf(ca, "backend.test"), tmp_path)
    proxy = proxy_factory(
        "--backend",
        f"https://127.0.0.1:{port}",
        "--backend-ca",
        str(ca_path),
        "--backend-server-name",
        "backend.test",
    )
    assert get(proxy) == (200, "GET /hello\n")
    assert seen.server_names == ["backend.test"]


def test_self_signed_backend_without_backend_ca_is_a_502_saying_why(
    proxy_factory: ProxyFactory, https_backend: Any, tmp_path: Path
) -> None:
    """A certificate the system store does not trust: 502 naming the backend, the name checked,
    and both ways out; the backend never sees a request."""
    port, seen = https_backend(leaf(None, "127.0.0.1"), tmp_path)
    url = f"https://127.0.0.1:{port}"
    proxy = proxy_factory("--backend", url)
    status, text = get(proxy)
    assert status == 502
    assert f"the backend {url} presented a certificate that did not verify for 127.0.0.1" in text
    assert "--backend-ca" in text
    assert "--insecure-backend" in text
    assert seen.requests == []


def test_certificate_for_another_name_is_a_502_saying_why(
    proxy_factory: ProxyFactory, https_backend: Any, pki: tuple[Issued, Path], tmp_path: Path
) -> None:
    """A trusted certificate that is not for the backend's name: 502 saying it did not verify
    for that name, and pointing at --backend-server-name."""
    ca, ca_path = pki
    port, seen = https_backend(leaf(ca, "other.test"), tmp_path)
    proxy = proxy_factory("--backend", f"https://127.0.0.1:{port}", "--backend-ca", str(ca_path))
    status, text = get(proxy)
    assert status == 502
    assert "did not verify for 127.0.0.1: it is not issued to that name" in text
    assert "--backend-server-name" in text
    assert seen.requests == []


def test_insecure_backend_accepts_any_certificate_and_warns(
    proxy_factory: ProxyFactory, https_backend: Any, tmp_path: Path
) -> None:
    """--insecure-backend serves through a self-signed certificate for another name, and the
    startup log says, as a warning, that the backend is not verified."""
    port, _ = https_backend(leaf(None, "other.test"), tmp_path)
    url = f"https://127.0.0.1:{port}"
    proxy = proxy_factory("--backend", url, "--insecure-backend")
    assert get(proxy) == (200, "GET /hello\n")
    assert f"warning: --insecure-backend: the certificate of {url} is not verified" in (
        proxy.output()
    )


# --- unix: backends -------------------------------------------------------------------------


def test_unix_socket_backend_streams_and_reuses_its_connection(
    proxy_factory: ProxyFactory, unix_backend: tuple[Path, Seen]
) -> None:
    """A unix: backend answers, streams 4 MiB intact, and keep-alive requests share one
    backend connection."""
    path, seen = unix_backend
    proxy = proxy_factory("--backend", f"unix:{path}")
    with proxy.client() as client:
        assert client.get("/one").text == "GET /one\n"
        digest = hashlib.sha256()
        size = 0
        with client.stream("GET", "/big") as answer:
            assert answer.status_code == 200
            for part in answer.iter_bytes():
                digest.update(part)
                size += len(part)
        assert client.get("/two").text == "GET /two\n"
    expected = hashlib.sha256(BIG_CHUNK * (BIG // len(BIG_CHUNK))).hexdigest()
    assert (size, digest.hexdigest()) == (BIG, expected)
    assert [p for p, _ in seen.requests] == ["/one", "/big", "/two"]
    assert seen.connections == 1


def test_unix_socket_with_nothing_listening_is_a_502(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    """A unix: backend whose socket file does not exist: 502 naming the URL as given."""
    url = f"unix:{tmp_path / 'missing.sock'}"
    proxy = proxy_factory("--backend", url)
    status, text = get(proxy)
    assert status == 502
    assert url in text

"""--proxy-protocol behind a real HAProxy in TCP mode sending PROXY v2, and by hand (v1)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .proxyprocess import ProxyFactory, ProxyProcess, free_port, run_to_exit

pytestmark = pytest.mark.e2e
HAPROXY_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"
REQUEST = b"GET /who HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def haproxy_program() -> str:
    """The haproxy binary, or a skip saying how to install it."""
    program = shutil.which("haproxy", path=HAPROXY_PATH)
    if program is None:
        pytest.skip("haproxy not installed (apt-get install haproxy; .ci/run does it)")
    return program


@contextlib.contextmanager
def haproxy_in_front(proxy: ProxyProcess, tmp_path: Path) -> Iterator[int]:
    """HAProxy in TCP mode on 127.0.0.1:<port>, sending PROXY v2 to ``proxy``; yields the port."""
    program = haproxy_program()
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "global\n"
        "    maxconn 64\n"
        "defaults\n"
        "    mode tcp\n"
        "    timeout connect 5s\n"
        "    timeout client 30s\n"
        "    timeout server 30s\n"
        "frontend front\n"
        f"    bind 127.0.0.1:{port}\n"
        "    default_backend tlsproxy\n"
        "backend tlsproxy\n"
        f"    server s1 127.0.0.1:{proxy.port} send-proxy-v2\n"
    )
    process = subprocess.Popen(
        [program, "-f", str(config), "-db"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:  # until HAProxy accepts, or 10 s
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read().decode() if process.stdout else ""
                pytest.fail(f"haproxy did not start listening on {port}:\n{output}")
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()  # our own child, by its PID
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if process.stdout is not None:
            process.stdout.close()


def https_get(proxy: ProxyProcess, port: int, *, source: str, preamble: bytes = b"") -> bytes:
    """One HTTPS request over a TCP connection from ``source`` to 127.0.0.1:``port``.

    ``preamble`` is sent in clear first (a PROXY header written by hand).
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    with sock:
        if preamble:
            sock.sendall(preamble)
        with proxy.ssl_context().wrap_socket(sock, server_hostname="localhost") as tls:
            tls.sendall(REQUEST)
            answer = b""
            for _ in range(1000):  # bounded: a short response ends well before
                chunk = tls.recv(65536)
                if not chunk:
                    break
                answer += chunk
    return answer


def wait_for_line(path: Path, prefix: str, timeout: float = 5.0) -> str:
    """The first line of ``path`` starting with ``prefix`` (the log is flushed every second)."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        for line in text.splitlines():
            if line.startswith(prefix):
                return line
        time.sleep(0.1)
    raise AssertionError(f"no line starting {prefix!r} in {path}:\n{text}")


@pytest.fixture
def proxy(proxy_factory: ProxyFactory, workdir: Path) -> ProxyProcess:
    """tlsproxy expecting PROXY headers from 127.0.0.1 only, with an access log."""
    return proxy_factory(
        "--proxy-protocol",
        "--trusted-proxy",
        "127.0.0.1/32",
        "--access-log",
        str(workdir / "access.log"),
    )


def test_client_address_from_haproxy_reaches_the_backend_and_the_log(
    proxy: ProxyProcess, proxy_factory: ProxyFactory, workdir: Path, tmp_path: Path
) -> None:
    """Behind HAProxy (send-proxy-v2) the backend and access log see the client, not HAProxy."""
    backend = proxy_factory.backend
    with haproxy_in_front(proxy, tmp_path) as port:
        answer = https_get(proxy, port, source="127.0.0.2")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    [request] = [r for r in backend.requests if r.target == b"/who"]
    assert request.only("X-Forwarded-For") == b"127.0.0.2"
    assert request.only("Forwarded").startswith(b"for=127.0.0.2;")
    line = wait_for_line(workdir / "access.log", "127.0.0.2 ")
    assert '"GET /who HTTP/1.1" 200' in line


def test_connection_from_an_untrusted_address_is_refused(proxy: ProxyProcess) -> None:
    """A direct connection from outside --trusted-proxy is closed before TLS, and logged."""
    with pytest.raises((ssl.SSLError, OSError)):
        https_get(proxy, proxy.port, source="127.0.0.3")
    assert proxy.wait_for_output(r"refused a connection from 127\.0\.0\.3")


def test_direct_connection_without_a_header_from_a_trusted_address_is_refused(
    proxy: ProxyProcess,
) -> None:
    """From a trusted address, TLS without a PROXY header first is refused, not guessed at."""
    with pytest.raises((ssl.SSLError, OSError)):
        https_get(proxy, proxy.port, source="127.0.0.1")
    assert proxy.wait_for_output(r"closed a connection from 127\.0\.0\.1: no PROXY")


def test_proxy_v1_line_by_hand(proxy: ProxyProcess, proxy_factory: ProxyFactory) -> None:
    """A PROXY v1 line written by hand before the TLS handshake names the client."""
    backend = proxy_factory.backend
    line = b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 443\r\n"
    answer = https_get(proxy, proxy.port, source="127.0.0.1", preamble=line)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    [request] = [r for r in backend.requests if r.target == b"/who"]
    assert request.only("X-Forwarded-For") == b"198.51.100.7"


def test_proxy_protocol_without_trusted_proxy_refuses_to_start(
    proxy_factory: ProxyFactory, workdir: Path, shared_certs_dir: Path
) -> None:
    """--proxy-protocol with no --trusted-proxy stops startup with one line saying why."""
    argv = ["--proxy-protocol", "--backend", proxy_factory.backend.url]
    argv += ["--listen", "tcp:0:interface=127.0.0.1", "--certs-dir", str(shared_certs_dir)]
    result = run_to_exit(argv, cwd=workdir)
    assert result.returncode != 0
    [line] = result.error_lines()
    assert line.startswith("tlsproxy: error: --proxy-protocol needs --trusted-proxy"), line
    assert "Traceback" not in result.output

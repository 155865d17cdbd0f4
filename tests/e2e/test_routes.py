"""--route HOST=BACKEND and 421 Misdirected Request, through a real twistd process."""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from .backend import Backend, BackendStarter
from .pki import Issued, issue, write_pair
from .proxyprocess import ProxyFactory, ProxyProcess, free_port


class Sites:
    """A CA, a certificate for default.test, one for app.test and one for *.shared.test."""

    def __init__(self, directory: Path) -> None:
        self.ca = issue("tlsproxy route test CA", ca=True)
        self.ca_path = directory / "ca.pem"
        self.ca_path.write_bytes(self.ca.cert_pem())
        self.args: list[str] = []
        for stem, names in (
            ("default", ("default.test",)),
            ("app", ("app.test",)),
            ("shared", ("*.shared.test",)),
        ):
            issued: Issued = issue(stem, issuer=self.ca, names=names)
            cert, key = write_pair(directory, issued, stem)
            self.args += ["--cert", str(cert), "--key", str(key)]


@pytest.fixture
def sites(tmp_path: Path) -> Sites:
    return Sites(tmp_path)


@pytest.fixture
def second(backend_factory: BackendStarter) -> Backend:
    return backend_factory(host="127.0.0.1", family=socket.AF_INET)


def _request(
    proxy: ProxyProcess, ca: Path, server_name: str | None, host: str | None, version: str = "1.1"
) -> tuple[int, bytes]:
    """One request on a fresh connection: SNI ``server_name``, ``Host: host``; (status, body)."""
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the names disagree on purpose
    head = f"GET /where HTTP/{version}\r\n"
    if host is not None:
        head += f"Host: {host}\r\n"
    head += "Connection: close\r\n\r\n"
    with (
        socket.create_connection((proxy.host, proxy.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        tls.sendall(head.encode())
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def test_requests_go_to_the_backend_their_host_names(
    proxy_factory: ProxyFactory, backend: Backend, second: Backend, sites: Sites
) -> None:
    proxy = proxy_factory(
        *sites.args, "--route", f"app.test={second.url}", "--route", f"*.shared.test={second.url}"
    )
    assert _request(proxy, sites.ca_path, "app.test", "app.test") == (200, b"GET /where\n")
    assert len(second.requests) == 1
    assert not backend.requests
    assert _request(proxy, sites.ca_path, "default.test", "default.test:8443")[0] == 200
    assert _request(proxy, sites.ca_path, "x.shared.test", "x.shared.test")[0] == 200
    assert [len(backend.requests), len(second.requests)] == [1, 2]
    assert _request(proxy, sites.ca_path, None, "APP.test")[0] == 200  # no SNI: Host decides
    assert len(second.requests) == 3
    assert _request(proxy, sites.ca_path, "app.test", None, "1.0")[0] == 200  # no Host: SNI does
    assert len(second.requests) == 4
    assert (b"Host", b"app.test") in second.requests[-1].headers  # the name the client asked
    assert f"app.test → {second.url}" in proxy.output()


def test_a_host_with_another_certificate_or_backend_gets_421(
    proxy_factory: ProxyFactory, backend: Backend, second: Backend, sites: Sites
) -> None:
    proxy = proxy_factory(*sites.args, "--route", f"app.test={second.url}")
    status, body = _request(proxy, sites.ca_path, "default.test", "app.test")
    assert status == 421
    assert b"open a new connection for that host" in body
    assert _request(proxy, sites.ca_path, "app.test", "default.test")[0] == 421
    # Same certificate, same backend: the reuse HTTP/2 clients make, served.
    assert _request(proxy, sites.ca_path, "a.shared.test", "b.shared.test")[0] == 200
    # Another certificate, same backend: still misdirected (the client checked the wrong one).
    assert _request(proxy, sites.ca_path, "a.shared.test", "default.test")[0] == 421
    assert not second.requests
    assert len(backend.requests) == 1


def test_http2_streams_are_routed_and_misdirected_ones_get_421(
    proxy_factory: ProxyFactory, backend: Backend, second: Backend, sites: Sites
) -> None:
    """curl over h2: SNI app.test, :authority app.test, then :authority default.test (421)."""
    proxy = proxy_factory(*sites.args, "--route", f"app.test={second.url}")
    url = f"https://app.test:{proxy.port}/h2"
    base = ["curl", "-sS", "--http2", "--cacert", str(sites.ca_path)]
    base += [
        "--resolve",
        f"app.test:{proxy.port}:{proxy.host}",
        "-w",
        " %{http_version} %{http_code}",
    ]
    routed = subprocess.run([*base, url], capture_output=True, text=True, timeout=30, check=True)
    assert routed.stdout == "GET /h2\n 2 200"
    misdirected = subprocess.run(
        [*base, "-H", "Host: default.test", url],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert misdirected.stdout.endswith(" 2 421"), misdirected
    assert len(second.requests) == 1
    assert not backend.requests


def test_tcp_mode_routes_by_sni(
    proxy_factory: ProxyFactory, sites: Sites, backend: Backend, second: Backend
) -> None:
    """--mode tcp: the SNI name picks the backend the bytes go to."""
    proxy = proxy_factory(
        *sites.args,
        *("--mode", "tcp", "--backend", f"tcp://127.0.0.1:{backend.port}"),
        *("--route", f"app.test=tcp://127.0.0.1:{second.port}"),
    )
    assert _request(proxy, sites.ca_path, "app.test", "anything")[0] == 200
    assert _request(proxy, sites.ca_path, "default.test", "anything")[0] == 200
    assert _request(proxy, sites.ca_path, None, "anything")[0] == 200
    assert [len(backend.requests), len(second.requests)] == [2, 1]


def test_route_mistakes_are_one_line_errors(proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    from .proxyprocess import run_to_exit

    for rule, expected in [
        ("app.test", "--route 'app.test' is not HOST=BACKEND"),
        ("bad host=http://127.0.0.1:1", "is not a host name"),
        ("app.test=ftp://x", "--route 'app.test=ftp://x': the backend must be an http://"),
    ]:
        finished = run_to_exit(["--backend", "http://127.0.0.1:1", "--route", rule], cwd=tmp_path)
        assert finished.returncode != 0
        assert any(expected in line for line in finished.error_lines()), finished.output


def test_tcp_mode_names_the_routed_backend_it_could_not_reach(
    proxy_factory: ProxyFactory, sites: Sites, backend: Backend
) -> None:
    """The log line for an unreachable backend names the one --route chose, not --backend."""
    closed = f"tcp://127.0.0.1:{free_port()}"
    proxy = proxy_factory(
        *sites.args,
        *("--mode", "tcp", "--backend", f"tcp://127.0.0.1:{backend.port}"),
        *("--route", f"app.test={closed}"),
    )
    with pytest.raises((ssl.SSLError, OSError, IndexError)):
        _request(proxy, sites.ca_path, "app.test", "anything")
    line = proxy.wait_for_output(r"the backend (\S+) could not be reached")
    assert line is not None, proxy.output()
    assert line.group(1) == closed

"""The command line: startup banner, listeners, help, access log, and one-line usage errors."""

from __future__ import annotations

import hashlib
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .backend import Backend
from .proxyprocess import TWISTD, ProxyFactory, ProxyProcess, free_port, run_to_exit

pytestmark = pytest.mark.e2e


def free_port_on_both_loopbacks() -> int:
    """A port free on 127.0.0.1 and on ::1 at the time of asking."""
    for _ in range(20):
        port = free_port()
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("::1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no port free on both loopback addresses")


def refused(host: str, port: int) -> bool:
    """Whether a TCP connect to host:port is refused."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def fingerprint_forms(der: bytes) -> list[str]:
    """The SHA-256 fingerprint of ``der`` as colon-separated and as plain hex, upper case."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return [":".join(digest[i : i + 2] for i in range(0, len(digest), 2)), digest]


def test_startup_banner_says_where_and_what(proxy: ProxyProcess, backend: Backend) -> None:
    """Startup prints the URL, the backend, the certificate's names, expiry, fingerprint, the CA."""
    with proxy.connect() as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    output = proxy.output()
    upper = output.upper()
    assert f"listening on https://127.0.0.1:{proxy.port}/" in output
    assert backend.url in output
    for name in ("localhost", "127.0.0.1", "::1"):
        assert name in output
    assert any(
        form in upper or form.replace(":", "") in upper.replace(":", "")
        for form in fingerprint_forms(der)
    ), "no SHA-256 fingerprint of the served cert"
    assert re.search(r"20\d\d-\d\d-\d\d", output), "no expiry date"
    assert proxy.ca_path is not None
    assert str(proxy.ca_path) in output, "the CA path (to trust) is not printed"


def test_default_listens_on_both_loopback_addresses(
    proxy_factory: ProxyFactory, backend: Backend
) -> None:
    """``--port N`` alone listens on 127.0.0.1 and ::1, and both serve."""
    port = free_port_on_both_loopbacks()
    proxy = proxy_factory("--port", str(port))
    assert sorted(proxy.listeners) == sorted([("127.0.0.1", port), ("::1", port)])
    assert f"listening on https://[::1]:{port}/" in proxy.output()
    context = proxy.ssl_context()
    for host in ("127.0.0.1", "::1"):
        with (
            socket.create_connection((host, port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"GET /both HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert tls.recv(4096).startswith(b"HTTP/1.1 200 ")
    assert len(backend.requests) == 2


def test_interface_chooses_the_address(proxy_factory: ProxyFactory) -> None:
    """``--interface 127.0.0.1`` listens there only, not on ::1."""
    port = free_port_on_both_loopbacks()
    proxy = proxy_factory("--port", str(port), "--interface", "127.0.0.1")
    assert proxy.listeners == [("127.0.0.1", port)]
    time.sleep(0.3)  # a second listener, if any, would be up by now
    assert refused("::1", port)


def test_listen_is_repeatable_and_overrides_port(proxy_factory: ProxyFactory) -> None:
    """Each ``--listen`` endpoint gets a TLS listener; ``--port`` is then ignored."""
    port = free_port_on_both_loopbacks()
    proxy = proxy_factory(
        "--port",
        str(port),
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--listen",
        r"tcp6:0:interface=\:\:1",
    )
    hosts = sorted(host for host, _ in proxy.listeners)
    assert hosts == ["127.0.0.1", "::1"]
    assert all(listener_port != port for _, listener_port in proxy.listeners)
    assert refused("127.0.0.1", port)
    context = proxy.ssl_context()
    for host, listener_port in proxy.listeners:
        with (
            socket.create_connection((host, listener_port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert tls.recv(4096).startswith(b"HTTP/1.1 200 ")


def test_help_lists_every_option(workdir: Path) -> None:
    """``twistd tlsproxy --help`` names every option of the contract and the main defaults."""
    result = subprocess.run(
        [*TWISTD, "--help"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for option in (
        "--backend",
        "--port",
        "--interface",
        "--listen",
        "--cert",
        "--key",
        "--key-passphrase-file",
        "--certs-dir",
        "--hostname",
        "--backend-timeout",
        "--connect-timeout",
        "--idle-timeout",
        "--header-timeout",
        "--max-header-bytes",
        "--max-connections",
        "--access-log",
        "--trusted-proxy",
    ):
        assert option in result.stdout, f"{option} missing from --help"
    assert "8443" in result.stdout
    assert "65536" in result.stdout
    assert "certs" in result.stdout


BAD_ARGUMENTS = [
    ([], "--backend"),
    (["--backend", "ftp://127.0.0.1:8000"], "--backend"),
    (["--backend", "127.0.0.1:8000"], "--backend"),
    (["--backend", "http://"], "--backend"),
    (["--backend", "http://127.0.0.1:99999"], "--backend"),
    (["--port", "70000"], "--port"),
    (["--port", "eighty"], "--port"),
    (["--interface", "not-an-address"], "--interface"),
    (["--listen", "bogus:endpoint"], "--listen"),
    (["--backend-timeout", "-1"], "--backend-timeout"),
    (["--backend-timeout", "soon"], "--backend-timeout"),
    (["--connect-timeout", "abc"], "--connect-timeout"),
    (["--idle-timeout", "-5"], "--idle-timeout"),
    (["--header-timeout", "-1"], "--header-timeout"),
    (["--max-header-bytes", "0"], "--max-header-bytes"),
    (["--max-header-bytes", "lots"], "--max-header-bytes"),
    (["--max-connections", "-1"], "--max-connections"),
    (["--max-connections", "many"], "--max-connections"),
    (["--trusted-proxy", "10.0.0.0/33"], "--trusted-proxy"),
    (["--trusted-proxy", "nonsense"], "--trusted-proxy"),
    (["--access-log", "/nonexistent-dir/access.log"], "--access-log"),
    (["--frobnicate"], "--frobnicate"),
]


@pytest.mark.parametrize(
    ("arguments", "flag"),
    BAD_ARGUMENTS,
    ids=[" ".join(arguments) or "no-backend" for arguments, _ in BAD_ARGUMENTS],
)
def test_bad_flag_is_one_line_error_naming_it(
    workdir: Path, backend: Backend, arguments: list[str], flag: str
) -> None:
    """A bad flag or value exits non-zero with one ``tlsproxy: error:`` line naming the flag."""
    port = free_port()
    argv = list(arguments)
    if arguments and flag != "--backend":
        argv += ["--backend", backend.url]
    if flag not in ("--port", "--interface", "--listen"):
        argv += ["--listen", f"tcp:{port}:interface=127.0.0.1"]
    result = run_to_exit(argv, cwd=workdir)
    assert result.returncode != 0
    assert "Traceback" not in result.output
    lines = result.error_lines()
    assert len(lines) == 1, f"expected one error line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("tlsproxy: error:"), lines[0]
    assert flag in lines[0], f"the error does not name {flag}: {lines[0]}"
    assert "listening on" not in result.output
    assert refused("127.0.0.1", port)


def test_access_log_uses_combined_log_format(proxy_factory: ProxyFactory, workdir: Path) -> None:
    """``--access-log PATH`` writes one Combined Log Format line per request."""
    log = workdir / "access.log"
    proxy = proxy_factory("--access-log", str(log))
    with proxy.client() as client:
        result = client.get(
            "/log-me?x=1",
            headers={"User-Agent": "e2e-agent/1.0", "Referer": "https://ref.example/page"},
        )
    assert result.status_code == 200
    pattern = re.compile(
        r"^127\.0\.0\.1 - - \[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\] "
        r'"GET /log-me\?x=1 HTTP/1\.1" 200 (\d+|-) '
        r'"https://ref\.example/page" "e2e-agent/1\.0"$',
        re.MULTILINE,
    )
    deadline = time.monotonic() + 5
    text = ""
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if pattern.search(text):
            break
        time.sleep(0.1)
    match = pattern.search(text)
    assert match, f"no Combined Log Format line for the request in:\n{text}"
    assert match.group(1) in (str(len(result.content)), "-")


def test_access_log_dash_writes_to_stdout(proxy_factory: ProxyFactory) -> None:
    """``--access-log -`` writes the access lines to standard output."""
    proxy = proxy_factory("--access-log", "-")
    with proxy.client() as client:
        assert client.get("/to-stdout", headers={"User-Agent": "dash-agent"}).status_code == 200
    assert proxy.wait_for_output(r'"GET /to-stdout HTTP/1\.1" 200 .*"dash-agent"'), proxy.output()


def test_sigterm_stops_cleanly(proxy_factory: ProxyFactory) -> None:
    """SIGTERM ends the idle proxy within the grace period (status 0 or by the signal)."""
    proxy = proxy_factory()
    output = proxy.stop()
    assert proxy.process.returncode in (0, -signal.SIGTERM), output
    assert "Traceback" not in output

"""`python -m tlsproxy doctor` as a user runs it: real backends on loopback, real certificates.

Each test starts the backends it needs (``http.server`` in a thread: one that answers, one that
always redirects to https, one that honours X-Forwarded-Proto, one that never answers; over TCP,
over TLS with certificates made now by ``tests.certfactory``, or on a unix socket in the test's
directory), runs doctor as a subprocess with a controlled environment (its own HOME, trust
variables set or not), and reads the report and the exit status.
"""

from __future__ import annotations

import os
import shutil
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.certfactory import Issued, make_ca, make_leaf, write_pair, write_pem
from tlsproxy.tls.devca import ensure_dev_certificates

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
TRUST_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")
DOCTOR_TIMEOUT = 30.0


# --- backends ----------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """Answers GET as its server's ``mode`` says, and records each request's headers."""

    server: _Server

    def do_GET(self) -> None:
        mode = self.server.mode
        self.server.seen.append(dict(self.headers.items()))
        https_url = f"https://{self.headers.get('Host', '')}{self.path}"
        forwarded_https = self.headers.get("X-Forwarded-Proto") == "https"
        if mode == "loop" or (mode == "honours" and not forwarded_https):
            self.send_response(301)
            self.send_header("Location", https_url)
        else:
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, mode: str) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.mode = mode
        self.seen: list[dict[str, str]] = []
        super().__init__((host, 0), _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        """Failed TLS handshakes are what several tests are about: doctor reports them."""


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, mode: str) -> None:
        self.mode = mode
        self.seen: list[dict[str, str]] = []
        super().__init__(str(path), _Handler)


@dataclass
class RunningBackend:
    host: str
    port: int

    def url(self, host: str | None = None) -> str:
        name = host or self.host
        return f"http://{f'[{name}]' if ':' in name else name}:{self.port}"


StartBackend = Callable[..., RunningBackend]


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(
    not _ipv6_loopback(), reason="this machine has no IPv6 loopback (::1) to listen on"
)
needs_certutil = pytest.mark.skipif(
    shutil.which("certutil") is None,
    reason="certutil (libnss3-tools) is not installed, so no NSS database can be made",
)


@pytest.fixture
def start_backend() -> Iterator[StartBackend]:
    """Start ``http.server`` backends on loopback port 0; all are shut down after the test."""
    servers: list[_Server] = []

    def start(*, mode: str = "plain", host: str = "127.0.0.1") -> RunningBackend:
        server = _Server(host, mode)
        servers.append(server)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}).start()
        return RunningBackend(host, server.server_address[1])

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@dataclass
class TLSBackend:
    port: int
    server: _Server
    server_names: list[str | None]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


StartTLSBackend = Callable[..., TLSBackend]


@pytest.fixture
def start_tls_backend(tmp_path: Path) -> Iterator[StartTLSBackend]:
    """Start ``http.server`` backends speaking TLS with ``issued`` on 127.0.0.1 port 0."""
    servers: list[_Server] = []

    def start(issued: Issued, *, mode: str = "plain") -> TLSBackend:
        chain = write_pem(tmp_path / f"tls-backend-{len(servers)}.pem", issued.cert, issued.key)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain)
        names: list[str | None] = []
        context.sni_callback = lambda _sock, name, _context: names.append(name)
        server = _Server("127.0.0.1", mode)
        # The handshake happens in the handler's thread, on its first read, not in accept().
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
        servers.append(server)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}).start()
        return TLSBackend(server.server_address[1], server, names)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


StartUnixBackend = Callable[..., tuple[Path, _UnixServer]]


@pytest.fixture
def start_unix_backend(tmp_path: Path) -> Iterator[StartUnixBackend]:
    """Start ``http.server`` backends on unix sockets in the test's directory."""
    servers: list[_UnixServer] = []

    def start(name: str = "app.sock", *, mode: str = "plain") -> tuple[Path, _UnixServer]:
        path = tmp_path / name
        server = _UnixServer(path, mode)
        servers.append(server)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}).start()
        return path, server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def silent_backend() -> Iterator[int]:
    """A port where connections are accepted by the kernel but nothing is ever answered."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def unused_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- certificates, environment, the doctor -----------------------------------------------------


@pytest.fixture(scope="module")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A development CA and leaf made by tlsproxy's own code, now."""
    directory = tmp_path_factory.mktemp("doctor-e2e") / "certs"
    ensure_dev_certificates(directory, [], now=datetime.now(UTC))
    return directory


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty HOME, so the user's own NSS database is never read."""
    path = tmp_path / "home"
    path.mkdir()
    return path


Probe = Callable[..., "Report"]


@pytest.fixture
def probe(certs_dir: Path, home: Path, tmp_path: Path) -> Probe:
    """``probe(BACKEND, *flags)``: doctor for that backend, trusting the development CA."""

    def run(backend: str, *flags: str | Path) -> Report:
        env = trusting_environment(home, certs_dir)
        return doctor("--backend", backend, *flags, "--certs-dir", certs_dir, env=env, cwd=tmp_path)

    return run


def environment(home: Path, **variables: Path | str) -> dict[str, str]:
    """This process's environment without trust variables, with ``home`` and ``variables``."""
    env = {k: v for k, v in os.environ.items() if k not in TRUST_VARIABLES}
    env.update(HOME=str(home), PYTHONPATH=str(REPO))
    env.update({name: str(value) for name, value in variables.items()})
    return env


@dataclass
class Report:
    status: int
    out: str
    err: str
    seconds: float

    def line(self, status: str, check: str) -> str:
        """The report line for ``check``; fails the test unless it has ``status``."""
        for line in self.out.splitlines():
            if line.split(" ", 1)[-1].lstrip().startswith(f"{check}:"):
                assert line.startswith(f"{status} "), f"expected {status}:\n{self.out}"
                return line
        raise AssertionError(f"no {check!r} line in:\n{self.out}")

    def fix(self, check: str) -> str:
        """The fix printed under ``check``'s line."""
        lines = self.out.splitlines()
        for index, line in enumerate(lines):
            if line.split(" ", 1)[-1].lstrip().startswith(f"{check}:"):
                following = lines[index + 1].strip()
                assert following.startswith("fix: "), self.out
                return following
        raise AssertionError(f"no {check!r} line in:\n{self.out}")


def doctor(*args: str | Path, env: dict[str, str], cwd: Path) -> Report:
    """Run ``python -m tlsproxy doctor ARGS``; fails on a traceback."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "tlsproxy", "doctor", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=DOCTOR_TIMEOUT,
        env=env,
        cwd=cwd,
        check=False,
    )
    report = Report(result.returncode, result.stdout, result.stderr, time.monotonic() - started)
    assert "Traceback" not in report.out + report.err, report.out + report.err
    return report


def trusting_environment(home: Path, certs_dir: Path) -> dict[str, str]:
    ca = certs_dir / "ca.pem"
    return environment(home, SSL_CERT_FILE=ca, REQUESTS_CA_BUNDLE=ca, NODE_EXTRA_CA_CERTS=ca)


def nss_database(home: Path, *, trusting: Path | None) -> Path:
    """``home/.pki/nssdb``, holding ``trusting`` as a trusted CA when given."""
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True)
    subprocess.run(
        ["certutil", "-N", "-d", f"sql:{db}", "--empty-password"], check=True, timeout=10
    )
    if trusting is not None:
        subprocess.run(
            ["certutil", "-A", "-d", f"sql:{db}", "-n", "dev ca", "-t", "C,,", "-i", str(trusting)],
            check=True,
            timeout=10,
        )
    return db


# --- healthy -----------------------------------------------------------------------------------


def test_a_healthy_development_setup_exits_zero(start_backend: StartBackend, probe: Probe) -> None:
    """Dev CA trusted by Node and Python, backend answering: every check ok but the system."""
    backend = start_backend()
    report = probe(backend.url())
    assert report.status == 0, report.out
    assert report.err == ""
    report.line("ok", "certificate")
    assert "localhost, 127.0.0.1, ::1" in report.line("ok", "certificate names")
    report.line("ok", "certificate dates")
    assert "tlsproxy development CA" in report.line("ok", "certificate chain")
    report.line("ok", "Node.js trust")
    report.line("ok", "Python trust")
    assert f"127.0.0.1:{backend.port} accepts connections" in report.line("ok", "backend over IPv4")
    report.line("ok", "forwarded HTTPS request")
    assert "problem " not in report.out
    assert report.out.splitlines()[-1].startswith("summary: 0 problems")


@needs_certutil
def test_the_nss_database_trusting_the_ca_is_ok_and_one_without_it_a_warning(
    start_backend: StartBackend, certs_dir: Path, home: Path, tmp_path: Path
) -> None:
    """certutil finds the CA by its bytes: trusted with C,, is ok; absent gives the add command."""
    backend = start_backend()
    nss_database(home, trusting=certs_dir / "ca.pem")
    env = environment(home)
    trusted = doctor("--backend", backend.url(), "--certs-dir", certs_dir, env=env, cwd=tmp_path)
    assert "nickname 'dev ca'" in trusted.line("ok", "NSS trust (Chromium)")

    other_home = tmp_path / "other-home"
    nss_database(other_home, trusting=None)
    untrusted = doctor(
        "--backend",
        backend.url(),
        "--certs-dir",
        certs_dir,
        env=environment(other_home),
        cwd=tmp_path,
    )
    untrusted.line("warning", "NSS trust (Chromium)")
    assert "-A -t C,, -n tlsproxy-dev-ca" in untrusted.fix("NSS trust (Chromium)")
    assert untrusted.status == 0


def test_trust_variables_naming_a_bundle_without_the_ca_are_warnings(
    start_backend: StartBackend, certs_dir: Path, home: Path, tmp_path: Path
) -> None:
    """SSL_CERT_FILE / NODE_EXTRA_CA_CERTS without the CA: warnings, exit status still 0."""
    backend = start_backend()
    other = write_pem(tmp_path / "other.pem", make_ca("Somebody else").cert)
    env = environment(home, SSL_CERT_FILE=other, NODE_EXTRA_CA_CERTS=other)
    report = doctor("--backend", backend.url(), "--certs-dir", certs_dir, env=env, cwd=tmp_path)
    assert f"SSL_CERT_FILE={other} does not contain it" in report.line("warning", "Python trust")
    report.line("warning", "Node.js trust")
    assert report.status == 0, report.out


# --- redirect loops ----------------------------------------------------------------------------


def test_a_backend_that_always_redirects_to_https_is_a_redirect_loop(
    start_backend: StartBackend, certs_dir: Path, home: Path, tmp_path: Path
) -> None:
    """301 to the same https URL despite X-Forwarded-Proto: a problem with framework settings."""
    backend = start_backend(mode="loop")
    report = doctor(
        "--backend",
        backend.url(),
        "--certs-dir",
        certs_dir,
        "--port",
        "9443",
        env=trusting_environment(home, certs_dir),
        cwd=tmp_path,
    )
    assert report.status == 1
    line = report.line("problem", "forwarded HTTPS request")
    assert "Location: https://localhost:9443/" in line
    assert "redirect loop" in line
    fix = report.fix("forwarded HTTPS request")
    assert "SECURE_PROXY_SSL_HEADER" in fix
    assert "ProxyFix" in fix


def test_a_backend_that_honours_x_forwarded_proto_passes(
    start_backend: StartBackend, probe: Probe
) -> None:
    """The same redirect-to-https app, trusting the header, answers 200: no loop, exit 0."""
    backend = start_backend(mode="honours")
    report = probe(backend.url())
    assert "answers 200" in report.line("ok", "forwarded HTTPS request")
    assert report.status == 0, report.out


# --- IPv4 and IPv6 -----------------------------------------------------------------------------


@needs_ipv6
def test_localhost_with_an_app_on_127_0_0_1_only_warns_about_ipv6(
    start_backend: StartBackend, probe: Probe
) -> None:
    """--backend localhost, app bound to 127.0.0.1: IPv6 warning explaining ::1 first."""
    backend = start_backend(host="127.0.0.1")
    report = probe(backend.url("localhost"))
    report.line("ok", "backend over IPv4")
    line = report.line("warning", "backend over IPv6")
    assert "localhost resolves to ::1 first in browsers and Node 17+" in line
    assert f"listens only on 127.0.0.1:{backend.port}" in line
    assert f"use --backend http://127.0.0.1:{backend.port}" in report.fix("backend over IPv6")
    report.line("ok", "forwarded HTTPS request")
    assert report.status == 0, report.out


@needs_ipv6
def test_an_app_only_on_ipv6_behind_an_ipv4_backend_url_is_a_problem_naming_ipv6(
    start_backend: StartBackend, probe: Probe
) -> None:
    """--backend 127.0.0.1, app on ::1 only: the IPv4 problem says to use [::1] or localhost."""
    backend = start_backend(host="::1")
    report = probe(backend.url("127.0.0.1"))
    assert report.status == 1
    report.line("problem", "backend over IPv4")
    assert f"your app listens only on [::1]:{backend.port}" in report.fix("backend over IPv4")
    assert "the app answers on" in report.line("skipped", "backend over IPv6")
    report.line("skipped", "forwarded HTTPS request")


@needs_ipv6
def test_an_app_only_on_ipv6_behind_localhost_works_and_is_checked_over_ipv6(
    start_backend: StartBackend, probe: Probe
) -> None:
    """--backend localhost, app on ::1 only: the forwarded request goes to ::1, exit 0."""
    backend = start_backend(host="::1", mode="loop")
    report = probe(backend.url("localhost"))
    report.line("warning", "backend over IPv4")
    report.line("ok", "backend over IPv6")
    report.line("problem", "forwarded HTTPS request")  # it reached the loop on ::1
    assert report.status == 1


def test_nothing_listening_is_a_problem_and_the_request_check_is_skipped(probe: Probe) -> None:
    """A closed port: problem with "start your app", and no request is attempted."""
    port = unused_port()
    report = probe(f"http://127.0.0.1:{port}")
    assert report.status == 1
    assert "connection refused" in report.line("problem", "backend over IPv4")
    assert "start your app" in report.fix("backend over IPv4")
    report.line("skipped", "forwarded HTTPS request")


def test_a_backend_that_never_answers_is_reported_within_the_read_timeout(
    silent_backend: int, probe: Probe
) -> None:
    """Connected but silent: a problem after the 3 s read timeout, not a hang."""
    report = probe(f"http://127.0.0.1:{silent_backend}")
    assert "no complete response head within 3 s" in report.line(
        "problem", "forwarded HTTPS request"
    )
    assert report.status == 1
    assert report.seconds < 15


# --- certificates ------------------------------------------------------------------------------


def test_an_expired_certificate_is_a_dated_problem(
    start_backend: StartBackend, home: Path, tmp_path: Path
) -> None:
    """--cert expired yesterday: the dates line says when, the chain still verifies."""
    now = datetime.now(UTC)
    ca = make_ca(now=now - timedelta(days=100))
    leaf = make_leaf(ca, now=now - timedelta(days=100), not_after=now - timedelta(days=1))
    cert, key = write_pair(tmp_path, leaf, ca.cert)
    backend = start_backend()
    report = doctor(
        "--backend",
        backend.url(),
        "--cert",
        cert,
        "--key",
        key,
        env=environment(home),
        cwd=tmp_path,
    )
    assert report.status == 1
    assert "expired on" in report.line("problem", "certificate dates")
    assert "renew it" in report.fix("certificate dates")
    report.line("ok", "certificate")


def test_a_certificate_for_another_name_is_a_names_problem(
    start_backend: StartBackend, home: Path, tmp_path: Path
) -> None:
    """--cert for example.test only: localhost, 127.0.0.1 and ::1 are named as missing."""
    now = datetime.now(UTC)
    ca = make_ca(now=now)
    cert, key = write_pair(tmp_path, make_leaf(ca, names=["example.test"], now=now), ca.cert)
    backend = start_backend()
    report = doctor(
        "--backend",
        backend.url(),
        "--cert",
        cert,
        "--key",
        key,
        env=environment(home),
        cwd=tmp_path,
    )
    assert report.status == 1
    line = report.line("problem", "certificate names")
    assert "does not cover localhost, 127.0.0.1, ::1" in line
    assert "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" in report.fix("certificate names")


def test_missing_development_certificates_are_named_not_created(
    start_backend: StartBackend, home: Path, tmp_path: Path
) -> None:
    """No certs/ yet: a problem naming `tlsproxy certs`; the dependent checks are skipped."""
    backend = start_backend()
    report = doctor("--backend", backend.url(), env=environment(home), cwd=tmp_path)
    assert report.status == 1
    report.line("problem", "certificate")
    assert "python -m tlsproxy certs --certs-dir certs" in report.fix("certificate")
    report.line("skipped", "certificate names")
    report.line("ok", "forwarded HTTPS request")
    assert not (tmp_path / "certs").exists()


def test_a_bad_backend_url_is_a_usage_error(home: Path, tmp_path: Path) -> None:
    """--backend ftp://... is refused with config's message and exit status 2."""
    report = doctor("--backend", "ftp://127.0.0.1:8000", env=environment(home), cwd=tmp_path)
    assert report.status == 2
    assert "the backend must be an http://, https:// or unix:/path URL" in report.err
    assert report.out == ""


def test_backend_tls_flags_on_a_plain_http_backend_are_a_usage_error(
    home: Path, tmp_path: Path
) -> None:
    """--backend-server-name with an http:// backend: refused as twistd refuses it, exit 2."""
    report = doctor(
        "--backend",
        "http://127.0.0.1:8000",
        "--backend-server-name",
        "app.test",
        env=environment(home),
        cwd=tmp_path,
    )
    assert report.status == 2
    assert "--backend-server-name applies to an https:// backend only" in report.err
    assert report.out == ""


# --- unix: backends ----------------------------------------------------------------------------


def test_a_unix_socket_backend_that_answers_is_probed_over_the_socket(
    start_unix_backend: StartUnixBackend, probe: Probe
) -> None:
    """unix:/path with an app on it: the socket is ok, the forwarded request reaches it."""
    path, server = start_unix_backend()
    report = probe(f"unix:{path}")
    assert f"{path} is a socket" in report.line("ok", "backend address")
    assert "answers 200" in report.line("ok", "forwarded HTTPS request")
    assert "backend over IPv4" not in report.out
    assert [seen.get("X-Forwarded-Proto") for seen in server.seen] == ["https"]
    assert report.status == 0, report.out


def test_a_unix_socket_backend_that_loops_is_a_redirect_loop(
    start_unix_backend: StartUnixBackend, probe: Probe
) -> None:
    """The same verdict as over TCP: 301 to the same https URL is a problem."""
    path, _ = start_unix_backend(mode="loop")
    report = probe(f"unix:{path}")
    assert "redirect loop" in report.line("problem", "forwarded HTTPS request")
    assert "ProxyFix" in report.fix("forwarded HTTPS request")
    assert report.status == 1


def test_a_unix_socket_path_with_no_file_names_the_sockets_that_are_there(
    start_unix_backend: StartUnixBackend, tmp_path: Path, probe: Probe
) -> None:
    """A wrong path: no file there, the socket beside it named, the request skipped."""
    path, server = start_unix_backend("gunicorn.sock")
    wrong = tmp_path / "app.sock"
    report = probe(f"unix:{wrong}")
    line = report.line("problem", "backend address")
    assert f"no socket at {wrong}: no file by that name in {tmp_path}" in line
    assert f"(the socket files there: {path})" in line
    assert "start your app" in report.fix("backend address")
    report.line("skipped", "forwarded HTTPS request")
    assert server.seen == []
    assert report.status == 1


def test_a_stale_unix_socket_is_nothing_listening(tmp_path: Path, probe: Probe) -> None:
    """A socket file left by an app that stopped: connection refused, said as such."""
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
    report = probe(f"unix:{path}")
    line = report.line("problem", "backend address")
    assert "nothing is listening on it (connection refused)" in line
    assert f"delete {path} first" in report.fix("backend address")
    report.line("skipped", "forwarded HTTPS request")


def test_a_regular_file_as_unix_backend_is_not_a_socket(tmp_path: Path, probe: Probe) -> None:
    """unix: naming a regular file: said plainly, no connection attempted."""
    path = tmp_path / "app.pid"
    path.write_text("1234\n")
    report = probe(f"unix:{path}")
    assert f"{path} is a regular file, not a socket" in report.line("problem", "backend address")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may connect to any socket file")
def test_a_unix_socket_without_write_permission_is_permission_denied(
    start_unix_backend: StartUnixBackend, home: Path, tmp_path: Path
) -> None:
    """A socket doctor's user may not write to: permission denied, naming who can fix it."""
    path, server = start_unix_backend()
    path.chmod(0o400)
    report = doctor("--backend", f"unix:{path}", env=environment(home), cwd=tmp_path)
    line = report.line("problem", "backend address")
    assert f"may not connect to {path}" in line
    assert "write permission on the socket file" in line
    assert "or root can fix it" in report.fix("backend address")
    report.line("skipped", "forwarded HTTPS request")
    assert server.seen == []


# --- https:// backends -------------------------------------------------------------------------


@pytest.fixture
def backend_ca(tmp_path: Path) -> tuple[Issued, Path]:
    """A CA for backend certificates, dated now, and its certificate in ``backend-ca.pem``."""
    ca = make_ca("Backend Test CA", now=datetime.now(UTC))
    return ca, write_pem(tmp_path / "backend-ca.pem", ca.cert)


def backend_leaf(ca: Issued | None, *names: str, expired: bool = False) -> Issued:
    """A backend certificate for ``names``, valid now (or expired two days ago)."""
    now = datetime.now(UTC)
    if expired:
        return make_leaf(
            ca, names=names, now=now - timedelta(days=90), not_after=now - timedelta(2)
        )
    return make_leaf(ca, names=names, now=now)


def test_an_https_backend_verified_with_backend_ca_is_probed_over_tls(
    start_tls_backend: StartTLSBackend, backend_ca: tuple[Issued, Path], probe: Probe
) -> None:
    """--backend-ca signs it: IPv4 ok, TLS ok, and the forwarded request goes over that TLS."""
    ca, ca_path = backend_ca
    backend = start_tls_backend(backend_leaf(ca, "127.0.0.1"))
    report = probe(backend.url, "--backend-ca", ca_path)
    report.line("ok", "backend over IPv4")
    line = report.line("ok", "backend TLS")
    assert "verifies for 127.0.0.1 against the --backend-ca file" in line
    assert "issued by CN=Backend Test CA" in line
    assert "answers 200" in report.line("ok", "forwarded HTTPS request")
    assert [seen.get("X-Forwarded-Proto") for seen in backend.server.seen] == ["https"]
    assert report.status == 0, report.out


def test_an_https_backend_that_loops_is_a_redirect_loop(
    start_tls_backend: StartTLSBackend, backend_ca: tuple[Issued, Path], probe: Probe
) -> None:
    """Over TLS too, a 301 to the same https URL is the redirect-loop problem."""
    ca, ca_path = backend_ca
    backend = start_tls_backend(backend_leaf(ca, "127.0.0.1"), mode="loop")
    report = probe(backend.url, "--backend-ca", ca_path)
    report.line("ok", "backend TLS")
    assert "redirect loop" in report.line("problem", "forwarded HTTPS request")
    assert report.status == 1


def test_an_https_backend_with_nothing_listening_skips_tls_and_the_request(probe: Probe) -> None:
    """A closed port: the IPv4 problem; the TLS and request checks are skipped, not guessed."""
    report = probe(f"https://127.0.0.1:{unused_port()}")
    assert "connection refused" in report.line("problem", "backend over IPv4")
    report.line("skipped", "backend TLS")
    report.line("skipped", "forwarded HTTPS request")
    assert report.status == 1


def test_an_unknown_backend_ca_is_a_problem_that_backend_ca_fixes(
    start_tls_backend: StartTLSBackend,
    backend_ca: tuple[Issued, Path],
    certs_dir: Path,
    home: Path,
    tmp_path: Path,
) -> None:
    """Signed by a CA neither the system nor --backend-ca trusts: why, and the CA to give;
    given that CA, the same backend is ok."""
    ca, ca_path = backend_ca
    backend = start_tls_backend(backend_leaf(ca, "127.0.0.1"))
    other = write_pem(tmp_path / "other-ca.pem", make_ca("Other CA", now=datetime.now(UTC)).cert)
    env = trusting_environment(home, certs_dir)
    for trust in ((), ("--backend-ca", other)):
        report = doctor(
            "--backend", backend.url, *trust, "--certs-dir", certs_dir, env=env, cwd=tmp_path
        )
        line = report.line("problem", "backend TLS")
        assert "presented a certificate that did not verify for 127.0.0.1" in line
        assert "it is issued by CN=Backend Test CA, which is not in" in line
        assert "--backend-ca" in report.fix("backend TLS")
        report.line("skipped", "forwarded HTTPS request")
        assert report.status == 1
    assert backend.server.seen == []
    fixed = doctor(
        "--backend",
        backend.url,
        "--backend-ca",
        ca_path,
        "--certs-dir",
        certs_dir,
        env=env,
        cwd=tmp_path,
    )
    fixed.line("ok", "backend TLS")
    fixed.line("ok", "forwarded HTTPS request")
    assert fixed.status == 0, fixed.out


def test_a_backend_certificate_for_another_name_points_at_backend_server_name(
    start_tls_backend: StartTLSBackend,
    backend_ca: tuple[Issued, Path],
    certs_dir: Path,
    home: Path,
    tmp_path: Path,
) -> None:
    """Issued to backend.test, reached as 127.0.0.1: a name problem naming the flag to give;
    with --backend-server-name backend.test it is sent as SNI and verifies."""
    ca, ca_path = backend_ca
    backend = start_tls_backend(backend_leaf(ca, "backend.test"))
    env = trusting_environment(home, certs_dir)
    flags = ("--backend", backend.url, "--backend-ca", ca_path, "--certs-dir", certs_dir)
    report = doctor(*flags, env=env, cwd=tmp_path)
    line = report.line("problem", "backend TLS")
    assert "did not verify for 127.0.0.1: it is not issued to that name" in line
    assert "(it is for backend.test)" in line
    assert "--backend-server-name backend.test" in report.fix("backend TLS")
    fixed = doctor(*flags, "--backend-server-name", "backend.test", env=env, cwd=tmp_path)
    assert "verifies for backend.test" in fixed.line("ok", "backend TLS")
    fixed.line("ok", "forwarded HTTPS request")
    assert backend.server_names[-1] == "backend.test"
    assert fixed.status == 0, fixed.out


def test_an_expired_backend_certificate_says_so_and_when(
    start_tls_backend: StartTLSBackend, backend_ca: tuple[Issued, Path], probe: Probe
) -> None:
    """Signed by --backend-ca but expired: the date, and renewing as the fix."""
    ca, ca_path = backend_ca
    backend = start_tls_backend(backend_leaf(ca, "127.0.0.1", expired=True))
    report = probe(backend.url, "--backend-ca", ca_path)
    assert "(2 days ago)" in report.line("problem", "backend TLS")
    assert "renew the backend's certificate" in report.fix("backend TLS")


def test_a_self_signed_backend_is_a_problem_and_insecure_backend_a_warning(
    start_tls_backend: StartTLSBackend, certs_dir: Path, home: Path, tmp_path: Path
) -> None:
    """Self-signed: a problem; --insecure-backend: the request goes through, with a warning."""
    backend = start_tls_backend(backend_leaf(None, "127.0.0.1"))
    env = trusting_environment(home, certs_dir)
    flags = ("--backend", backend.url, "--certs-dir", certs_dir)
    report = doctor(*flags, env=env, cwd=tmp_path)
    assert "it is self-signed" in report.line("problem", "backend TLS")
    insecure = doctor(*flags, "--insecure-backend", env=env, cwd=tmp_path)
    assert "not verified (--insecure-backend)" in insecure.line("warning", "backend TLS")
    insecure.line("ok", "forwarded HTTPS request")
    assert insecure.status == 0, insecure.out


def test_an_https_backend_url_on_a_plain_http_port_says_use_http(
    start_backend: StartBackend, probe: Probe
) -> None:
    """https:// pointing at a plain-HTTP app: the handshake fails; the fix names http://."""
    backend = start_backend()
    report = probe(f"https://127.0.0.1:{backend.port}")
    assert "failed the TLS handshake" in report.line("problem", "backend TLS")
    assert "use an http:// --backend" in report.fix("backend TLS")


def test_an_https_backend_that_never_answers_the_handshake_is_bounded(
    silent_backend: int, probe: Probe
) -> None:
    """Connected, no ServerHello: a problem after the 3 s handshake timeout, not a hang."""
    report = probe(f"https://127.0.0.1:{silent_backend}")
    assert "did not complete a TLS handshake within 3 s" in report.line("problem", "backend TLS")
    report.line("skipped", "forwarded HTTPS request")
    assert report.seconds < 15


@needs_ipv6
def test_an_https_localhost_backend_on_ipv4_only_keeps_the_name_in_the_fix(
    start_tls_backend: StartTLSBackend, backend_ca: tuple[Issued, Path], probe: Probe
) -> None:
    """https://localhost, app on 127.0.0.1: the IPv6 warning's fix keeps verifying localhost."""
    ca, ca_path = backend_ca
    backend = start_tls_backend(backend_leaf(ca, "localhost"))
    report = probe(f"https://localhost:{backend.port}", "--backend-ca", ca_path)
    report.line("ok", "backend over IPv4")
    report.line("warning", "backend over IPv6")
    assert f"https://127.0.0.1:{backend.port} --backend-server-name localhost" in report.fix(
        "backend over IPv6"
    )
    assert "verifies for localhost" in report.line("ok", "backend TLS")
    assert backend.server_names == ["localhost"]
    assert report.status == 0, report.out

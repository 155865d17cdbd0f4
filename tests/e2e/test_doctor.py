"""`python -m tlsproxy doctor` as a user runs it: real backends on loopback, real certificates.

Each test starts the backends it needs (``http.server`` in a thread: one that answers, one that
always redirects to https, one that honours X-Forwarded-Proto, one that never answers), runs
doctor as a subprocess with a controlled environment (its own HOME, trust variables set or
not), and reads the report and the exit status.
"""

from __future__ import annotations

import os
import shutil
import socket
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

from tests.certfactory import make_ca, make_leaf, write_pair, write_pem
from tlsproxy.tls.devca import ensure_dev_certificates

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
TRUST_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")
DOCTOR_TIMEOUT = 30.0


# --- backends ----------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """Answers GET as its server's ``mode`` says."""

    server: _Server

    def do_GET(self) -> None:
        mode = self.server.mode
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
        super().__init__((host, 0), _Handler)


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


def test_a_healthy_development_setup_exits_zero(
    start_backend: StartBackend, certs_dir: Path, home: Path, tmp_path: Path
) -> None:
    """Dev CA trusted by Node and Python, backend answering: every check ok but the system."""
    backend = start_backend()
    report = doctor(
        "--backend",
        backend.url(),
        "--certs-dir",
        certs_dir,
        env=trusting_environment(home, certs_dir),
        cwd=tmp_path,
    )
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
    start_backend: StartBackend, certs_dir: Path, home: Path, tmp_path: Path
) -> None:
    """The same redirect-to-https app, trusting the header, answers 200: no loop, exit 0."""
    backend = start_backend(mode="honours")
    report = doctor(
        "--backend",
        backend.url(),
        "--certs-dir",
        certs_dir,
        env=trusting_environment(home, certs_dir),
        cwd=tmp_path,
    )
    assert "answers 200" in report.line("ok", "forwarded HTTPS request")
    assert report.status == 0, report.out


# --- IPv4 and IPv6 -----------------------------------------------------------------------------


@needs_ipv6
def test_localhost_with_an_app_on_127_0_0_1_only_warns_about_ipv6(
    start_backend: StartBackend, certs_dir: Path, home: Path, tmp_path: Path
) -> None:
    """--backend localhost, app bound to 127.0.0.1: IPv6 warning explaining ::1 first."""
    backend = start_backend(host="127.0.0.1")
    report = doctor(
        "--backend",
        backend.url("localhost"),
        "--certs-dir",
        certs_dir,
        env=trusting_environment(home, certs_dir),
        cwd=tmp_path,
    )
    report.line("ok", "backend over IPv4")
    line = report.line("warning", "backend over IPv6")
    assert "localhost resolves to ::1 first in browsers and Node 17+" in line
    assert f"listens only on 127.0.0.1:{backend.port}" in line
    assert f"use --backend http://127.0.0.1:{backend.port}" in report.fix("backend over IPv6")
    report.line("ok", "forwarded HTTPS request")
    assert report.status == 0, report.out


@needs_ipv6
def test_an_app_only_on_ipv6_behind_an_ipv4_backend_url_is_a_problem_naming_ipv6(
    start_backend: StartBackend, certs_dir: Path, home: Path, tmp_path: Path
) -> None:
    """--backend 127.0.0.1, app on ::1 only: the IPv4 problem says to use [::1] or localhost."""
    backend = start_backend(host="::1")
    report = doctor(
        "--backend",
        backend.url("127.0.0.1"),
        "--certs-dir",
        certs_dir,
        env=trusting_environment(home, certs_dir),
        cwd=tmp_path,
    )
    assert report.status == 1
    report.line("problem", "backend over IPv4")
    assert f"your app listens only on [::1]:{backend.port}" in report.fix("backend over IPv4")
    assert "the app answers on" in report.line("skipped", "backend over IPv6")
    report.line("skipped", "forwarded HTTPS request")


@needs_ipv6
def test_an_app_only_on_ipv6_behind_localhost_works_and_is_checked_over_ipv6(
    start_backend: StartBackend, certs_dir: Path, home: Path, tmp_path: Path
) -> None:
    """--backend localhost, app on ::1 only: the forwarded request goes to ::1, exit 0."""
    backend = start_backend(host="::1", mode="loop")
    report = doctor(
        "--backend",
        backend.url("localhost"),
        "--certs-dir",
        certs_dir,
        env=trusting_environment(home, certs_dir),
        cwd=tmp_path,
    )
    report.line("warning", "backend over IPv4")
    report.line("ok", "backend over IPv6")
    report.line("problem", "forwarded HTTPS request")  # it reached the loop on ::1
    assert report.status == 1


def test_nothing_listening_is_a_problem_and_the_request_check_is_skipped(
    certs_dir: Path, home: Path, tmp_path: Path
) -> None:
    """A closed port: problem with "start your app", and no request is attempted."""
    port = unused_port()
    report = doctor(
        "--backend",
        f"http://127.0.0.1:{port}",
        "--certs-dir",
        certs_dir,
        env=trusting_environment(home, certs_dir),
        cwd=tmp_path,
    )
    assert report.status == 1
    assert "connection refused" in report.line("problem", "backend over IPv4")
    assert "start your app" in report.fix("backend over IPv4")
    report.line("skipped", "forwarded HTTPS request")


def test_a_backend_that_never_answers_is_reported_within_the_read_timeout(
    silent_backend: int, certs_dir: Path, home: Path, tmp_path: Path
) -> None:
    """Connected but silent: a problem after the 3 s read timeout, not a hang."""
    report = doctor(
        "--backend",
        f"http://127.0.0.1:{silent_backend}",
        "--certs-dir",
        certs_dir,
        env=trusting_environment(home, certs_dir),
        cwd=tmp_path,
    )
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

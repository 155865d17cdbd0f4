"""Client certificates (``--client-ca``, ``--client-auth``) against a real ``twistd`` process.

The client CA and client certificates are made with tests/certfactory.py; clients are Python's
``ssl`` (HTTP/1.1 by hand) and httpx (HTTP/2). What the backend receives is what is checked.
"""

from __future__ import annotations

import hashlib
import signal
import socket
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.certfactory import Issued, cert_der, ec_key, make_ca, write_pem

from .backend import Backend
from .proxyprocess import TWISTD, ProxyFactory, ProxyProcess, run_to_exit

pytestmark = pytest.mark.e2e

NOW = datetime.now(UTC)
CLIENT_HEADERS = ("x-client-cert-subject", "x-client-cert-san", "x-client-cert-sha256")


def make_client_cert(issuer: Issued, common_name: str) -> Issued:
    """A clientAuth certificate for ``common_name`` with an email and a SPIFFE URI SAN."""
    key = ec_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.RFC822Name(f"{common_name}@example.test"),
                    x509.UniformResourceIdentifier(f"spiffe://example.test/{common_name}"),
                ]
            ),
            critical=False,
        )
        .sign(issuer.key, hashes.SHA256())
    )
    return Issued(cert, key)


class ClientPKI:
    """A client CA (as --client-ca reads it) and certificates for clients, on disk."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = make_ca("mTLS Test Client CA", now=NOW)
        self.ca_path = write_pem(directory / "client-ca.pem", self.ca.cert, mode=0o644)
        self.alice = make_client_cert(self.ca, "alice")
        self.alice_path = write_pem(directory / "alice.pem", self.alice.cert, self.alice.key)
        stranger_ca = make_ca("Someone Else's CA", now=NOW)
        self.stranger = make_client_cert(stranger_ca, "mallory")
        self.stranger_path = write_pem(
            directory / "mallory.pem", self.stranger.cert, self.stranger.key
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ClientPKI:
    return ClientPKI(tmp_path_factory.mktemp("client-pki"))


def context_for(
    proxy: ProxyProcess, certificate: Path | None, *, alpn: str = "http/1.1"
) -> ssl.SSLContext:
    context = proxy.ssl_context(alpn=False)
    context.set_alpn_protocols([alpn] if alpn == "http/1.1" else [alpn, "http/1.1"])
    if certificate is not None:
        context.load_cert_chain(certificate)
    return context


def get(
    proxy: ProxyProcess,
    certificate: Path | None,
    *,
    extra: bytes = b"",
    version: ssl.TLSVersion | None = None,
) -> bytes:
    """One HTTP/1.1 GET over a new TLS connection; the response bytes, up to the close."""
    context = context_for(proxy, certificate)
    if version is not None:
        context.minimum_version = context.maximum_version = version
    with (
        socket.create_connection((proxy.host, proxy.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(
            b"GET /who HTTP/1.1\r\nHost: localhost\r\n" + extra + b"Connection: close\r\n\r\n"
        )
        received = b""
        while chunk := tls.recv(65536):
            received += chunk
        return received


def last_request_headers(backend: Backend) -> dict[str, list[bytes]]:
    request = backend.wait_for_requests(1)[-1]
    return {name: request.header(name) for name in (*CLIENT_HEADERS, "x-client-verified")}


@pytest.fixture
def required(proxy_factory: ProxyFactory, pki: ClientPKI) -> ProxyProcess:
    return proxy_factory("--client-ca", str(pki.ca_path), "--client-auth", "required")


@pytest.fixture
def optional(proxy_factory: ProxyFactory, pki: ClientPKI) -> ProxyProcess:
    return proxy_factory("--client-ca", str(pki.ca_path), "--client-auth", "optional")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_required_without_a_certificate_fails_the_handshake(
    required: ProxyProcess, backend: Backend, version: ssl.TLSVersion
) -> None:
    """No certificate: a TLS alert, a log line naming the client, nothing reaches the backend.

    (In TLS 1.3 the client's side of the handshake completes first; the alert ends its read.)
    """
    with pytest.raises(ssl.SSLError, match=r"(?i)certificate|handshake"):
        get(required, None, version=version)

    assert required.wait_for_output(
        r"client certificate refused for 127\.0\.0\.1 port \d+: no certificate sent, "
        r"and --client-auth is required"
    ), required.output()
    assert backend.requests == []


def test_required_refuses_a_certificate_from_another_ca(
    required: ProxyProcess, backend: Backend, pki: ClientPKI
) -> None:
    with pytest.raises(ssl.SSLError):
        get(required, pki.stranger_path)

    assert required.wait_for_output(
        r"client certificate refused for 127\.0\.0\.1 port \d+: "
        r"it does not verify against --client-ca \(unable to get local issuer certificate\)"
    ), required.output()
    assert backend.requests == []


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_required_with_a_certificate_reaches_the_backend_described(
    required: ProxyProcess, backend: Backend, pki: ClientPKI, version: ssl.TLSVersion
) -> None:
    """The backend sees the subject, the SANs and the SHA-256 fingerprint, and SUCCESS."""
    response = get(required, pki.alice_path, version=version)

    assert response.startswith(b"HTTP/1.1 200 ")
    assert last_request_headers(backend) == {
        "x-client-cert-subject": [b"CN=alice"],
        "x-client-cert-san": [b"email:alice@example.test, URI:spiffe://example.test/alice"],
        "x-client-cert-sha256": [hashlib.sha256(cert_der(pki.alice.cert)).hexdigest().encode()],
        "x-client-verified": [b"SUCCESS"],
    }


def test_a_client_cannot_send_its_own_certificate_headers(
    required: ProxyProcess, backend: Backend, pki: ClientPKI
) -> None:
    forged = (
        b"X-Client-Cert-Subject: CN=admin\r\n"
        b"x-client-cert-san: DNS:admin.example.test\r\n"
        b"X-Client-Cert-SHA256: 00\r\n"
        b"X-Client-Verified: SUCCESS\r\n"
    )
    response = get(required, pki.alice_path, extra=forged)

    assert response.startswith(b"HTTP/1.1 200 ")
    headers = last_request_headers(backend)
    assert headers["x-client-cert-subject"] == [b"CN=alice"]
    assert headers["x-client-cert-san"] == [
        b"email:alice@example.test, URI:spiffe://example.test/alice"
    ]
    assert headers["x-client-verified"] == [b"SUCCESS"]
    assert b"admin" not in backend.raw()


def test_http2_requests_carry_the_certificate_too(
    required: ProxyProcess, backend: Backend, pki: ClientPKI
) -> None:
    context = context_for(required, pki.alice_path, alpn="h2")
    with httpx.Client(base_url=required.url, verify=context, http2=True, timeout=10) as client:
        response = client.get("/who", headers={"X-Client-Cert-Subject": "CN=admin"})

    assert response.http_version == "HTTP/2"
    assert response.status_code == 200
    headers = last_request_headers(backend)
    assert headers["x-client-cert-subject"] == [b"CN=alice"]
    assert headers["x-client-verified"] == [b"SUCCESS"]
    assert b"admin" not in backend.raw()


def test_optional_without_a_certificate_says_none(optional: ProxyProcess, backend: Backend) -> None:
    response = get(optional, None, extra=b"X-Client-Cert-Subject: CN=admin\r\n")

    assert response.startswith(b"HTTP/1.1 200 ")
    assert last_request_headers(backend) == {
        "x-client-cert-subject": [],
        "x-client-cert-san": [],
        "x-client-cert-sha256": [],
        "x-client-verified": [b"NONE"],
    }
    assert "client certificate refused" not in optional.output()


def test_optional_with_a_certificate_describes_it(
    optional: ProxyProcess, backend: Backend, pki: ClientPKI
) -> None:
    assert get(optional, pki.alice_path).startswith(b"HTTP/1.1 200 ")

    headers = last_request_headers(backend)
    assert headers["x-client-cert-subject"] == [b"CN=alice"]
    assert headers["x-client-verified"] == [b"SUCCESS"]


def test_optional_still_refuses_a_certificate_that_does_not_verify(
    optional: ProxyProcess, backend: Backend, pki: ClientPKI
) -> None:
    with pytest.raises(ssl.SSLError):
        get(optional, pki.stranger_path)

    assert optional.wait_for_output(r"client certificate refused .* does not verify")
    assert backend.requests == []


def test_without_client_ca_forged_headers_are_dropped_and_none_added(
    proxy: ProxyProcess, backend: Backend
) -> None:
    response = get(
        proxy, None, extra=b"X-Client-Verified: SUCCESS\r\nX-Client-Cert-Subject: CN=x\r\n"
    )

    assert response.startswith(b"HTTP/1.1 200 ")
    assert all(value == [] for value in last_request_headers(backend).values())


def test_the_client_ca_survives_a_certificate_reload(
    required: ProxyProcess, backend: Backend, pki: ClientPKI
) -> None:
    """SIGHUP rebuilds the TLS context: it still asks for, and checks, client certificates."""
    required.process.send_signal(signal.SIGHUP)
    assert required.wait_for_output("reloaded certificates")
    with pytest.raises(ssl.SSLError):
        get(required, None)
    assert get(required, pki.alice_path).startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--client-auth", "required"], "--client-ca"),
        (["--client-ca", "/nonexistent/ca.pem"], "--client-ca"),
        (["--client-ca", "{ca}", "--client-auth", "sometimes"], "--client-auth"),
        (["--client-ca", "{empty}"], "--client-ca"),
    ],
)
def test_bad_client_flags_are_one_line_errors(
    args: list[str], flag: str, tmp_path: Path, pki: ClientPKI, backend: Backend
) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_text("not a certificate\n")
    argv = [
        *(a.format(ca=pki.ca_path, empty=empty) for a in args),
        "--backend",
        backend.url,
        "--certs-dir",
        str(tmp_path / "certs"),
        "--listen",
        "tcp:0:interface=127.0.0.1",
    ]
    assert TWISTD  # the same twistd the proxies run under
    result = run_to_exit(argv, cwd=tmp_path)

    assert result.returncode != 0
    assert "Traceback" not in result.output
    lines = result.error_lines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tlsproxy: error:"), lines[0]
    assert flag in lines[0], lines[0]

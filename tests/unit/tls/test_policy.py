"""tlsproxy.tls.policy: real TLS handshakes in memory against the server connection creator.

The server is Twisted's TLSMemoryBIOProtocol, the client Python's ``ssl`` (see conftest). The
client checks validity against the real clock, so these certificates are made around real time.
"""

from __future__ import annotations

import ssl
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.logger import LogLevel, capturedLogs, formatEvent

from tests.certfactory import (
    Issued,
    cert_der,
    ec_key,
    key_pem,
    make_ca,
    make_leaf,
    rsa_key,
    write_pair,
    write_pem,
)
from tests.unit.tls.conftest import client_context
from tests.unit.tls.test_memorytls import TLSPair
from tlsproxy.tls.certstore import LoadedCertificate, load_certificate
from tlsproxy.tls.policy import HTTP2_ALPN, server_ssl_context

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca("Policy Test CA", now=NOW)


@pytest.fixture(scope="module")
def ecdsa(ca: Issued, tmp_path_factory: pytest.TempPathFactory) -> LoadedCertificate:
    """An ECDSA P-256 leaf for localhost signed by ``ca``."""
    directory = tmp_path_factory.mktemp("ecdsa")
    return load_certificate(*write_pair(directory, make_leaf(ca, now=NOW)), now=NOW)


TLS12 = (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)
TLS13 = (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3)


# -- server_ssl_context: the front's TLS policy, through MemoryTLS ---------------------------


@pytest.fixture(scope="module")
def stdlib_context(ecdsa: LoadedCertificate) -> ssl.SSLContext:
    return server_ssl_context(ecdsa)


def stdlib_handshake(
    server: ssl.SSLContext,
    client: ssl.SSLContext,
    *,
    session: ssl.SSLSession | None = None,
) -> TLSPair:
    """A handshake between ``client`` and MemoryTLS using ``server``; see ``pair.error``."""
    pair = TLSPair.connect(server, client, session=session)
    pair.pump()
    return pair


def test_stdlib_context_sets_the_policy(stdlib_context: ssl.SSLContext) -> None:
    """TLS 1.2 floor, no compression, no renegotiation, the session cache rather than stateless
    tickets, one TLS 1.3 ticket per handshake, ALPN on."""
    context = stdlib_context

    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_NO_TICKET
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert context.num_tickets == 1
    assert context.verify_mode == ssl.CERT_NONE  # no client certificates


def test_stdlib_tls12_ciphers_are_ecdhe_aead_only(stdlib_context: ssl.SSLContext) -> None:
    """Every TLS 1.2 suite offered has forward secrecy and an AEAD (rule 2)."""
    stdlib = [c["name"] for c in stdlib_context.get_ciphers() if c["protocol"] == "TLSv1.2"]

    assert stdlib
    assert all(name.startswith("ECDHE-") for name in stdlib)
    assert all("GCM" in name or "CHACHA20" in name for name in stdlib)


def test_stdlib_tls12_picks_an_ecdhe_aead_cipher(
    stdlib_context: ssl.SSLContext, ca: Issued
) -> None:
    pair = stdlib_handshake(stdlib_context, client_context(ca, versions=TLS12))

    cipher = pair.client.cipher()
    assert cipher is not None
    assert cipher[0].startswith("ECDHE-ECDSA-")


def test_stdlib_client_without_alpn_connects(stdlib_context: ssl.SSLContext, ca: Issued) -> None:
    """A client that does not use ALPN still connects; no protocol is selected."""
    pair = stdlib_handshake(stdlib_context, client_context(ca))

    assert pair.error is None
    assert pair.client.selected_alpn_protocol() is None


def test_alpn_without_http11_is_refused(ecdsa: LoadedCertificate) -> None:
    """http/1.1 must always be offered: a policy without it is a programming error (rule 3)."""
    with pytest.raises(ValueError, match=r"http/1\.1"):
        server_ssl_context(ecdsa, alpn=(b"h2",))


def test_stdlib_wrong_name_fails_client_verification(
    stdlib_context: ssl.SSLContext, ca: Issued
) -> None:
    """Sanity for the harness: the client really verifies (another hostname fails)."""
    client = client_context(ca)
    pair = TLSPair.connect(stdlib_context, client, server_hostname="other.test")
    pair.pump()

    assert pair.error is not None
    assert "CERTIFICATE_VERIFY_FAILED" in str(pair.error)


@pytest.mark.parametrize(("versions", "name"), [(TLS12, "TLSv1.2"), (TLS13, "TLSv1.3")])
def test_stdlib_tls12_and_tls13_handshakes_succeed(
    stdlib_context: ssl.SSLContext,
    ca: Issued,
    versions: tuple[ssl.TLSVersion, ssl.TLSVersion],
    name: str,
) -> None:
    """A verifying client completes TLS 1.2 and 1.3 handshakes against the stdlib context."""
    pair = stdlib_handshake(stdlib_context, client_context(ca, versions=versions))

    assert pair.error is None
    assert pair.client.version() == name


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_stdlib_tls11_client_is_refused(stdlib_context: ssl.SSLContext, ca: Issued) -> None:
    """A TLS 1.1 client gets a protocol_version alert and is disconnected."""
    context = client_context(
        ca, versions=(ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1_1), ciphers="DEFAULT:@SECLEVEL=0"
    )

    pair = stdlib_handshake(stdlib_context, context)

    assert pair.error is not None
    assert "PROTOCOL_VERSION" in str(pair.error).upper()
    assert pair.tcp.disconnecting


def test_stdlib_tls12_refuses_cbc_and_static_rsa(
    stdlib_context: ssl.SSLContext, ca: Issued
) -> None:
    """A TLS 1.2 client offering only static-RSA or CBC suites finds no shared cipher."""
    context = client_context(ca, versions=TLS12, ciphers="AES128-SHA:ECDHE-ECDSA-AES128-SHA")

    pair = stdlib_handshake(stdlib_context, context)

    assert pair.error is not None
    assert pair.tcp.disconnecting


def test_stdlib_alpn_prefers_h2_and_always_offers_http11(
    ecdsa: LoadedCertificate, ca: Issued
) -> None:
    """alpn=(h2, http/1.1) gives h2 to a browser; a context without http/1.1 is refused."""
    pair = stdlib_handshake(
        server_ssl_context(ecdsa, alpn=HTTP2_ALPN), client_context(ca, alpn=["h2", "http/1.1"])
    )

    assert pair.client.selected_alpn_protocol() == "h2"
    with pytest.raises(ValueError, match=r"http/1\.1"):
        server_ssl_context(ecdsa, alpn=(b"h2",))


@pytest.mark.parametrize("versions", [TLS12, TLS13])
def test_stdlib_rsa_certificate_serves(
    ca: Issued, tmp_path: Path, versions: tuple[ssl.TLSVersion, ssl.TLSVersion]
) -> None:
    """An RSA 2048 leaf serves over TLS 1.2 (ECDHE-RSA) and TLS 1.3."""
    leaf = load_certificate(
        *write_pair(tmp_path, make_leaf(ca, key=rsa_key(2048), now=NOW)), now=NOW
    )

    pair = stdlib_handshake(server_ssl_context(leaf), client_context(ca, versions=versions))

    assert pair.error is None
    cipher = pair.client.cipher()
    assert cipher is not None
    if versions == TLS12:
        assert cipher[0].startswith("ECDHE-RSA-")


def test_stdlib_intermediate_chain_is_sent(tmp_path: Path) -> None:
    """A client trusting only the root verifies a leaf whose intermediate is in the cert file."""
    root = make_ca("Root", now=NOW)
    intermediate = make_ca("Intermediate", issuer=root, now=NOW)
    loaded = load_certificate(
        *write_pair(tmp_path, make_leaf(intermediate, now=NOW), intermediate.cert), now=NOW
    )

    pair = stdlib_handshake(server_ssl_context(loaded), client_context(root))

    assert pair.error is None


def test_stdlib_encrypted_key_serves(ca: Issued, tmp_path: Path) -> None:
    """A passphrase-protected key works: the context gets the key certstore decrypted."""
    leaf = make_leaf(ca, now=NOW)
    cert_path = write_pem(tmp_path / "cert.pem", leaf.cert)
    key_path = tmp_path / "key.pem"
    key_path.write_bytes(key_pem(leaf.key, passphrase=b"secret"))
    key_path.chmod(0o600)
    loaded = load_certificate(cert_path, key_path, passphrase=b"secret", now=NOW)

    pair = stdlib_handshake(server_ssl_context(loaded), client_context(ca))

    assert pair.error is None


def test_stdlib_key_file_is_private_and_removed(
    ecdsa: LoadedCertificate, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PEM handed to OpenSSL is owner-only, in an owner-only directory, and gone after."""
    seen: list[tuple[int, int]] = []
    unlink = Path.unlink

    def spy(path: Path, missing_ok: bool = False) -> None:  # the file, just before it goes
        seen.append((path.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777))
        unlink(path, missing_ok)

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(Path, "unlink", spy)

    server_ssl_context(ecdsa)

    assert seen == [(0o600, 0o700)]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("versions", [TLS12, TLS13])
def test_stdlib_sessions_resume_within_one_context(
    stdlib_context: ssl.SSLContext,
    ca: Issued,
    versions: tuple[ssl.TLSVersion, ssl.TLSVersion],
) -> None:
    """A client reconnecting with its session resumes it (server-side session cache)."""
    context = client_context(ca, versions=versions)
    first = stdlib_handshake(stdlib_context, context)
    assert first.error is None
    assert not first.client.session_reused

    second = stdlib_handshake(stdlib_context, context, session=first.client.session)

    assert second.error is None
    assert second.client.session_reused


def test_stdlib_sessions_stay_with_their_context(ecdsa: LoadedCertificate, ca: Issued) -> None:
    """A session from one context does not resume on another (each has its own cache)."""
    context = client_context(ca, versions=TLS12)
    first = stdlib_handshake(server_ssl_context(ecdsa), context)

    second = stdlib_handshake(server_ssl_context(ecdsa), context, session=first.client.session)

    assert second.error is None
    assert not second.client.session_reused


# -- client certificates (--client-ca): rule 7 ---------------------------------------------------


def make_client_leaf(issuer: Issued, common_name: str = "alice") -> Issued:
    """A client certificate (clientAuth) for ``common_name``, signed by ``issuer``."""
    key = ec_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(f"{common_name}@example.test")]),
            critical=False,
        )
        .sign(issuer.key, hashes.SHA256())
    )
    return Issued(cert, key)


@pytest.fixture(scope="module")
def client_ca() -> Issued:
    return make_ca("Policy Test Client CA", now=NOW)


def with_client_certificate(
    context: ssl.SSLContext, client: Issued, tmp_path: Path
) -> ssl.SSLContext:
    context.load_cert_chain(write_pem(tmp_path / "client.pem", client.cert, client.key))
    return context


@pytest.mark.parametrize(
    ("auth", "mode"), [("required", ssl.CERT_REQUIRED), ("optional", ssl.CERT_OPTIONAL)]
)
def test_client_ca_sets_the_verify_mode(
    ecdsa: LoadedCertificate, client_ca: Issued, auth: str, mode: ssl.VerifyMode
) -> None:
    """--client-ca asks for certificates, verified against that CA alone."""
    context = server_ssl_context(ecdsa, client_ca=client_ca.cert_pem, client_auth=auth)

    assert context.verify_mode == mode
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "Policy Test Client CA"),),)
    ]


def test_client_auth_must_be_a_mode(ecdsa: LoadedCertificate, client_ca: Issued) -> None:
    with pytest.raises(ValueError, match="required' or 'optional"):
        server_ssl_context(ecdsa, client_ca=client_ca.cert_pem, client_auth="maybe")


@pytest.mark.parametrize("versions", [TLS12, TLS13])
def test_required_refuses_a_client_without_a_certificate(
    ecdsa: LoadedCertificate,
    ca: Issued,
    client_ca: Issued,
    versions: tuple[ssl.TLSVersion, ssl.TLSVersion],
) -> None:
    """No certificate, no connection: the client gets an alert."""
    server = server_ssl_context(ecdsa, client_ca=client_ca.cert_pem, client_auth="required")

    with capturedLogs() as events:
        pair = stdlib_handshake(server, client_context(ca, versions=versions))

    assert pair.error is not None
    assert pair.server.peer_certificate_der() is None
    lines = [formatEvent(e) for e in events if e["log_level"] == LogLevel.info]
    assert lines == [
        "client certificate refused for 192.0.2.7 port 51000: "
        "no certificate sent, and --client-auth is required"
    ]


@pytest.mark.parametrize("versions", [TLS12, TLS13])
def test_a_certificate_from_another_ca_is_refused_even_when_optional(
    ecdsa: LoadedCertificate,
    ca: Issued,
    client_ca: Issued,
    tmp_path: Path,
    versions: tuple[ssl.TLSVersion, ssl.TLSVersion],
) -> None:
    server = server_ssl_context(ecdsa, client_ca=client_ca.cert_pem, client_auth="optional")
    stranger = make_client_leaf(make_ca("Someone Else", now=NOW))
    client = with_client_certificate(client_context(ca, versions=versions), stranger, tmp_path)

    with capturedLogs() as events:
        pair = stdlib_handshake(server, client)

    assert pair.error is not None
    [line] = [formatEvent(e) for e in events if e["log_level"] == LogLevel.info]
    assert "does not verify against --client-ca (unable to get local issuer" in line


@pytest.mark.parametrize("auth", ["required", "optional"])
@pytest.mark.parametrize("versions", [TLS12, TLS13])
def test_a_verified_client_certificate_is_exposed(  # noqa: PLR0917 (fixtures)
    ecdsa: LoadedCertificate,
    ca: Issued,
    client_ca: Issued,
    tmp_path: Path,
    auth: str,
    versions: tuple[ssl.TLSVersion, ssl.TLSVersion],
) -> None:
    server = server_ssl_context(ecdsa, client_ca=client_ca.cert_pem, client_auth=auth)
    alice = make_client_leaf(client_ca)
    client = with_client_certificate(client_context(ca, versions=versions), alice, tmp_path)

    pair = stdlib_handshake(server, client)

    assert pair.error is None
    assert pair.server.peer_certificate_der() == cert_der(alice.cert)


def test_optional_admits_a_client_without_a_certificate(
    ecdsa: LoadedCertificate, ca: Issued, client_ca: Issued
) -> None:
    server = server_ssl_context(ecdsa, client_ca=client_ca.cert_pem, client_auth="optional")

    pair = stdlib_handshake(server, client_context(ca))

    assert pair.error is None
    assert pair.server.peer_certificate_der() is None


def test_a_certificate_not_for_client_auth_is_refused(
    ecdsa: LoadedCertificate, ca: Issued, client_ca: Issued, tmp_path: Path
) -> None:
    """A server certificate (serverAuth only) from the client CA is no client certificate."""
    server = server_ssl_context(ecdsa, client_ca=client_ca.cert_pem, client_auth="required")
    server_only = make_leaf(client_ca, names=["x.example"], now=NOW)
    client = with_client_certificate(client_context(ca), server_only, tmp_path)

    with capturedLogs() as events:
        pair = stdlib_handshake(server, client)

    assert pair.error is not None
    [line] = [formatEvent(e) for e in events if e["log_level"] == LogLevel.info]
    assert "does not verify against --client-ca (unsuitable certificate purpose)" in line

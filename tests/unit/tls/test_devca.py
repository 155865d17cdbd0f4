"""tlsproxy.tls.devca: the development CA and leaf under certs/, made once and reused."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.certfactory import NOW, make_ca, make_leaf, write_pair
from tests.unit.tls.conftest import OpenSSL
from tests.unit.tls.test_memorytls import TLSPair
from tlsproxy.tls.certstore import CertificateError, load_certificate
from tlsproxy.tls.devca import (
    DevCertificates,
    ca_permits,
    ensure_dev_certificates,
    trust_instructions,
)
from tlsproxy.tls.policy import server_ssl_context


def read_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def certs_dir(tmp_path: Path) -> Path:
    return tmp_path / "certs"


@pytest.fixture
def made(certs_dir: Path) -> DevCertificates:
    """A first run with no extra hostnames."""
    return ensure_dev_certificates(certs_dir, [], now=NOW)


# --- first run -------------------------------------------------------------------------------


def test_first_run_creates_four_files_owner_only(certs_dir: Path, made: DevCertificates) -> None:
    """ca.pem, ca-key.pem, localhost.pem, localhost-key.pem; keys and the directory owner-only."""
    assert sorted(p.name for p in certs_dir.iterdir()) == [
        "ca-key.pem",
        "ca.pem",
        "localhost-key.pem",
        "localhost.pem",
    ]
    assert mode(certs_dir) == 0o700
    assert mode(certs_dir / "ca-key.pem") == 0o600
    assert mode(certs_dir / "localhost-key.pem") == 0o600
    assert mode(certs_dir / "ca.pem") == 0o644
    assert (made.ca_cert_path, made.cert_path, made.key_path) == (
        certs_dir / "ca.pem",
        certs_dir / "localhost.pem",
        certs_dir / "localhost-key.pem",
    )


def test_first_run_messages(certs_dir: Path, made: DevCertificates) -> None:
    """The messages say the CA was created and the leaf issued, for which names, until when."""
    expires = read_cert(made.cert_path).not_valid_after_utc
    assert made.messages == (
        f"created development CA {certs_dir / 'ca.pem'}",
        f"issued leaf {certs_dir / 'localhost.pem'} for localhost, 127.0.0.1, ::1 "
        f"(expires {expires:%Y-%m-%d})",
    )


def test_ca_certificate(made: DevCertificates) -> None:
    """The CA: ECDSA P-256, named for tlsproxy, CA:true pathlen 0, keyCertSign+cRLSign, 10 years."""
    ca = read_cert(made.ca_cert_path)
    common_name = ca.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value

    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert isinstance(common_name, str)
    assert common_name.startswith("tlsproxy development CA (")
    assert common_name.endswith(f", {NOW:%Y-%m-%d})")
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert (constraints.value.ca, constraints.value.path_length) == (True, 0)
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert not usage.digital_signature
    assert ca.not_valid_after_utc - NOW > timedelta(days=365 * 9)
    assert ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)


def test_ca_is_name_constrained_to_local_names(made: DevCertificates) -> None:
    """A critical NameConstraints allows localhost, .test, .internal, .local, .home.arpa,
    loopback and private addresses, and nothing public."""
    ca = read_cert(made.ca_cert_path)
    extension = ca.extensions.get_extension_for_class(x509.NameConstraints)

    assert extension.critical
    for name in [
        "localhost",
        "a.localhost",
        "app.test",
        "db.internal",
        "printer.local",
        "nas.home.arpa",
        "127.0.0.1",
        "127.1.2.3",
        "::1",
        "10.1.2.3",
        "192.168.1.20",
        "172.20.0.5",
        "fd00::1",
    ]:
        assert ca_permits(ca, name), name
    for name in ["example.com", "localhost.example.com", "test.example", "8.8.8.8", "2001:db8::1"]:
        assert not ca_permits(ca, name), name


def test_leaf_certificate(made: DevCertificates) -> None:
    """The leaf: P-256, SAN localhost/127.0.0.1/::1, serverAuth, <= 398 days, AKI = CA's SKI."""
    ca = read_cert(made.ca_cert_path)
    leaf = read_cert(made.cert_path)

    leaf.verify_directly_issued_by(ca)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= timedelta(days=398)
    assert leaf.not_valid_before_utc <= NOW
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    assert leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)


def test_leaf_loads_cleanly_through_the_certstore(made: DevCertificates) -> None:
    """The dev leaf passes every startup check with no warnings."""
    loaded = load_certificate(made.cert_path, made.key_path, now=NOW)

    assert loaded.warnings == ()
    assert loaded.chain == ()


def test_hostnames_go_into_the_leaf_dns_and_ip(certs_dir: Path) -> None:
    """--hostname names are added: DNS names as DNS SANs, IP literals (normalised) as IP SANs."""
    made = ensure_dev_certificates(
        certs_dir, ["MyApp.test.", "192.168.1.5", "fd00:0::7", "localhost"], now=NOW
    )

    loaded = load_certificate(made.cert_path, made.key_path, now=NOW)
    assert loaded.names == ("localhost", "myapp.test", "127.0.0.1", "::1", "192.168.1.5", "fd00::7")
    assert "for localhost, 127.0.0.1, ::1, myapp.test, 192.168.1.5, fd00::7 " in made.messages[1]


def test_internationalised_hostname_goes_in_as_a_label(certs_dir: Path) -> None:
    """A Unicode hostname is written in its xn-- form."""
    made = ensure_dev_certificates(certs_dir, ["café.test"], now=NOW)

    assert "xn--caf-dma.test" in load_certificate(made.cert_path, made.key_path, now=NOW).names


@pytest.mark.parametrize("bad", ["https://app.test", "app.test:8443", "two words", "-x.test"])
def test_hostname_that_is_not_a_name_is_refused(certs_dir: Path, bad: str) -> None:
    """A URL, host:port or garbage given as --hostname is refused with what to give instead."""
    with pytest.raises(CertificateError, match="is not a DNS name or IP address"):
        ensure_dev_certificates(certs_dir, [bad], now=NOW)


def test_hostnames_at_creation_extend_the_name_constraints(certs_dir: Path) -> None:
    """Names outside the local set given when the CA is made are permitted by that CA."""
    made = ensure_dev_certificates(certs_dir, ["dev.example.com", "203.0.113.9"], now=NOW)
    ca = read_cert(made.ca_cert_path)

    assert ca_permits(ca, "dev.example.com")
    assert ca_permits(ca, "api.dev.example.com")
    assert ca_permits(ca, "203.0.113.9")
    assert not ca_permits(ca, "example.com")
    assert not ca_permits(ca, "203.0.113.10")


def test_no_temporary_files_are_left(certs_dir: Path, made: DevCertificates) -> None:
    """Atomic writes clean up after themselves."""
    assert not [p for p in certs_dir.iterdir() if p.name.endswith(".tmp")]


def test_existing_certs_dir_keeps_its_files(tmp_path: Path) -> None:
    """An existing certs dir (with README and .gitignore) is used as it is."""
    certs_dir = tmp_path / "certs"
    certs_dir.mkdir()
    (certs_dir / "README.md").write_text("hello\n")

    ensure_dev_certificates(certs_dir, [], now=NOW)

    assert (certs_dir / "README.md").read_text() == "hello\n"
    assert (certs_dir / "ca.pem").exists()


# --- real clients trust it -------------------------------------------------------------------


def test_openssl_verifies_the_leaf_for_localhost_and_loopback(
    tmp_path: Path, openssl: OpenSSL
) -> None:
    """`openssl verify -CAfile ca.pem` accepts the leaf for localhost, 127.0.0.1 and ::1."""
    made = ensure_dev_certificates(tmp_path / "certs", [], now=datetime.now(UTC))
    for check in (
        ["-verify_hostname", "localhost"],
        ["-verify_ip", "127.0.0.1"],
        ["-verify_ip", "::1"],
    ):
        out = openssl("verify", "-CAfile", str(made.ca_cert_path), *check, str(made.cert_path))
        assert out.strip().endswith(b": OK")


def test_name_constraints_stop_a_leaf_for_a_public_name(tmp_path: Path, openssl: OpenSSL) -> None:
    """A leaf for example.com signed with the dev CA key is rejected by openssl: the CA's
    constraints make a stolen ca-key.pem useless against public sites."""
    now = datetime.now(UTC)
    made = ensure_dev_certificates(tmp_path / "certs", [], now=now)
    ca_key = serialization.load_pem_private_key(
        (tmp_path / "certs" / "ca-key.pem").read_bytes(), password=None
    )
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = read_cert(made.ca_cert_path)
    rogue = make_leaf(names=["example.com"], now=now, key=None)
    signed = (
        x509.CertificateBuilder()
        .subject_name(rogue.cert.subject)
        .issuer_name(ca_cert.subject)
        .public_key(rogue.cert.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(
            rogue.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value,
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (tmp_path / "rogue.pem").write_bytes(signed.public_bytes(serialization.Encoding.PEM))

    with pytest.raises(Exception, match="returned non-zero exit status"):
        openssl("verify", "-CAfile", str(made.ca_cert_path), str(tmp_path / "rogue.pem"))


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "::1", "app.test"])
def test_python_client_trusting_ca_pem_verifies_the_served_leaf(tmp_path: Path, name: str) -> None:
    """A Python client given only ca.pem completes a verified handshake for each leaf name."""
    now = datetime.now(UTC)
    made = ensure_dev_certificates(tmp_path / "certs", ["app.test"], now=now)
    server = server_ssl_context(load_certificate(made.cert_path, made.key_path, now=now))
    context = ssl.create_default_context(cafile=str(made.ca_cert_path))

    pair = TLSPair.connect(server, context, server_hostname=name)
    pair.pump()

    assert pair.error is None
    assert pair.client.version() is not None  # the handshake completed


# --- later runs ------------------------------------------------------------------------------


def test_second_run_reuses_everything(certs_dir: Path, made: DevCertificates) -> None:
    """Nothing changes on the second run, and the messages say "reused"."""
    before = {p.name: p.read_bytes() for p in certs_dir.iterdir()}

    again = ensure_dev_certificates(certs_dir, [], now=NOW + timedelta(days=1))

    assert {p.name: p.read_bytes() for p in certs_dir.iterdir()} == before
    assert again.messages[0].startswith(f"reused development CA {certs_dir / 'ca.pem'} (expires ")
    assert again.messages[1].startswith(
        f"reused leaf {certs_dir / 'localhost.pem'} for localhost, 127.0.0.1, ::1 (expires "
    )


def test_new_hostname_renews_the_leaf_with_the_same_ca(
    certs_dir: Path, made: DevCertificates
) -> None:
    """A name the leaf does not cover gets a new leaf from the same CA."""
    ca_before = made.ca_cert_path.read_bytes()

    again = ensure_dev_certificates(certs_dir, ["app.test"], now=NOW)

    assert made.ca_cert_path.read_bytes() == ca_before
    assert again.messages[1].startswith(f"renewed leaf {certs_dir / 'localhost.pem'} for ")
    assert again.messages[1].endswith("the previous one does not cover app.test")
    assert "app.test" in load_certificate(again.cert_path, again.key_path, now=NOW).names


def test_reuse_message_lists_the_names_the_leaf_has(certs_dir: Path) -> None:
    """A leaf kept because it covers more than asked reports all the names it carries."""
    ensure_dev_certificates(certs_dir, ["app.test"], now=NOW)

    again = ensure_dev_certificates(certs_dir, [], now=NOW)

    assert again.messages[1].startswith(
        f"reused leaf {certs_dir / 'localhost.pem'} for localhost, 127.0.0.1, ::1, app.test ("
    )


def test_leaf_is_renewed_30_days_before_expiry(certs_dir: Path, made: DevCertificates) -> None:
    """Within 30 days of the leaf's expiry a new leaf is issued; 31 days before, it is reused."""
    expires = read_cert(made.cert_path).not_valid_after_utc

    kept = ensure_dev_certificates(certs_dir, [], now=expires - timedelta(days=31))
    renewed = ensure_dev_certificates(certs_dir, [], now=expires - timedelta(days=29))

    assert kept.messages[1].startswith("reused leaf")
    assert renewed.messages[1].startswith("renewed leaf")
    assert f"the previous one expires on {expires:%Y-%m-%d}" in renewed.messages[1]
    assert read_cert(made.cert_path).not_valid_after_utc > expires


def test_leaf_from_another_ca_is_replaced(certs_dir: Path, made: DevCertificates) -> None:
    """A leaf not signed by the current CA (say, copied from elsewhere) is replaced."""
    write_pair(
        certs_dir,
        make_leaf(make_ca("Elsewhere")),
        cert_name="localhost.pem",
        key_name="localhost-key.pem",
    )

    again = ensure_dev_certificates(certs_dir, [], now=NOW)

    assert again.messages[1].endswith("the previous one was not signed by the current CA ca.pem")
    read_cert(made.cert_path).verify_directly_issued_by(read_cert(made.ca_cert_path))


def test_corrupt_leaf_is_replaced(certs_dir: Path, made: DevCertificates) -> None:
    """A broken leaf file is replaced, saying why."""
    made.cert_path.write_text("garbage\n")

    again = ensure_dev_certificates(certs_dir, [], now=NOW)

    assert "the previous one cannot be used (" in again.messages[1]
    assert load_certificate(made.cert_path, made.key_path, now=NOW).warnings == ()


def test_ca_without_its_key_is_never_replaced(certs_dir: Path, made: DevCertificates) -> None:
    """ca.pem without ca-key.pem is an error that says to move the directory away; ca.pem stays."""
    ca_before = made.ca_cert_path.read_bytes()
    (certs_dir / "ca-key.pem").unlink()

    with pytest.raises(CertificateError) as caught:
        ensure_dev_certificates(certs_dir, [], now=NOW)

    message = str(caught.value)
    assert "\n" not in message
    assert "never replaces a CA" in message
    assert f"mv {certs_dir} {certs_dir}.old" in message
    assert made.ca_cert_path.read_bytes() == ca_before
    assert not (certs_dir / "ca-key.pem").exists()


def test_corrupt_ca_key_is_never_replaced(certs_dir: Path, made: DevCertificates) -> None:
    """A corrupt ca-key.pem is an error, and neither CA file is touched."""
    (certs_dir / "ca-key.pem").write_text(
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    )
    ca_before = made.ca_cert_path.read_bytes()

    with pytest.raises(CertificateError, match="cannot be used") as caught:
        ensure_dev_certificates(certs_dir, [], now=NOW)

    assert f"mv {certs_dir}" in str(caught.value)
    assert made.ca_cert_path.read_bytes() == ca_before


def test_ca_key_of_another_ca_is_refused(certs_dir: Path, made: DevCertificates) -> None:
    """A ca-key.pem that does not belong to ca.pem is an error, not a new CA."""
    (certs_dir / "ca-key.pem").write_bytes(make_ca().key_pem)

    with pytest.raises(CertificateError, match="does not match"):
        ensure_dev_certificates(certs_dir, [], now=NOW)


def test_ca_key_without_ca_certificate_is_refused(certs_dir: Path, made: DevCertificates) -> None:
    """ca-key.pem alone is not overwritten by a new CA."""
    made.ca_cert_path.unlink()
    key_before = (certs_dir / "ca-key.pem").read_bytes()

    with pytest.raises(CertificateError, match=r"certificate .* is missing"):
        ensure_dev_certificates(certs_dir, [], now=NOW)

    assert (certs_dir / "ca-key.pem").read_bytes() == key_before


def test_ca_close_to_expiry_is_an_error(certs_dir: Path, made: DevCertificates) -> None:
    """A CA within 30 days of expiry asks to be replaced by hand rather than rolled silently."""
    expires = read_cert(made.ca_cert_path).not_valid_after_utc

    with pytest.raises(CertificateError, match="expires on"):
        ensure_dev_certificates(certs_dir, [], now=expires - timedelta(days=10))


def test_hostname_outside_the_ca_constraints_is_refused(
    certs_dir: Path, made: DevCertificates
) -> None:
    """A later --hostname the CA may not sign is refused with how to recreate the CA."""
    leaf_before = made.cert_path.read_bytes()

    with pytest.raises(CertificateError) as caught:
        ensure_dev_certificates(certs_dir, ["app.example.com"], now=NOW)

    message = str(caught.value)
    assert "app.example.com is outside the names the development CA" in message
    assert "--hostname app.example.com" in message
    assert made.cert_path.read_bytes() == leaf_before


def test_naive_now_is_refused(certs_dir: Path) -> None:
    """`now` must be timezone-aware."""
    with pytest.raises(ValueError, match="timezone-aware"):
        ensure_dev_certificates(certs_dir, [], now=datetime(2026, 1, 1))


# --- trust instructions ----------------------------------------------------------------------


def test_trust_instructions_cover_the_usual_clients(tmp_path: Path) -> None:
    """`tlsproxy trust` first; then curl, Python, Node, the Debian store and NSS browsers."""
    ca = tmp_path / "certs" / "ca.pem"

    lines = trust_instructions(ca, url="https://localhost:8443/")

    assert lines[0].endswith(f": python -m tlsproxy trust --certs-dir {ca.parent}")
    text = "\n".join(lines)
    assert f"curl --cacert {ca} https://localhost:8443/" in text
    assert f"SSL_CERT_FILE={ca}" in text
    assert f"REQUESTS_CA_BUNDLE={ca}" in text
    assert f"NODE_EXTRA_CA_CERTS={ca}" in text
    assert (
        f"sudo cp {ca} /usr/local/share/ca-certificates/tlsproxy-dev-ca.crt "
        "&& sudo update-ca-certificates"
    ) in text
    assert f"certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n tlsproxy-dev-ca -i {ca}" in text


def test_trust_instructions_use_an_absolute_quoted_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative certs dir becomes absolute (env vars outlive the cwd); spaces are quoted."""
    (tmp_path / "my certs").mkdir()
    monkeypatch.chdir(tmp_path)

    lines = trust_instructions(Path("my certs/ca.pem"))

    assert lines[0].endswith(f"--certs-dir '{tmp_path}/my certs'")
    assert f"--cacert '{tmp_path}/my certs/ca.pem'" in lines[1]
    assert all("\n" not in line for line in lines)

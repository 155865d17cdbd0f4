"""tlsproxy.tls.certstore: loading PEM pairs, and one clear line for everything wrong with them."""

from __future__ import annotations

import re
import shlex
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.certfactory import (
    DAY,
    NOW,
    cert_der,
    ec_key,
    key_der,
    key_pem,
    make_ca,
    make_csr,
    make_leaf,
    rsa_key,
    write_pair,
    write_pem,
)
from tests.unit.tls.conftest import OpenSSL
from tlsproxy.tls.certstore import (
    CertificateError,
    LoadedCertificate,
    load_certificate,
    names_missing,
)


def refusal(cert: Path, key: Path | None = None, **kwargs: object) -> str:
    """The CertificateError message for loading ``cert``/``key``, checked to be one line."""
    with pytest.raises(CertificateError) as caught:
        load_certificate(cert, key, now=kwargs.pop("now", NOW), **kwargs)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- the openssl recipes users actually run -------------------------------------------------


def test_seed_openssl_recipe_loads_with_a_san_warning(tmp_path: Path, openssl: OpenSSL) -> None:
    """`openssl genrsa 2048` + `openssl req -x509 -new -subj /CN=localhost` serves; SAN warned."""
    (tmp_path / "key.pem").write_bytes(openssl("genrsa", "2048"))
    (tmp_path / "key-cert.pem").write_bytes(
        openssl("req", "-x509", "-new", "-key", "key.pem", "-subj", "/CN=localhost")
    )

    loaded = load_certificate(
        tmp_path / "key-cert.pem", tmp_path / "key.pem", now=datetime.now(UTC)
    )

    assert loaded.leaf.subject.rfc4514_string() == "CN=localhost"
    assert loaded.names == ()
    assert any(
        "without subjectAltName" in w and "-addext subjectAltName=" in w for w in loaded.warnings
    )
    assert any("self-signed" in w for w in loaded.warnings)


def test_seed_recipe_with_1024_bit_key_is_refused_with_the_fix(
    tmp_path: Path, openssl: OpenSSL
) -> None:
    """`openssl genrsa 1024` is refused, and the message gives the commands for a good key."""
    (tmp_path / "key.pem").write_bytes(openssl("genrsa", "1024"))
    (tmp_path / "key-cert.pem").write_bytes(
        openssl("req", "-x509", "-new", "-key", "key.pem", "-subj", "/CN=localhost")
    )

    message = refusal(tmp_path / "key-cert.pem", tmp_path / "key.pem", now=datetime.now(UTC))

    assert "1024 bits" in message
    assert str(tmp_path / "key.pem") in message
    assert "`openssl genrsa -out key.pem 2048`" in message
    assert "`openssl ecparam -genkey -name prime256v1 -noout -out key.pem`" in message
    assert "-addext subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" in message


def test_the_commands_in_the_weak_key_message_make_a_pair_that_loads_cleanly(
    tmp_path: Path, openssl: OpenSSL
) -> None:
    """Running the fix the weak-key message suggests (ECDSA variant) gives a pair with no warnings
    but the self-signed note."""
    message = refusal(*write_pair(tmp_path, make_leaf(key=rsa_key(1024))))
    commands = re.findall(r"`(openssl [^`]+)`", message)
    ecdsa = next(c for c in commands if "ecparam" in c)
    req = next(c for c in commands if "req -x509" in c)
    for command in (ecdsa, req):
        openssl(*shlex.split(command)[1:])

    loaded = load_certificate(tmp_path / "cert.pem", tmp_path / "key.pem", now=datetime.now(UTC))

    assert set(loaded.names) == {"localhost", "127.0.0.1", "::1"}
    assert [w for w in loaded.warnings if "self-signed" not in w] == []


def test_fingerprint_matches_openssl(tmp_path: Path, openssl: OpenSSL) -> None:
    """fingerprint_sha256 is the colon-separated hex that `openssl x509 -fingerprint` shows."""
    cert_path, key_path = write_pair(tmp_path, make_leaf())

    loaded = load_certificate(cert_path, key_path, now=NOW)

    shown = openssl("x509", "-in", "cert.pem", "-noout", "-fingerprint", "-sha256").decode()
    assert shown.strip().split("=", 1)[1] == loaded.fingerprint_sha256


def test_ecparam_key_with_parameters_block_loads(tmp_path: Path, openssl: OpenSSL) -> None:
    """`openssl ecparam -genkey` without -noout (an EC PARAMETERS block first) still loads."""
    (tmp_path / "key.pem").write_bytes(openssl("ecparam", "-genkey", "-name", "prime256v1"))
    openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        "key.pem",
        "-out",
        "cert.pem",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost",
    )

    loaded = load_certificate(tmp_path / "cert.pem", tmp_path / "key.pem", now=datetime.now(UTC))

    assert isinstance(loaded.key, ec.EllipticCurvePrivateKey)


# --- shapes of files that load ---------------------------------------------------------------


def test_leaf_and_key_in_separate_files(tmp_path: Path) -> None:
    """A leaf in --cert and its key in --key loads, with no chain and the key's path recorded."""
    leaf = make_leaf(make_ca())
    cert_path, key_path = write_pair(tmp_path, leaf)

    loaded = load_certificate(cert_path, key_path, now=NOW)

    assert loaded.leaf == leaf.cert
    assert loaded.chain == ()
    assert loaded.key_path == key_path
    assert loaded.warnings == ()


@pytest.mark.parametrize("order", ["cert-then-key", "key-then-cert"])
def test_key_in_the_certificate_file(tmp_path: Path, order: str) -> None:
    """With no key path, the key is found in the certificate file, before or after the certs."""
    ca = make_ca()
    leaf = make_leaf(ca)
    parts = (
        [leaf.cert, ca.cert, leaf.key]
        if order == "cert-then-key"
        else [leaf.key, leaf.cert, ca.cert]
    )
    path = write_pem(tmp_path / "both.pem", *parts)

    loaded = load_certificate(path, now=NOW)

    assert loaded.key_path == path
    assert loaded.chain == (ca.cert,)


def test_full_chain_in_order_loads(tmp_path: Path) -> None:
    """leaf, intermediate, root loads and keeps the chain in file order."""
    root = make_ca("Root")
    intermediate = make_ca("Intermediate", issuer=root)
    leaf = make_leaf(intermediate)

    loaded = load_certificate(*write_pair(tmp_path, leaf, intermediate.cert, root.cert), now=NOW)

    assert loaded.chain == (intermediate.cert, root.cert)


@pytest.mark.parametrize("traditional", [False, True])
@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_pkcs8_and_traditional_keys_load(tmp_path: Path, kind: str, traditional: bool) -> None:
    """BEGIN PRIVATE KEY and BEGIN RSA/EC PRIVATE KEY both load."""
    key = rsa_key(2048) if kind == "rsa" else ec_key()
    leaf = make_leaf(key=key)
    cert_path = write_pem(tmp_path / "cert.pem", leaf.cert)
    key_path = write_pem(tmp_path / "key.pem", key_pem(key, traditional=traditional))

    loaded = load_certificate(cert_path, key_path, now=NOW)

    assert loaded.key.public_key() == key.public_key()


def test_crlf_line_endings_load(tmp_path: Path) -> None:
    """PEM files saved with Windows line endings load."""
    leaf = make_leaf()
    cert_path = write_pem(tmp_path / "cert.pem", leaf.cert_pem.replace(b"\n", b"\r\n"))
    key_path = write_pem(tmp_path / "key.pem", leaf.key_pem.replace(b"\n", b"\r\n"))

    assert load_certificate(cert_path, key_path, now=NOW).leaf == leaf.cert


@pytest.mark.parametrize("traditional", [False, True])
def test_encrypted_key_with_the_right_passphrase_loads(tmp_path: Path, traditional: bool) -> None:
    """An encrypted key (PKCS#8 or Proc-Type: 4,ENCRYPTED) loads with its passphrase."""
    leaf = make_leaf(key=rsa_key(2048))
    cert_path = write_pem(tmp_path / "cert.pem", leaf.cert)
    key_path = write_pem(
        tmp_path / "key.pem", key_pem(leaf.key, passphrase=b"s3cret", traditional=traditional)
    )

    loaded = load_certificate(cert_path, key_path, passphrase=b"s3cret", now=NOW)

    assert loaded.key.public_key() == leaf.key.public_key()


# --- errors ----------------------------------------------------------------------------------


def test_missing_certificate_file(tmp_path: Path) -> None:
    """A missing --cert file is named, with the flag to check."""
    message = refusal(tmp_path / "nope.pem", tmp_path / "key.pem")

    assert f"certificate file {tmp_path / 'nope.pem'} does not exist" in message
    assert "--cert" in message


def test_missing_key_file(tmp_path: Path) -> None:
    """A missing --key file is named, with the flag to check."""
    cert_path, _ = write_pair(tmp_path, make_leaf())

    message = refusal(cert_path, tmp_path / "nope.pem")

    assert f"key file {tmp_path / 'nope.pem'} does not exist" in message
    assert "--key" in message


def test_unreadable_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key file the user cannot read says 'permission denied' and how to fix ownership/mode.

    (Tests may run as root, who reads anything, so the denial is simulated.)
    """
    cert_path, key_path = write_pair(tmp_path, make_leaf())
    real_read_bytes = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == key_path:
            raise PermissionError(13, "Permission denied")
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)

    message = refusal(cert_path, key_path)

    assert f"cannot read key file {key_path}: permission denied" in message
    assert f"chmod 600 {key_path}" in message


def test_directory_instead_of_file(tmp_path: Path) -> None:
    """A directory given as --cert is named as a directory."""
    assert "is a directory" in refusal(tmp_path, None)


def test_empty_certificate_file(tmp_path: Path) -> None:
    """An empty file says it is empty."""
    (tmp_path / "cert.pem").write_bytes(b"")

    assert "is empty" in refusal(tmp_path / "cert.pem")


def test_der_certificate_gets_the_conversion_command(tmp_path: Path) -> None:
    """A DER certificate is recognised and the openssl command to convert it is given."""
    leaf = make_leaf()
    der = tmp_path / "cert.der"
    der.write_bytes(cert_der(leaf.cert))
    _, key_path = write_pair(tmp_path, leaf)

    message = refusal(der, key_path)

    assert "DER (binary) certificate, not PEM" in message
    assert f"`openssl x509 -inform der -in {der} -out {tmp_path / 'cert.pem'}`" in message


def test_der_key_gets_the_conversion_command(tmp_path: Path) -> None:
    """A DER private key is recognised and the openssl command to convert it is given."""
    leaf = make_leaf()
    cert_path, _ = write_pair(tmp_path, leaf)
    der = tmp_path / "key.der"
    der.write_bytes(key_der(leaf.key))

    message = refusal(cert_path, der)

    assert "DER (binary) private key" in message
    assert f"openssl pkey -inform der -in {der}" in message


def test_der_conversion_command_works(tmp_path: Path, openssl: OpenSSL) -> None:
    """The suggested conversion of a DER certificate produces a file that loads."""
    leaf = make_leaf()
    (tmp_path / "cert.der").write_bytes(cert_der(leaf.cert))
    write_pem(tmp_path / "key.pem", leaf.key)
    message = refusal(tmp_path / "cert.der", tmp_path / "key.pem")
    command = re.search(r"`(openssl x509 [^`]+)`", message)
    assert command is not None

    openssl(*shlex.split(command.group(1))[1:])

    assert load_certificate(tmp_path / "cert.pem", tmp_path / "key.pem", now=NOW).leaf == leaf.cert


def test_text_that_is_not_pem(tmp_path: Path) -> None:
    """A text file without any BEGIN line is called not PEM."""
    path = tmp_path / "cert.pem"
    path.write_text("hello, I am not a certificate\n")

    assert "is not a PEM file" in refusal(path)


def test_csr_given_as_certificate(tmp_path: Path) -> None:
    """A CSR in --cert is named as a CSR, with how to get a certificate instead."""
    key = ec_key()
    csr = write_pem(tmp_path / "req.pem", make_csr(key))
    key_path = write_pem(tmp_path / "key.pem", key)

    message = refusal(csr, key_path)

    assert "certificate signing request (CSR), not a certificate" in message
    assert "have a CA sign it" in message
    assert "openssl req -x509 -new -key key.pem" in message


def test_key_and_certificate_swapped(tmp_path: Path) -> None:
    """A key in --cert and a certificate in --key is called swapped, with the right flags."""
    cert_path, key_path = write_pair(tmp_path, make_leaf())

    message = refusal(key_path, cert_path)

    assert "swapped" in message
    assert f"--cert {cert_path} --key {key_path}" in message


def test_key_file_holding_a_certificate(tmp_path: Path) -> None:
    """A certificate given as --key (while --cert is right) is named as not a private key."""
    leaf = make_leaf()
    cert_path, _ = write_pair(tmp_path, leaf)
    other = write_pem(tmp_path / "other.pem", leaf.cert)

    message = refusal(cert_path, other)

    assert f"{other} holds a certificate, not a private key" in message
    assert "--key" in message


def test_no_private_key_in_the_certificate_file(tmp_path: Path) -> None:
    """Without --key and without a key in the cert file, the user is told to pass --key."""
    cert_path, _ = write_pair(tmp_path, make_leaf())

    message = refusal(cert_path)

    assert f"no private key found in {cert_path}" in message
    assert "--key" in message


def test_public_key_given_as_key(tmp_path: Path) -> None:
    """A public key in --key is reported as no private key, naming what was found."""
    leaf = make_leaf()
    cert_path, _ = write_pair(tmp_path, leaf)
    public = write_pem(
        tmp_path / "pub.pem",
        leaf.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )

    message = refusal(cert_path, public)

    assert f"no private key found in {public}" in message
    assert "PUBLIC KEY" in message


def test_certificate_file_with_only_a_key(tmp_path: Path) -> None:
    """A --cert file that holds only a key says so and how to pass both."""
    path = write_pem(tmp_path / "key.pem", ec_key())

    message = refusal(path)

    assert "holds a private key but no certificate" in message
    assert "--cert" in message


@pytest.mark.parametrize("traditional", [False, True])
def test_encrypted_key_without_passphrase(tmp_path: Path, traditional: bool) -> None:
    """An encrypted key without a passphrase offers --key-passphrase-file."""
    leaf = make_leaf(key=rsa_key(2048))
    cert_path = write_pem(tmp_path / "cert.pem", leaf.cert)
    key_path = write_pem(
        tmp_path / "key.pem", key_pem(leaf.key, passphrase=b"s3cret", traditional=traditional)
    )

    message = refusal(cert_path, key_path)

    assert f"the private key in {key_path} is encrypted" in message
    assert "--key-passphrase-file" in message


def test_encrypted_key_with_wrong_passphrase(tmp_path: Path) -> None:
    """A wrong passphrase is called a wrong passphrase."""
    leaf = make_leaf()
    cert_path = write_pem(tmp_path / "cert.pem", leaf.cert)
    key_path = write_pem(tmp_path / "key.pem", key_pem(leaf.key, passphrase=b"s3cret"))

    message = refusal(cert_path, key_path, passphrase=b"guess")

    assert "wrong passphrase" in message
    assert "--key-passphrase-file" in message


def test_key_that_does_not_match(tmp_path: Path) -> None:
    """A key from another pair is refused: the public keys differ."""
    cert_path, _ = write_pair(tmp_path, make_leaf())
    other_key = write_pem(tmp_path / "other-key.pem", ec_key())

    message = refusal(cert_path, other_key)

    assert (
        f"the private key in {other_key} does not match the certificate in {cert_path}" in message
    )
    assert "public keys differ" in message


def test_rsa_1024_key_is_refused(tmp_path: Path) -> None:
    """An RSA key under 2048 bits is refused with how to make a good one."""
    cert_path, key_path = write_pair(tmp_path, make_leaf(key=rsa_key(1024)))

    message = refusal(cert_path, key_path)

    assert "RSA key" in message
    assert "1024 bits" in message
    assert "openssl genrsa -out key.pem 2048" in message


def test_small_ec_curve_is_refused(tmp_path: Path) -> None:
    """An EC key on a curve under 256 bits (P-192) is refused like a weak RSA key."""
    cert_path, key_path = write_pair(tmp_path, make_leaf(key=ec_key(ec.SECP192R1())))

    message = refusal(cert_path, key_path)

    assert "192 bits" in message
    assert "prime256v1" in message


def test_expired_certificate(tmp_path: Path) -> None:
    """An expired certificate is refused with its expiry date and the current time."""
    leaf = make_leaf(not_before=NOW - 100 * DAY, not_after=NOW - 2 * DAY)

    message = refusal(*write_pair(tmp_path, leaf))

    expected = (NOW - 2 * DAY).strftime("%Y-%m-%d %H:%M")
    assert f"expired on {expected} UTC" in message
    assert f"now {NOW:%Y-%m-%d %H:%M} UTC" in message
    assert "openssl req -x509" in message


def test_not_yet_valid_certificate(tmp_path: Path) -> None:
    """A certificate from the future is refused with its start date and a hint about the clock."""
    leaf = make_leaf(not_before=NOW + 3 * DAY, not_after=NOW + 90 * DAY)

    message = refusal(*write_pair(tmp_path, leaf))

    assert f"not valid before {NOW + 3 * DAY:%Y-%m-%d %H:%M} UTC" in message
    assert "clock" in message


def test_chain_out_of_order_says_the_right_order(tmp_path: Path) -> None:
    """leaf, root, intermediate is refused, and the message gives the order that works."""
    root = make_ca("Root")
    intermediate = make_ca("Intermediate", issuer=root)
    leaf = make_leaf(intermediate)

    message = refusal(*write_pair(tmp_path, leaf, root.cert, intermediate.cert))

    assert "out of order" in message
    assert "certificate #2 (CN=Root) did not issue #1" in message
    assert "reorder it as #1, #3, #2" in message


def test_leaf_not_first(tmp_path: Path) -> None:
    """An intermediate before the leaf is refused: the leaf must come first."""
    ca = make_ca("Intermediate")
    leaf = make_leaf(ca, common_name="leaf.test")
    cert_path = write_pem(tmp_path / "cert.pem", ca.cert, leaf.cert)
    key_path = write_pem(tmp_path / "key.pem", leaf.key)

    message = refusal(cert_path, key_path)

    assert "out of order" in message
    assert "(CN=leaf.test) is #2 of 2" in message
    assert "leaf first" in message


def test_chain_with_a_stranger_certificate(tmp_path: Path) -> None:
    """A certificate from another chain is refused with the advice to remove it."""
    leaf = make_leaf(make_ca("Real CA"))
    stranger = make_ca("Other CA")

    message = refusal(*write_pair(tmp_path, leaf, stranger.cert))

    assert "out of order" in message
    assert "remove certificates that belong to another chain" in message


def test_chain_with_matching_names_but_wrong_signature(tmp_path: Path) -> None:
    """A same-named CA with another key did not issue the leaf: the signature is checked."""
    leaf = make_leaf(make_ca("Same Name"))
    impostor = make_ca("Same Name")

    message = refusal(*write_pair(tmp_path, leaf, impostor.cert))

    assert "out of order" in message


# --- warnings --------------------------------------------------------------------------------


def test_no_subject_alt_name_warns(tmp_path: Path) -> None:
    """A certificate without subjectAltName loads with a warning on how to add one."""
    loaded = load_certificate(*write_pair(tmp_path, make_leaf(make_ca(), san=False)), now=NOW)

    assert len(loaded.warnings) == 1
    assert "browsers reject a certificate without subjectAltName" in loaded.warnings[0]
    assert "-addext subjectAltName=" in loaded.warnings[0]


def test_key_readable_by_others_warns(tmp_path: Path) -> None:
    """A key file with mode 0644 warns and suggests chmod 600."""
    cert_path, key_path = write_pair(tmp_path, make_leaf(make_ca()))
    key_path.chmod(0o644)

    loaded = load_certificate(cert_path, key_path, now=NOW)

    assert loaded.warnings == (
        f"key file {key_path} can be read by group or others (mode 0644); "
        f"restrict it with `chmod 600 {key_path}`",
    )


def test_expiry_within_14_days_warns(tmp_path: Path) -> None:
    """A certificate expiring in 13 days loads with a warning; one in 15 days does not warn."""
    ca = make_ca()
    soon = load_certificate(*write_pair(tmp_path, make_leaf(ca, not_after=NOW + 13 * DAY)), now=NOW)
    later = load_certificate(
        *write_pair(tmp_path, make_leaf(ca, not_after=NOW + 15 * DAY)), now=NOW
    )

    assert [w for w in soon.warnings if "expires soon" in w] != []
    assert later.warnings == ()


def test_self_signed_leaf_warns(tmp_path: Path) -> None:
    """A self-signed leaf loads with a note that clients must be told to trust it."""
    cert_path, key_path = write_pair(tmp_path, make_leaf())

    loaded = load_certificate(cert_path, key_path, now=NOW)

    assert loaded.warnings == (
        "the certificate is self-signed: clients must be told to trust it "
        f"(e.g. `curl --cacert {cert_path}`, or add it to their trust store)",
    )


def test_expired_chain_certificate_only_warns(tmp_path: Path) -> None:
    """An expired certificate later in the chain (an old cross-sign) is a warning, not an error."""
    old_root = make_ca("Old Root", now=NOW - 400 * DAY, days=100)
    leaf = make_leaf(make_ca("Old Root", key=old_root.key))

    loaded = load_certificate(*write_pair(tmp_path, leaf, old_root.cert), now=NOW)

    assert any("chain certificate #2 (CN=Old Root) expired" in w for w in loaded.warnings)


def test_unneeded_passphrase_warns(tmp_path: Path) -> None:
    """A passphrase given for an unencrypted key is pointed out."""
    cert_path, key_path = write_pair(tmp_path, make_leaf(make_ca()))

    loaded = load_certificate(cert_path, key_path, passphrase=b"x", now=NOW)

    assert loaded.warnings == (
        f"a passphrase was given but the key in {key_path} is not encrypted",
    )


# --- what LoadedCertificate says -------------------------------------------------------------


def test_names_expiry_and_description(tmp_path: Path) -> None:
    """names lists DNS then IP SANs; not_after and describe() give what the banner prints."""
    leaf = make_leaf(make_ca("Dev CA"), names=["localhost", "::1", "app.test", "127.0.0.1"])
    cert_path, key_path = write_pair(tmp_path, leaf)

    loaded = load_certificate(cert_path, key_path, now=NOW)

    assert loaded.names == ("localhost", "app.test", "::1", "127.0.0.1")
    assert loaded.not_after == NOW + 90 * DAY
    assert loaded.describe() == [
        f"certificate {cert_path}, key {key_path}",
        "names: localhost, app.test, ::1, 127.0.0.1",
        "subject: CN=localhost; issuer: CN=Dev CA",
        f"valid: {NOW - DAY:%Y-%m-%d} to {NOW + 90 * DAY:%Y-%m-%d} (UTC)",
        f"sha256 fingerprint: {loaded.fingerprint_sha256}",
    ]
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", loaded.fingerprint_sha256)


def test_naive_now_is_a_programming_error(tmp_path: Path) -> None:
    """`now` must be timezone-aware; a naive datetime is refused loudly."""
    cert_path, key_path = write_pair(tmp_path, make_leaf())

    with pytest.raises(ValueError, match="timezone-aware"):
        load_certificate(cert_path, key_path, now=datetime(2026, 1, 1))


# --- names_missing ---------------------------------------------------------------------------


@pytest.fixture
def wildcard(tmp_path: Path) -> LoadedCertificate:
    leaf = make_leaf(
        make_ca(), names=["Example.test", "*.apps.example.test", "192.0.2.7", "2001:db8::1"]
    )
    return load_certificate(*write_pair(tmp_path, leaf), now=NOW)


@pytest.mark.parametrize(
    ("name", "covered"),
    [
        ("example.test", True),
        ("EXAMPLE.test.", True),
        ("one.apps.example.test", True),
        ("two.one.apps.example.test", False),
        ("apps.example.test", False),
        ("other.test", False),
        ("192.0.2.7", True),
        ("192.0.2.8", False),
        ("2001:0db8:0:0:0:0:0:1", True),
        ("[2001:db8::1]", True),
        ("::1", False),
    ],
)
def test_names_missing(wildcard: LoadedCertificate, name: str, covered: bool) -> None:
    """DNS names match case-insensitively, a wildcard covers one label, IPs are normalised."""
    assert names_missing(wildcard, [name]) == ([] if covered else [name])


def test_names_missing_ignores_the_common_name(tmp_path: Path) -> None:
    """Without a SAN nothing is covered, not even the CN (browsers ignore it)."""
    leaf = make_leaf(make_ca(), san=False, common_name="localhost")
    loaded = load_certificate(*write_pair(tmp_path, leaf), now=NOW)

    assert names_missing(loaded, ["localhost"]) == ["localhost"]


def test_names_missing_keeps_order(tmp_path: Path) -> None:
    """Missing names come back in the order asked."""
    loaded = load_certificate(*write_pair(tmp_path, make_leaf(names=["a.test"])), now=NOW)

    assert names_missing(loaded, ["c.test", "a.test", "b.test"]) == ["c.test", "b.test"]

"""Certificates for the certificate scenarios, made the way users make them.

Recipes users type are run with the real ``openssl`` binary; shapes openssl cannot make in one
line (expired, not yet valid, a CA chain) are built with ``cryptography``. Nothing is committed.
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

UTC = datetime.UTC


def openssl(*args: str, cwd: Path, stdout: Path | None = None) -> None:
    """Run the real openssl binary (as a user would), optionally redirecting stdout to a file."""
    if stdout is None:
        subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)
        return
    with stdout.open("wb") as out:
        subprocess.run(
            ["openssl", *args],
            cwd=cwd,
            check=True,
            stdout=out,
            stderr=subprocess.PIPE,
            timeout=60,
        )


def seed_recipe(directory: Path, bits: int = 2048) -> tuple[Path, Path]:
    """``openssl genrsa BITS > key.pem; openssl req -x509 -new -key key.pem > key-cert.pem``."""
    key = directory / "key.pem"
    cert = directory / "key-cert.pem"
    openssl("genrsa", str(bits), cwd=directory, stdout=key)
    openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        "key.pem",
        "-subj",
        "/CN=localhost",
        cwd=directory,
        stdout=cert,
    )
    return key, cert


def der_certificate(pem_path: Path) -> bytes:
    """The DER encoding of the first certificate in a PEM file."""
    return x509.load_pem_x509_certificate(pem_path.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, in memory."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        """The certificate as PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def issue(
    common_name: str,
    *,
    issuer: Issued | None = None,
    ca: bool = False,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    names: tuple[str, ...] = ("localhost", "127.0.0.1"),
) -> Issued:
    """A P-256 certificate for ``common_name``, self-signed unless ``issuer`` is given."""
    now = datetime.datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - datetime.timedelta(days=1))
        .not_valid_after(not_after or now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        alt_names: list[x509.GeneralName] = []
        for name in names:
            try:
                alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt_names.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    signer = issuer.key if issuer else key
    return Issued(builder.sign(signer, hashes.SHA256()), key)


def write_pair(directory: Path, issued: Issued, stem: str = "server") -> tuple[Path, Path]:
    """Write ``STEM.pem`` (certificate) and ``STEM.key`` (owner-only key); their paths."""
    cert = directory / f"{stem}.pem"
    key = directory / f"{stem}.key"
    cert.write_bytes(issued.cert_pem())
    key.write_bytes(issued.key_pem())
    key.chmod(0o600)
    return cert, key

"""Test certificates made in memory: keys, CAs, leaves, CSRs and the PEM files holding them.

Usage::

    ca = make_ca()
    leaf = make_leaf(ca, names=["localhost", "127.0.0.1"])
    cert_path, key_path = write_pair(tmp_path, leaf)              # cert.pem (leaf only), key.pem
    combined = write_pem(tmp_path / "both.pem", leaf.cert, leaf.key)  # leaf then key, one file

Everything takes a fixed ``now`` (default `NOW`) so tests never depend on the clock. RSA keys
are slow to make; `rsa_key` caches one key per (bits, slot).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)

Key = CertificateIssuerPrivateKeyTypes


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: Key

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA key (P-256 unless ``curve`` says otherwise)."""
    return ec.generate_private_key(curve or ec.SECP256R1())


@functools.cache
def rsa_key(bits: int = 2048, *, slot: int = 0) -> rsa.RSAPrivateKey:
    """An RSA key, cached per (bits, slot): ask for another slot to get a different key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _alt_names(names: Sequence[str]) -> list[x509.GeneralName]:
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    return alt


def make_ca(
    common_name: str = "Test CA",
    *,
    key: Key | None = None,
    issuer: Issued | None = None,
    now: datetime = NOW,
    days: int = 3650,
    name_constraints: x509.NameConstraints | None = None,
) -> Issued:
    """A CA certificate: self-signed root, or an intermediate when ``issuer`` is given."""
    key = key or ec_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    signer_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer.cert.subject if issuer else _name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + days * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(ski, critical=False)
    )
    if name_constraints is not None:
        builder = builder.add_extension(name_constraints, critical=True)
    return Issued(builder.sign(signer_key, _hash_for(signer_key)), key)


def make_leaf(
    issuer: Issued | None = None,
    *,
    names: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
    san: bool = True,
    common_name: str | None = None,
    key: Key | None = None,
    now: datetime = NOW,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> Issued:
    """A server certificate for ``names``, signed by ``issuer`` (self-signed when None)."""
    key = key or ec_key()
    subject = _name(common_name or (names[0] if names else "localhost"))
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - DAY)
        .not_valid_after(not_after or now + 90 * DAY)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    if san and names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(_alt_names(names)), critical=False
        )
    signer_key = issuer.key if issuer else key
    return Issued(builder.sign(signer_key, _hash_for(signer_key)), key)


def make_csr(key: Key | None = None, common_name: str = "localhost") -> bytes:
    """A PEM certificate signing request."""
    key = key or ec_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name(common_name))
        .sign(key, _hash_for(key))
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _hash_for(key: Key) -> hashes.SHA256 | None:
    return (
        hashes.SHA256() if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) else None
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def key_pem(key: Key, *, passphrase: bytes | None = None, traditional: bool = False) -> bytes:
    """PKCS#8 PEM (``BEGIN PRIVATE KEY``), or the traditional RSA/EC form; encrypted if asked."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    fmt = (
        serialization.PrivateFormat.TraditionalOpenSSL
        if traditional
        else serialization.PrivateFormat.PKCS8
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption)


def key_der(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_pem(path: Path, *parts: x509.Certificate | Key | bytes, mode: int = 0o600) -> Path:
    """Write certificates, keys (unencrypted PKCS#8) and raw bytes, in order, to ``path``."""
    data = b"".join(
        cert_pem(part)
        if isinstance(part, x509.Certificate)
        else part
        if isinstance(part, bytes)
        else key_pem(part)
        for part in parts
    )
    path.write_bytes(data)
    path.chmod(mode)
    return path


def write_pair(
    directory: Path,
    issued: Issued,
    *chain: x509.Certificate,
    cert_name: str = "cert.pem",
    key_name: str = "key.pem",
) -> tuple[Path, Path]:
    """``cert.pem`` (leaf then ``chain``) and ``key.pem`` (0600) in ``directory``."""
    cert_path = write_pem(directory / cert_name, issued.cert, *chain, mode=0o644)
    key_path = write_pem(directory / key_name, issued.key)
    return cert_path, key_path

"""Loads a PEM certificate/key pair and explains, in one line with the fix, what is wrong with it.

Rules:

1. Every refusal is a `CertificateError` whose message is one line: the file, what is wrong, and
   the command or flag that fixes it. Startup, reload and `tlsproxy certs --cert` all print it
   as it is.
2. What still serves but will surprise someone (no subjectAltName, a key file others can read,
   close expiry, a self-signed leaf) is a warning string, never an error.
3. The cert file is the leaf followed by its chain, each certificate issued by the next; the
   key may follow in the same file.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from tlsproxy.tls import pemfile
from tlsproxy.tls.pemfile import GOOD_KEY_RECIPE, SELF_SIGNED_RECIPE, CertificateError

__all__ = [
    "EXPIRY_WARNING",
    "GOOD_KEY_RECIPE",
    "MIN_EC_BITS",
    "MIN_RSA_BITS",
    "SELF_SIGNED_RECIPE",
    "CertificateError",
    "LoadedCertificate",
    "load_certificate",
    "names_missing",
    "parse_ip",
    "public_der",
]

MIN_RSA_BITS = 2048
MIN_EC_BITS = 256
EXPIRY_WARNING = timedelta(days=14)


@dataclass(frozen=True)
class LoadedCertificate:
    """A checked leaf certificate, its chain (in order, leaf first excluded) and its private key."""

    cert_path: Path
    key_path: Path
    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    key: CertificateIssuerPrivateKeyTypes
    warnings: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """subjectAltName DNS names and IP addresses, as text (empty without a SAN)."""
        dns, ips = _san_names(self.leaf)
        return (*dns, *(str(ip) for ip in ips))

    @property
    def sni_names(self) -> tuple[str, ...]:
        """The names SNI can choose this certificate by: its DNS subjectAltNames.

        A certificate without a subjectAltName (the tutorial's ``openssl req -x509``) is chosen
        by its subject's commonName instead, as hitch and HAProxy do; IP addresses never arrive
        as SNI names.
        """
        dns, ips = _san_names(self.leaf)
        if dns or ips:
            return tuple(dns)
        common = self.leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return tuple(str(a.value) for a in common[:1] if isinstance(a.value, str))

    @property
    def not_after(self) -> datetime:
        """The leaf's expiry, timezone-aware UTC."""
        return self.leaf.not_valid_after_utc

    @property
    def fingerprint_sha256(self) -> str:
        """Colon-separated upper-case hex, as browsers and `openssl x509 -fingerprint` show it."""
        return self.leaf.fingerprint(hashes.SHA256()).hex(":").upper()

    def describe(self) -> list[str]:
        """Lines for the startup banner: names, validity, fingerprint, files (not the warnings)."""
        files = f"certificate {self.cert_path}"
        if self.key_path != self.cert_path:
            files += f", key {self.key_path}"
        names = ", ".join(self.names) or "none (no subjectAltName)"
        lines = [
            files,
            f"names: {names}",
            f"subject: {self.leaf.subject.rfc4514_string()}; "
            f"issuer: {self.leaf.issuer.rfc4514_string()}",
            f"valid: {_day(self.leaf.not_valid_before_utc)} to {_day(self.not_after)} (UTC)",
            f"sha256 fingerprint: {self.fingerprint_sha256}",
        ]
        if self.chain:
            lines.append(f"chain: {len(self.chain)} more certificate(s) after the leaf")
        return lines


def load_certificate(
    cert_path: Path,
    key_path: Path | None = None,
    *,
    passphrase: bytes | None = None,
    now: datetime,
) -> LoadedCertificate:
    """Load and check a PEM pair; ``key_path=None`` means the key is in ``cert_path`` too."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    key_source = cert_path if key_path is None else key_path
    cert_blocks = pemfile.read_blocks(cert_path, "certificate")
    key_blocks = cert_blocks if key_source == cert_path else pemfile.read_blocks(key_source, "key")
    certificates = pemfile.certificates(cert_path, cert_blocks, key_source, key_blocks)
    key = pemfile.private_key(key_source, key_blocks, cert_path, passphrase=passphrase)
    leaf_index = _matching_index(certificates, key, cert_path=cert_path, key_path=key_source)
    if leaf_index != 0:
        raise CertificateError(
            f"{cert_path} is out of order: the certificate matching the key "
            f"({_subject(certificates[leaf_index])}) is #{leaf_index + 1} of "
            f"{len(certificates)}; order the file leaf first, then the intermediates, "
            "each followed by the certificate that issued it"
        )
    _check_strength(key, key_source)
    leaf = certificates[0]
    _check_validity(leaf, cert_path, now)
    _check_chain_order(certificates, cert_path)
    warnings = _warnings(
        certificates,
        cert_path=cert_path,
        key_path=key_source,
        now=now,
        passphrase_unused=pemfile.passphrase_unused(key_blocks, passphrase),
    )
    return LoadedCertificate(
        cert_path=cert_path,
        key_path=key_source,
        leaf=leaf,
        chain=tuple(certificates[1:]),
        key=key,
        warnings=tuple(warnings),
    )


def names_missing(certificate: LoadedCertificate, wanted: Sequence[str]) -> list[str]:
    """The names of ``wanted`` (DNS names or IP literals) that ``certificate`` does not cover."""
    dns, ips = _san_names(certificate.leaf)
    patterns = [_normal_dns(name) for name in dns]
    missing = []
    for name in wanted:
        ip = parse_ip(name)
        if ip is not None:
            covered = ip in ips
        else:
            covered = any(_dns_matches(pattern, _normal_dns(name)) for pattern in patterns)
        if not covered:
            missing.append(name)
    return missing


def parse_ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``name`` as an IP address (``[::1]`` allowed), or None when it is a DNS name."""
    try:
        return ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
    except ValueError:
        return None


def _dns_matches(pattern: str, name: str) -> bool:
    # A wildcard is a whole left-most label and stands for exactly one label (RFC 6125 6.4.3).
    if pattern == name:
        return True
    if not pattern.startswith("*."):
        return False
    first, _, rest = name.partition(".")
    return bool(first) and first != "*" and rest == pattern[2:]


def _normal_dns(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _san_names(
    leaf: x509.Certificate,
) -> tuple[list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    ips = [
        ip
        for ip in san.get_values_for_type(x509.IPAddress)
        if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)
    ]
    return san.get_values_for_type(x509.DNSName), ips


# --- checks ----------------------------------------------------------------------------------


def public_der(key: CertificateIssuerPrivateKeyTypes | x509.Certificate) -> bytes:
    """The public key (DER) of a private key or a certificate: what pairs them."""
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _matching_index(
    certificates: list[x509.Certificate],
    key: CertificateIssuerPrivateKeyTypes,
    *,
    cert_path: Path,
    key_path: Path,
) -> int:
    wanted = public_der(key)
    for index, certificate in enumerate(certificates):
        try:
            if public_der(certificate) == wanted:
                return index
        except (ValueError, UnsupportedAlgorithm):
            continue
    raise CertificateError(
        f"the private key in {key_path} does not match the certificate in {cert_path} "
        f"({_subject(certificates[0])}): their public keys differ; use the key the "
        "certificate was made from"
    )


def _check_strength(key: CertificateIssuerPrivateKeyTypes, key_path: Path) -> None:
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        kind, bits = "RSA", key.key_size
    elif isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size < MIN_EC_BITS:
        kind, bits = f"EC ({key.curve.name})", key.curve.key_size
    else:
        return
    raise CertificateError(
        f"the {kind} key in {key_path} is {bits} bits, too weak (RSA needs at least "
        f"{MIN_RSA_BITS} bits); make a new key and certificate: {GOOD_KEY_RECIPE}"
    )


def _check_validity(leaf: x509.Certificate, cert_path: Path, now: datetime) -> None:
    if leaf.not_valid_after_utc < now:
        raise CertificateError(
            f"the certificate in {cert_path} expired on {_moment(leaf.not_valid_after_utc)} "
            f"(now {_moment(now)}); renew it with its CA, or make a new self-signed one: "
            f"{SELF_SIGNED_RECIPE}"
        )
    if leaf.not_valid_before_utc > now:
        raise CertificateError(
            f"the certificate in {cert_path} is not valid before "
            f"{_moment(leaf.not_valid_before_utc)} (now {_moment(now)}); check the system "
            "clock (`date -u`) or wait until then"
        )


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Names chain and, where the algorithm allows checking, the signature verifies."""
    if certificate.issuer != issuer.subject:
        return False
    try:
        certificate.verify_directly_issued_by(issuer)
    except InvalidSignature:
        return False
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return True  # names match; the signature scheme is one we cannot check here
    return True


def _check_chain_order(certificates: list[x509.Certificate], cert_path: Path) -> None:
    for index in range(len(certificates) - 1):
        if _issued_by(certificates[index], certificates[index + 1]):
            continue
        order = _good_order(certificates)
        if order is not None:
            fix = "reorder it as " + ", ".join(f"#{i + 1}" for i in order)
        else:
            fix = (
                "order it leaf first, then each intermediate after the certificate it "
                "signed, and remove certificates that belong to another chain"
            )
        raise CertificateError(
            f"the chain in {cert_path} is out of order: certificate #{index + 2} "
            f"({_subject(certificates[index + 1])}) did not issue #{index + 1} "
            f"({_subject(certificates[index])}, issued by "
            f"{certificates[index].issuer.rfc4514_string()}); {fix}"
        )


def _good_order(certificates: list[x509.Certificate]) -> list[int] | None:
    """Indexes putting every certificate after the one it issued, leaf first; None if none."""
    order = [0]
    remaining = set(range(1, len(certificates)))
    while remaining:
        current = certificates[order[-1]]
        issuer = next((i for i in sorted(remaining) if _issued_by(current, certificates[i])), None)
        if issuer is None:
            return None
        order.append(issuer)
        remaining.discard(issuer)
    return order


def _warnings(
    certificates: list[x509.Certificate],
    *,
    cert_path: Path,
    key_path: Path,
    now: datetime,
    passphrase_unused: bool,
) -> list[str]:
    leaf = certificates[0]
    warnings = []
    if not _has_san(leaf):
        warnings.append(
            f"the certificate has no subjectAltName ({_subject(leaf)}): browsers reject a "
            "certificate without subjectAltName for every name; make one with "
            "-addext subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"
        )
    mode = _group_or_other_mode(key_path)
    if mode is not None:
        warnings.append(
            f"key file {key_path} can be read by group or others (mode {mode:04o}); "
            f"restrict it with `chmod 600 {key_path}`"
        )
    if leaf.not_valid_after_utc - now < EXPIRY_WARNING:
        warnings.append(
            f"the certificate expires soon, on {_moment(leaf.not_valid_after_utc)}; renew it"
        )
    if _issued_by(leaf, leaf):
        warnings.append(
            "the certificate is self-signed: clients must be told to trust it "
            f"(e.g. `curl --cacert {cert_path}`, or add it to their trust store)"
        )
    warnings.extend(
        f"chain certificate #{number} ({_subject(certificate)}) expired on "
        f"{_moment(certificate.not_valid_after_utc)}; clients that need it will fail"
        for number, certificate in enumerate(certificates[1:], 2)
        if certificate.not_valid_after_utc < now
    )
    if passphrase_unused:
        warnings.append(f"a passphrase was given but the key in {key_path} is not encrypted")
    return warnings


def _has_san(leaf: x509.Certificate) -> bool:
    try:
        leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return False
    return True


def _group_or_other_mode(path: Path) -> int | None:
    """The file's mode when group or others have any access to it (POSIX only)."""
    if os.name != "posix":
        return None
    mode = stat.S_IMODE(path.stat().st_mode)
    return mode if mode & 0o077 else None


def _subject(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string() or "empty subject"


def _moment(when: datetime) -> str:
    return f"{when:%Y-%m-%d %H:%M} UTC"


def _day(when: datetime) -> str:
    return f"{when:%Y-%m-%d}"

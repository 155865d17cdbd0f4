"""The local development CA and its leaf certificate, kept under ``--certs-dir``.

Rules:

1. The CA is made once and never replaced by tlsproxy: people trust it in browsers and system
   stores, so a silently new CA would break every client. A CA whose key is missing or corrupt
   is an error that says how to start over.
2. The CA is name-constrained (critical NameConstraints) to local names and private addresses,
   so trusting it cannot let a stolen ``ca-key.pem`` impersonate public sites.
3. The leaf is reissued when it does not cover the wanted names, expires within 30 days, or was
   not signed by the current CA; otherwise it is reused.
4. Keys are written owner-only from the first byte; every file is written to a temporary file
   and renamed, so a crash never leaves half a PEM.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import socket
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tlsproxy.tls.certstore import (
    CertificateError,
    LoadedCertificate,
    load_certificate,
    names_missing,
    parse_ip,
)

CA_CERT_NAME = "ca.pem"
CA_KEY_NAME = "ca-key.pem"
LEAF_CERT_NAME = "localhost.pem"
LEAF_KEY_NAME = "localhost-key.pem"

DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")
CA_VALIDITY = timedelta(days=3650)
# Browsers refuse leaves valid for more than 398 days; the backdating below stays inside it.
LEAF_VALIDITY = timedelta(days=397)
BACKDATE = timedelta(hours=1)
RENEW_BEFORE = timedelta(days=30)

# Names any development CA may sign: the reserved local and special-use TLDs (RFC 6761,
# RFC 8375, the .internal reservation) and the loopback, private and CGNAT ranges.
PERMITTED_DNS = ("localhost", "test", "internal", "local", "home.arpa")
PERMITTED_NETWORKS = (
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
)

_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_DNS_NAME = re.compile(rf"^(\*\.)?({_LABEL}\.)*{_LABEL}$")


@dataclass(frozen=True)
class DevCertificates:
    """Where the development CA and leaf live, and what this call did (created, reused, renewed)."""

    ca_cert_path: Path
    cert_path: Path
    key_path: Path
    messages: tuple[str, ...]


def ensure_dev_certificates(
    certs_dir: Path, hostnames: Sequence[str], *, now: datetime
) -> DevCertificates:
    """Create or reuse the CA and a leaf for localhost, 127.0.0.1, ::1 and ``hostnames``."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    wanted = wanted_names(hostnames)
    messages: list[str] = []
    if not certs_dir.exists():
        certs_dir.mkdir(mode=0o700, parents=True)
        certs_dir.chmod(0o700)  # mkdir's mode is filtered by the umask
    ca_cert_path = certs_dir / CA_CERT_NAME
    ca_key_path = certs_dir / CA_KEY_NAME
    if ca_cert_path.exists() or ca_key_path.exists():
        ca_cert, ca_key = _existing_ca(ca_cert_path, ca_key_path, now=now)
        messages.append(
            f"reused development CA {ca_cert_path} (expires {ca_cert.not_valid_after_utc:%Y-%m-%d})"
        )
    else:
        ca_cert, ca_key = _new_ca(wanted, now=now)
        write_atomically(ca_key_path, _key_pem(ca_key), mode=0o600)
        write_atomically(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
        messages.append(f"created development CA {ca_cert_path}")
    _check_permitted(ca_cert, ca_cert_path, wanted)

    cert_path = certs_dir / LEAF_CERT_NAME
    key_path = certs_dir / LEAF_KEY_NAME
    reason = _reissue_reason(cert_path, key_path, ca_cert, wanted, now=now)
    if reason is None:
        leaf = x509.load_pem_x509_certificate(cert_path.read_bytes())
        verb = "reused"
    else:
        leaf, leaf_key = _new_leaf(ca_cert, ca_key, wanted, now=now)
        write_atomically(key_path, _key_pem(leaf_key), mode=0o600)
        write_atomically(cert_path, leaf.public_bytes(serialization.Encoding.PEM), mode=0o644)
        verb = "issued" if reason == "" else "renewed"
    line = (
        f"{verb} leaf {cert_path} for {', '.join(_leaf_names(leaf))} "
        f"(expires {leaf.not_valid_after_utc:%Y-%m-%d})"
    )
    messages.append(line if not reason else f"{line}: {reason}")
    return DevCertificates(
        ca_cert_path=ca_cert_path,
        cert_path=cert_path,
        key_path=key_path,
        messages=tuple(messages),
    )


def trust_instructions(ca_cert_path: Path, *, url: str = "https://localhost:PORT/") -> list[str]:
    """How to make clients trust the CA: `tlsproxy trust` first, then each client, one line each."""
    ca = shlex.quote(str(ca_cert_path.absolute()))
    certs_dir = shlex.quote(str(ca_cert_path.absolute().parent))
    return [
        f"system store and browsers, in one step: python -m tlsproxy trust --certs-dir {certs_dir}",
        f"curl: curl --cacert {ca} {url}",
        f"Python: SSL_CERT_FILE={ca} (ssl, httpx), REQUESTS_CA_BUNDLE={ca} (requests)",
        f"Node.js: NODE_EXTRA_CA_CERTS={ca}",
        f"Debian/Ubuntu system store: sudo cp {ca} "
        "/usr/local/share/ca-certificates/tlsproxy-dev-ca.crt && sudo update-ca-certificates",
        "Chromium/Chrome on Linux: certutil -d sql:$HOME/.pki/nssdb -A -t C,, "
        f"-n tlsproxy-dev-ca -i {ca}",
        f"Firefox: Settings > Privacy & Security > Certificates > View Certificates > "
        f"Authorities > Import {ca}",
    ]


def wanted_names(hostnames: Sequence[str]) -> tuple[str, ...]:
    """localhost, 127.0.0.1, ::1 and ``hostnames``, normalised, without repeats, in order."""
    names: list[str] = []
    for raw in (*DEFAULT_NAMES, *hostnames):
        ip = parse_ip(raw.strip())
        if ip is not None:
            name = str(ip)
        else:
            name = raw.strip().rstrip(".").lower()
            if not name.isascii():
                name = _a_label(name)
            if not _DNS_NAME.match(name) or len(name) > 253:
                raise CertificateError(
                    f"--hostname {raw!r} is not a DNS name or IP address; give a bare name "
                    "such as myapp.test (no scheme, port or path)"
                )
        if name not in names:
            names.append(name)
    return tuple(names)


def _a_label(name: str) -> str:
    """An internationalised name in the ASCII form certificates carry (xn--...)."""
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name  # the DNS-name check that follows rejects it with the usual message


# --- the CA ----------------------------------------------------------------------------------


def _existing_ca(
    ca_cert_path: Path, ca_key_path: Path, *, now: datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    start_over = (
        f"tlsproxy never replaces a CA you may already trust: move {ca_cert_path.parent} "
        f"away (`mv {ca_cert_path.parent} {ca_cert_path.parent}.old`) to create a new CA, "
        "then trust the new one and remove the old one from your trust stores"
    )
    if not ca_cert_path.exists():
        raise CertificateError(
            f"the development CA key {ca_key_path} exists but its certificate {ca_cert_path} "
            f"is missing; {start_over}"
        )
    try:
        loaded = load_certificate(ca_cert_path, ca_key_path, now=now)
    except CertificateError as exc:
        raise CertificateError(
            f"the development CA {ca_cert_path} cannot be used ({exc}); {start_over}"
        ) from None
    key = loaded.key
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not _is_ca(loaded):
        raise CertificateError(
            f"{ca_cert_path} is not a development CA made by tlsproxy; {start_over}"
        )
    if loaded.not_after - now < RENEW_BEFORE:
        raise CertificateError(
            f"the development CA {ca_cert_path} expires on {loaded.not_after:%Y-%m-%d}; "
            f"{start_over}"
        )
    return loaded.leaf, key


def _is_ca(loaded: LoadedCertificate) -> bool:
    try:
        constraints = loaded.leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    return constraints.value.ca


def _new_ca(
    wanted: Sequence[str], *, now: datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tlsproxy development CA"),
            x509.NameAttribute(
                NameOID.COMMON_NAME,
                f"tlsproxy development CA ({socket.gethostname()[:24]}, {now:%Y-%m-%d})",
            ),
        ]
    )
    permitted: list[x509.GeneralName] = [x509.DNSName(dns) for dns in PERMITTED_DNS]
    networks = [ipaddress.ip_network(net) for net in PERMITTED_NETWORKS]
    for wanted_name in wanted:
        ip = parse_ip(wanted_name)
        if ip is None:
            dns = wanted_name.removeprefix("*.")
            if not _dns_permitted(dns, PERMITTED_DNS):
                permitted.append(x509.DNSName(dns))
        elif not any(ip in net for net in networks):
            networks.append(ipaddress.ip_network(ip))
    permitted.extend(x509.IPAddress(net) for net in networks)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(x509.NameConstraints(permitted, None), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _check_permitted(ca_cert: x509.Certificate, ca_cert_path: Path, wanted: Sequence[str]) -> None:
    outside = [name for name in wanted if not ca_permits(ca_cert, name)]
    if outside:
        names = " ".join(f"--hostname {name}" for name in outside)
        raise CertificateError(
            f"{', '.join(outside)} is outside the names the development CA {ca_cert_path} may "
            f"sign (its name constraints fix them when it is created); to add it, move "
            f"{ca_cert_path.parent} away and run again with {names} to create a new CA "
            "(then trust the new CA)"
        )


def ca_permits(ca_cert: x509.Certificate, name: str) -> bool:
    """Whether ``ca_cert``'s name constraints allow it to sign ``name`` (a DNS name or IP)."""
    try:
        constraints = ca_cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return True
    permitted = constraints.permitted_subtrees or []
    ip = parse_ip(name)
    if ip is not None:
        networks = [
            n.value
            for n in permitted
            if isinstance(n, x509.IPAddress)
            and isinstance(n.value, ipaddress.IPv4Network | ipaddress.IPv6Network)
        ]
        return not networks or any(ip in net for net in networks)
    dns = [n.value for n in permitted if isinstance(n, x509.DNSName)]
    return not dns or _dns_permitted(name.removeprefix("*."), dns)


def _dns_permitted(name: str, permitted: Sequence[str]) -> bool:
    # RFC 5280 4.2.1.10: a DNS constraint allows the name and any name with labels added left.
    return any(
        name == base.lstrip(".") or name.endswith("." + base.lstrip(".")) for base in permitted
    )


# --- the leaf --------------------------------------------------------------------------------


def _reissue_reason(
    cert_path: Path,
    key_path: Path,
    ca_cert: x509.Certificate,
    wanted: Sequence[str],
    *,
    now: datetime,
) -> str | None:
    """None to reuse the leaf, "" when there is none yet, else why it must be renewed."""
    if not cert_path.exists() and not key_path.exists():
        return ""
    try:
        loaded = load_certificate(cert_path, key_path, now=now)
    except CertificateError as exc:
        return f"the previous one cannot be used ({exc})"
    missing = names_missing(loaded, wanted)
    if missing:
        return f"the previous one does not cover {', '.join(missing)}"
    if loaded.not_after - now < RENEW_BEFORE:
        return f"the previous one expires on {loaded.not_after:%Y-%m-%d}"
    try:
        loaded.leaf.verify_directly_issued_by(ca_cert)
    except (InvalidSignature, ValueError, TypeError):
        return f"the previous one was not signed by the current CA {CA_CERT_NAME}"
    return None


def _leaf_names(leaf: x509.Certificate) -> list[str]:
    """The leaf's subjectAltName entries as text, in certificate order."""
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(name.value) for name in san if isinstance(name, x509.DNSName | x509.IPAddress)]


def _new_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    wanted: Sequence[str],
    *,
    now: datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = []
    for name in wanted:
        ip = parse_ip(name)
        alt_names.append(x509.DNSName(name) if ip is None else x509.IPAddress(ip))
    first_dns = next((n for n in wanted if parse_ip(n) is None), "localhost")
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, first_dns[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + LEAF_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


# --- files -----------------------------------------------------------------------------------


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` beside ``path``, then rename it into place; mkstemp starts it at 0600."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if mode != 0o600:
            os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise

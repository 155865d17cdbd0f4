"""Reads the PEM files given to --cert and --key and says what they hold, or why they cannot serve.

Rules:

1. Every refusal is a `CertificateError` whose message is one line: the file, what is wrong, and
   the command or flag that fixes it (see `tlsproxy.tls.certstore`, which checks what loads).
2. A file that is not PEM is named for what it is (DER certificate or key, PKCS#12 bundle) with
   the `openssl` command that converts it.
3. A certificate, key or CSR in the wrong place is named as such, including --cert and --key
   swapped.
"""

from __future__ import annotations

import re
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

GOOD_KEY_RECIPE = (
    "`openssl genrsa -out key.pem 2048` (or ECDSA P-256: "
    "`openssl ecparam -genkey -name prime256v1 -noout -out key.pem`), then "
    "`openssl req -x509 -new -key key.pem -out cert.pem -days 365 -subj /CN=localhost "
    "-addext subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1`"
)
SELF_SIGNED_RECIPE = (
    "`openssl req -x509 -new -key key.pem -out cert.pem -days 365 -subj /CN=localhost "
    "-addext subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1`"
)

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----\r?\n?", re.DOTALL)
CERT_LABELS = frozenset({b"CERTIFICATE", b"X509 CERTIFICATE", b"TRUSTED CERTIFICATE"})
KEY_LABELS = frozenset(
    {
        b"PRIVATE KEY",
        b"ENCRYPTED PRIVATE KEY",
        b"RSA PRIVATE KEY",
        b"EC PRIVATE KEY",
        b"DSA PRIVATE KEY",
    }
)
_CSR_LABELS = frozenset({b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST"})


class CertificateError(ValueError):
    """A certificate or key that cannot serve; the message is one line: what is wrong, the fix."""


def read_blocks(path: Path, kind: str) -> list[tuple[bytes, bytes]]:
    """(label, whole block) for every PEM block in ``path``; ``kind`` is certificate or key."""
    return _pem_blocks(path, _read(path, kind), kind)


def _read(path: Path, kind: str) -> bytes:
    flag = "--cert" if kind == "certificate" else "--key"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertificateError(
            f"{kind} file {path} does not exist; check the path given to {flag}"
        ) from None
    except PermissionError:
        raise CertificateError(
            f"cannot read {kind} file {path}: permission denied; make it readable by the user "
            f"running tlsproxy (e.g. `sudo chown $USER {path} && chmod 600 {path}`)"
        ) from None
    except IsADirectoryError:
        raise CertificateError(
            f"{kind} file {path} is a directory; give {flag} the path of a PEM file"
        ) from None
    except OSError as exc:
        raise CertificateError(f"cannot read {kind} file {path}: {exc.strerror}") from None


def pem_blocks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(label, whole block) for every PEM block in ``data``; empty when there is none."""
    return [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(data)]


def is_encrypted(blocks: list[tuple[bytes, bytes]]) -> bool:
    """Whether the private key among ``blocks`` needs a passphrase."""
    return any(
        label == b"ENCRYPTED PRIVATE KEY" or b"Proc-Type: 4,ENCRYPTED" in block
        for label, block in blocks
        if label in KEY_LABELS
    )


def _pem_blocks(path: Path, data: bytes, kind: str) -> list[tuple[bytes, bytes]]:
    """(label, whole block) for every PEM block, or a CertificateError saying what the file is."""
    blocks = pem_blocks(data)
    if blocks:
        return blocks
    if not data.strip():
        raise CertificateError(f"{kind} file {path} is empty; give a PEM {kind}")
    raise CertificateError(_not_pem(path, data, kind))


def _not_pem(path: Path, data: bytes, kind: str) -> str:
    pem = path.with_suffix(".pem") if path.suffix != ".pem" else path.with_name(path.name + ".pem")
    if data[:1] == b"\x30":  # an ASN.1 SEQUENCE: DER
        try:
            x509.load_der_x509_certificate(data)
        except ValueError:
            pass
        else:
            return (
                f"{path} is a DER (binary) certificate, not PEM; convert with "
                f"`openssl x509 -inform der -in {path} -out {pem}` and use {pem}"
            )
        try:
            serialization.load_der_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            pass
        else:
            return (
                f"{path} is a DER (binary) private key, not PEM; convert with "
                f"`openssl pkey -inform der -in {path} -out {pem}` and use {pem}"
            )
        if b"\x02\x01\x03\x30" in data[2:8]:  # PFX ::= SEQUENCE { version INTEGER 3, ...
            return (
                f"{path} looks like a PKCS#12 (.p12/.pfx) bundle, not PEM; convert with "
                f"`openssl pkcs12 -in {path} -nodes -out {pem}` and use {pem}"
            )
        return f"{path} is binary (DER?) data, not a PEM {kind}; convert it to PEM with openssl"
    return (
        f"{path} is not a PEM file (no '-----BEGIN ...-----' line); "
        f"give a PEM {kind}, text starting with -----BEGIN"
    )


def _labels(blocks: list[tuple[bytes, bytes]]) -> set[bytes]:
    return {label for label, _ in blocks}


def certificates(
    cert_path: Path,
    cert_blocks: list[tuple[bytes, bytes]],
    key_path: Path,
    key_blocks: list[tuple[bytes, bytes]],
) -> list[x509.Certificate]:
    """The certificates in ``cert_blocks``, in file order; refuses a file that holds none."""
    labels = _labels(cert_blocks)
    certificates = []
    for number, (label, block) in enumerate(cert_blocks, 1):
        if label not in CERT_LABELS:
            continue
        try:
            certificates.append(x509.load_pem_x509_certificate(block))
        except ValueError as exc:
            raise CertificateError(
                f"{cert_path}: PEM block #{number} is not a valid certificate ({exc}); "
                "export it again"
            ) from None
    if certificates:
        return certificates
    if labels & _CSR_LABELS:
        raise CertificateError(
            f"{cert_path} holds a certificate signing request (CSR), not a certificate; "
            f"have a CA sign it, or make a self-signed certificate: {SELF_SIGNED_RECIPE}"
        )
    if labels & KEY_LABELS:
        if key_path != cert_path and _labels(key_blocks) & CERT_LABELS:
            raise CertificateError(
                f"--cert {cert_path} holds a private key and --key {key_path} holds a "
                f"certificate: they are swapped; pass --cert {key_path} --key {cert_path}"
            )
        raise CertificateError(
            f"{cert_path} holds a private key but no certificate; pass the certificate "
            "with --cert and the key with --key"
        )
    found = ", ".join(sorted(label.decode() for label in labels))
    raise CertificateError(
        f"{cert_path} holds no certificate (found: {found}); "
        "give --cert a PEM file starting with -----BEGIN CERTIFICATE-----"
    )


def private_key(
    key_path: Path,
    key_blocks: list[tuple[bytes, bytes]],
    cert_path: Path,
    *,
    passphrase: bytes | None,
) -> CertificateIssuerPrivateKeyTypes:
    """The first private key in ``key_blocks``, decrypted; refuses one a TLS server cannot use."""
    blocks = [(label, block) for label, block in key_blocks if label in KEY_LABELS]
    if not blocks:
        labels = _labels(key_blocks)
        if key_path == cert_path:
            raise CertificateError(
                f"no private key found in {cert_path}; pass the key file with --key "
                "(or append the key to the certificate file)"
            )
        if labels & CERT_LABELS:
            raise CertificateError(
                f"{key_path} holds a certificate, not a private key; "
                "pass the private key file with --key"
            )
        if labels & _CSR_LABELS:
            raise CertificateError(
                f"{key_path} holds a certificate signing request (CSR), not a private key; "
                "pass the key the CSR was made from with --key"
            )
        found = ", ".join(sorted(label.decode() for label in labels))
        raise CertificateError(
            f"no private key found in {key_path} (found: {found}); pass the private key "
            "file (-----BEGIN PRIVATE KEY-----) with --key"
        )
    block = blocks[0][1]
    encrypted = is_encrypted(blocks[:1])
    if encrypted and passphrase is None:
        raise CertificateError(
            f"the private key in {key_path} is encrypted; give its passphrase with "
            f"--key-passphrase-file FILE (or decrypt it once: "
            f"`openssl pkey -in {key_path} -out key-plain.pem`)"
        )
    try:
        key = serialization.load_pem_private_key(block, password=passphrase if encrypted else None)
    except ValueError:
        if encrypted:
            raise CertificateError(
                f"cannot decrypt the private key in {key_path}: wrong passphrase; check the "
                "file given to --key-passphrase-file (a trailing newline is ignored)"
            ) from None
        raise CertificateError(
            f"the private key in {key_path} is corrupt or not a private key; export it again"
        ) from None
    except UnsupportedAlgorithm:
        raise CertificateError(
            f"the private key in {key_path} uses an unsupported algorithm; make a new one: "
            f"{GOOD_KEY_RECIPE}"
        ) from None
    if isinstance(key, dsa.DSAPrivateKey) or not isinstance(
        key,
        rsa.RSAPrivateKey
        | ec.EllipticCurvePrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        raise CertificateError(
            f"the private key in {key_path} is a {type(key).__name__.removeprefix('_')} key, "
            f"which TLS clients do not accept for servers; make a new key and certificate: "
            f"{GOOD_KEY_RECIPE}"
        )
    return key


def passphrase_unused(key_blocks: list[tuple[bytes, bytes]], passphrase: bytes | None) -> bool:
    """Whether a passphrase was given but the key in ``key_blocks`` is not encrypted."""
    return passphrase is not None and not is_encrypted(key_blocks)

"""Finds the certificate/key pairs in a directory, whatever the files are called.

Rules:

1. Files are paired by content, not by name: a certificate goes with the private key whose public
   key it carries, in the same file or in another file of the same folder. So every layout
   works as it is: ``example.com.pem`` + ``example.com-key.pem`` (mkcert), ``.crt`` + ``.key``,
   one combined PEM per site (HAProxy, hitch), the tutorial's ``key-cert.pem`` + ``key.pem``,
   and certbot's ``live/NAME/fullchain.pem`` + ``privkey.pem`` one folder down.
2. The directory and its direct subfolders are read (symbolic links followed, as certbot's
   are), files ending .pem, .crt, .cer or .key only, hidden files never.
3. A CA certificate (``chain.pem``, the development CA: one whose key usage allows signing
   certificates, or an intermediate) is never a server certificate. The tutorial's self-signed
   ``openssl req -x509`` leaf says CA:TRUE but has no key usage, and serves. When
   two files hold the same leaf (certbot's ``cert.pem`` and ``fullchain.pem``), the one with
   the longer chain serves.
4. A file that cannot be read or decrypted is an error, as for ``--cert``: a certbot key the
   service user may not read must stop startup, not vanish from the set. A certificate without
   its key is left out with a warning.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from tlsproxy.tls import pemfile

__all__ = ["ScannedPair", "pem_files", "scan"]

_SUFFIXES = frozenset({".pem", ".crt", ".cer", ".key"})
_CERT_LABEL = b"CERTIFICATE"
_KEY_LABELS = frozenset(
    {b"PRIVATE KEY", b"ENCRYPTED PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY"}
)


@dataclass(frozen=True)
class ScannedPair:
    cert: Path
    key: Path  # the same path when the file holds both


@dataclass(frozen=True)
class _CertFile:
    path: Path
    leaf: x509.Certificate
    count: int  # certificates in the file: the leaf and its chain


def pem_files(directory: Path, *, skip: Collection[str] = ()) -> list[Path]:
    """The files rule 2 reads, sorted; ``skip`` names top-level files that are not to be served."""
    found = []
    for entry in _entries(directory):
        if entry.is_dir():
            found += [f for f in _entries(entry) if f.is_file() and _wanted(f)]
        elif entry.is_file() and _wanted(entry) and entry.name not in skip:
            found.append(entry)
    return found


def scan(
    directory: Path, *, skip: Collection[str] = (), passphrase: bytes | None = None
) -> tuple[list[ScannedPair], list[str]]:
    """The pairs in ``directory`` (sorted by certificate path) and warnings for files left out."""
    folders: dict[Path, list[Path]] = {}
    for path in pem_files(directory, skip=skip):
        folders.setdefault(path.parent, []).append(path)
    pairs: list[ScannedPair] = []
    warnings: list[str] = []
    for files in folders.values():
        found, unpaired = _pairs_in_folder(files, passphrase)
        pairs += found
        warnings += [f"{path}: no key in its folder matches it; not served" for path in unpaired]
    pairs.sort(key=lambda pair: pair.cert)
    return pairs, warnings


def _pairs_in_folder(
    files: list[Path], passphrase: bytes | None
) -> tuple[list[ScannedPair], list[Path]]:
    """Rule 1 and 3 within one folder: (pairs, certificate files with no key)."""
    certs: dict[bytes, _CertFile] = {}  # by leaf fingerprint: the longest chain kept
    keys: dict[bytes, Path] = {}  # public key (DER) → the file that holds the private key
    for path in files:
        blocks = pemfile.read_blocks(path, "certificate")
        labels = {label for label, _ in blocks}
        if labels & _KEY_LABELS:
            key = pemfile.private_key(path, blocks, path, passphrase=passphrase)
            keys.setdefault(_public(key), path)
        if _CERT_LABEL in labels:
            chain = pemfile.certificates(path, blocks, path, blocks)
            if _is_ca(chain[0]):
                continue
            fingerprint = chain[0].fingerprint(hashes.SHA256())
            earlier = certs.get(fingerprint)
            if earlier is None or len(chain) > earlier.count:
                certs[fingerprint] = _CertFile(path, chain[0], len(chain))
    pairs, unpaired = [], []
    for cert in certs.values():
        key_path = keys.get(_public(cert.leaf))
        if key_path is None:
            unpaired.append(cert.path)
        else:
            pairs.append(ScannedPair(cert.path, key_path))
    return pairs, unpaired


def _entries(directory: Path) -> Iterator[Path]:
    try:
        names = sorted(directory.iterdir())
    except FileNotFoundError:
        return
    except OSError as e:
        raise pemfile.CertificateError(
            f"cannot read the certificates directory {directory}: {e.strerror}; make it "
            "readable by the user running tlsproxy"
        ) from None
    yield from (path for path in names if not path.name.startswith("."))


def _wanted(path: Path) -> bool:
    return path.suffix.lower() in _SUFFIXES


def _is_ca(certificate: x509.Certificate) -> bool:
    """Rule 3: a certificate that may sign certificates, or a CA issued by another CA."""
    extensions = certificate.extensions
    try:
        if extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign:
            return True
    except x509.ExtensionNotFound:
        pass
    try:
        ca = extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False
    return bool(ca) and certificate.issuer != certificate.subject


def _public(holder: x509.Certificate | CertificateIssuerPrivateKeyTypes) -> bytes:
    der: bytes = holder.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der

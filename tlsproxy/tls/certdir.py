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
4. A file that cannot be read or decrypted, or a broken symbolic link, is an error, as for
   ``--cert``: a certbot key the service user may not read must stop startup, not vanish from
   the set. A file that serves nothing (not PEM, too large, a key or certificate type TLS cannot
   use, a certificate without its key, a CA with its key) is left out with a warning.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes

from tlsproxy.tls import pemfile
from tlsproxy.tls.certstore import public_der

__all__ = ["ScannedPair", "pem_files", "scan"]

_SUFFIXES = frozenset({".pem", ".crt", ".cer", ".key"})
MAX_FILE_BYTES = 1024 * 1024  # a PEM chain is a few KiB; a file larger than this is no pair


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
    """The files rule 2 reads, sorted; ``skip`` names top-level files that are not to be served.

    A subfolder that cannot be listed (``lost+found``) holds nothing; the directory itself must
    be readable. Broken symbolic links are listed: reading them says what is wrong.
    """
    found = []
    for entry in _entries(directory, required=True):
        if entry.is_dir():
            found += [f for f in _entries(entry, required=False) if _candidate(f)]
        elif _candidate(entry) and entry.name not in skip:
            found.append(entry)
    return found


def scan(
    directory: Path, *, skip: Collection[str] = (), passphrase: bytes | None = None
) -> tuple[list[ScannedPair], list[str]]:
    """The pairs in ``directory`` (sorted by certificate path) and warnings for files left out."""
    folders: dict[Path, list[Path]] = {}
    for path in pem_files(directory, skip=skip):
        folders.setdefault(path.parent, []).append(path)
    certs: dict[bytes, _CertFile] = {}  # by leaf fingerprint: one entry per leaf (rule 3)
    pairs: dict[bytes, ScannedPair] = {}
    warnings: list[str] = []
    for files in folders.values():
        found, folder_warnings = _pairs_in_folder(files, passphrase)
        warnings += folder_warnings
        for fingerprint, (cert, pair) in found.items():
            earlier = certs.get(fingerprint)
            if earlier is None or cert.count > earlier.count:
                certs[fingerprint], pairs[fingerprint] = cert, pair
    return sorted(pairs.values(), key=lambda pair: pair.cert), warnings


class _Unusable(Exception):
    """A file that serves nothing; the message says why, for a warning (rule 4)."""


def _pairs_in_folder(
    files: list[Path], passphrase: bytes | None
) -> tuple[dict[bytes, tuple[_CertFile, ScannedPair]], list[str]]:
    """Rule 1 and 3 within one folder: the pairs by leaf fingerprint, and warnings."""
    certs: dict[bytes, _CertFile] = {}  # by leaf fingerprint: the longest chain kept
    cas: list[_CertFile] = []
    keys: dict[bytes, Path] = {}  # public key (DER) → the file that holds the private key
    warnings = []
    for path in files:
        try:
            blocks = _blocks(path)
            key = _key(path, blocks, passphrase)
            if key is not None:
                keys.setdefault(key, path)
            cert = _certificate(path, blocks)
        except _Unusable as e:
            warnings.append(f"{path}: {e}; not served")
            continue
        if cert is None:
            continue
        if _is_ca(cert.leaf):
            cas.append(cert)
            continue
        fingerprint = cert.leaf.fingerprint(hashes.SHA256())
        earlier = certs.get(fingerprint)
        if earlier is None or cert.count > earlier.count:
            certs[fingerprint] = cert
    found = {}
    for fingerprint, cert in certs.items():
        key_path = keys.get(public_der(cert.leaf))
        if key_path is None:
            warnings.append(f"{cert.path}: no key in its folder matches it; not served")
        else:
            found[fingerprint] = (cert, ScannedPair(cert.path, key_path))
    for ca in cas:
        if public_der(ca.leaf) in keys:
            warnings.append(
                f"{ca.path}: a CA certificate (it may sign certificates), not served; give it "
                "with --cert to serve it anyway"
            )
    return found, warnings


def _blocks(path: Path) -> list[tuple[bytes, bytes]]:
    """The file's PEM blocks; an unreadable file stops everything, a stray one is skipped."""
    if path.is_symlink() and not path.exists():
        raise pemfile.CertificateError(
            f"{path} is a symbolic link to a file that does not exist; fix the link or move it "
            "out of --certs-dir"
        )
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise _Unusable(f"{size} bytes, too large for a PEM certificate or key")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise pemfile.CertificateError(
            f"cannot read {path} in --certs-dir: {e.strerror}; make it readable by the user "
            "running tlsproxy, or move it out of --certs-dir"
        ) from None
    blocks = pemfile.pem_blocks(data)
    if not blocks:
        raise _Unusable("not a PEM file")
    return blocks


def _key(path: Path, blocks: list[tuple[bytes, bytes]], passphrase: bytes | None) -> bytes | None:
    """The public key (DER) of the private key in ``blocks``, if it holds one."""
    if not {label for label, _ in blocks} & pemfile.KEY_LABELS:
        return None
    try:
        return public_der(pemfile.private_key(path, blocks, path, passphrase=passphrase))
    except pemfile.CertificateError as e:
        if pemfile.is_encrypted(blocks):  # the passphrase is wrong or missing: say so, stop
            raise
        raise _Unusable("it holds a private key no TLS server can use (corrupt, or DSA)") from e


def _certificate(path: Path, blocks: list[tuple[bytes, bytes]]) -> _CertFile | None:
    if not {label for label, _ in blocks} & pemfile.CERT_LABELS:
        return None
    try:
        chain = pemfile.certificates(path, blocks, path, blocks)
        _is_ca(chain[0])
        public_der(chain[0])
    except (ValueError, UnsupportedAlgorithm, x509.DuplicateExtension) as e:
        raise _Unusable(f"not a certificate tlsproxy can use ({e})") from None
    return _CertFile(path, chain[0], len(chain))


def _entries(directory: Path, *, required: bool) -> Iterator[Path]:
    try:
        names = sorted(directory.iterdir())
    except FileNotFoundError:
        return
    except OSError as e:
        if not required:
            return
        raise pemfile.CertificateError(
            f"cannot read the certificates directory {directory}: {e.strerror}; make it "
            "readable by the user running tlsproxy"
        ) from None
    yield from (path for path in names if not path.name.startswith("."))


def _candidate(path: Path) -> bool:
    """A regular file (or a link to one, or a broken link) with a wanted suffix (rule 2)."""
    if path.suffix.lower() not in _SUFFIXES:
        return False
    return path.is_file() or (path.is_symlink() and not path.exists())


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

"""Loads a PEM certificate/key pair and explains, in one line with the fix, what is wrong with it.

STUB: the interface is fixed; the implementation is being written (see the helper brief).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes


class CertificateError(ValueError):
    """A certificate or key that cannot serve; the message is one line: what is wrong, and the fix."""


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
        raise NotImplementedError

    @property
    def not_after(self) -> datetime:
        raise NotImplementedError

    @property
    def fingerprint_sha256(self) -> str:
        """Colon-separated upper-case hex, as browsers and `openssl x509 -fingerprint` show it."""
        raise NotImplementedError

    def describe(self) -> list[str]:
        """Lines for the startup banner: names, validity, fingerprint, files."""
        raise NotImplementedError


def load_certificate(
    cert_path: Path,
    key_path: Path | None = None,
    *,
    passphrase: bytes | None = None,
    now: datetime,
) -> LoadedCertificate:
    """Load and check a PEM pair; ``key_path=None`` means the key is in ``cert_path`` too."""
    raise NotImplementedError


def names_missing(certificate: LoadedCertificate, wanted: Sequence[str]) -> list[str]:
    """The names of ``wanted`` (DNS names or IP literals) that ``certificate`` does not cover."""
    raise NotImplementedError

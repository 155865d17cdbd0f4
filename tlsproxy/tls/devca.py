"""The local development CA and its leaf certificate, kept under ``--certs-dir``.

STUB: the interface is fixed; the implementation is being written (see the helper brief).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


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
    raise NotImplementedError


def trust_instructions(ca_cert_path: Path) -> list[str]:
    """How to make clients trust the CA (curl, browsers, Python, Node), one line each."""
    raise NotImplementedError

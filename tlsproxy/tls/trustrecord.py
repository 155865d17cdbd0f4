"""What `tlsproxy trust` works with and keeps: the CA as the stores see it, each step's outcome,
and the record of the stores it installed the CA in.

Rules:

1. The record, ``trust-installed.json`` beside the CA, belongs to one CA: a record of another CA
   (or one that cannot be read) counts as empty.
2. Files are written to a temporary file and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tlsproxy.tls.devca import write_atomically
from tlsproxy.tls.systemstore import system_commands

RECORD_NAME = "trust-installed.json"


class Outcome(Enum):
    """What one step did to one store."""

    INSTALLED = "installed"
    PRESENT = "already trusted"
    REMOVED = "removed"
    ABSENT = "not there"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Entry:
    """A store this command installed the CA in: a ``kind`` ("nss" or "debian") and a path."""

    kind: str
    location: str


@dataclass(frozen=True)
class Step:
    """The result of one store's step: the line to print and the record change it implies."""

    store: str
    outcome: Outcome
    detail: str
    entry: Entry | None = None

    def line(self) -> str:
        """``store: outcome: detail``, the one line this step prints."""
        return f"{self.store}: {self.outcome.value}: {self.detail}"


@dataclass(frozen=True)
class CA:
    """The development CA as the stores see it: its file, fingerprints and entry name."""

    path: Path
    der: bytes

    @classmethod
    def load(cls, path: Path) -> CA:
        """The CA certificate in ``path`` (PEM), absolute so printed commands work anywhere."""
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        return cls(path.absolute(), cert.public_bytes(serialization.Encoding.DER))

    @property
    def sha256(self) -> str:
        """The SHA-256 fingerprint, lower-case hex: what every check compares."""
        return hashlib.sha256(self.der).hexdigest()

    @property
    def sha1(self) -> str:
        """The SHA-1 thumbprint, upper-case hex: how macOS and Windows tools name a certificate."""
        return hashlib.sha1(self.der, usedforsecurity=False).hexdigest().upper()

    @property
    def name(self) -> str:
        """The NSS nickname and file name stem, unique to this CA."""
        return f"tlsproxy-dev-ca-{self.sha256[:16]}"

    @property
    def pem(self) -> bytes:
        """The CA as PEM, the form every store here reads."""
        return x509.load_der_x509_certificate(self.der).public_bytes(serialization.Encoding.PEM)

    def by_hand(self, kind: str, *, uninstall: bool) -> str:
        """The commands that install (or remove) the CA in ``kind``'s system store by hand."""
        return system_commands(
            kind, ca_path=self.path, name=self.name, sha1=self.sha1, uninstall=uninstall
        )

    def matches(self, pem: bytes) -> bool:
        """Whether any certificate in ``pem`` is this CA (compared byte for byte)."""
        try:
            certs = x509.load_pem_x509_certificates(pem)
        except ValueError:
            return False
        return any(c.public_bytes(serialization.Encoding.DER) == self.der for c in certs)


def read_record(path: Path, ca: CA) -> set[Entry]:
    """The stores a previous run installed this CA in (nothing for a missing or foreign record)."""
    try:
        data = json.loads(path.read_text())
        if data.get("ca_sha256") != ca.sha256:
            return set()
        return {Entry(str(item["store"]), str(item["location"])) for item in data["installed"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def write_record(path: Path, ca: CA, entries: Iterable[Entry]) -> None:
    """Keep ``entries`` in the record; with none left, remove the record."""
    ordered = sorted(entries, key=lambda e: (e.kind, e.location))
    if not ordered:
        path.unlink(missing_ok=True)
        return
    data = {
        "ca_sha256": ca.sha256,
        "installed": [{"store": e.kind, "location": e.location} for e in ordered],
    }
    write_atomically(path, (json.dumps(data, indent=2) + "\n").encode(), mode=0o644)

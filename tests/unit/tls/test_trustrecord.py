"""tlsproxy.tls.trustrecord: the CA as the stores see it, and the record of where it went."""

from __future__ import annotations

import json
from pathlib import Path

from tests.certfactory import NOW
from tlsproxy.tls.devca import ensure_dev_certificates
from tlsproxy.tls.trustrecord import CA, RECORD_NAME, Entry, read_record, write_record


def dev_ca(certs_dir: Path) -> CA:
    """A development CA made by tlsproxy's own code in ``certs_dir``."""
    return CA.load(ensure_dev_certificates(certs_dir, (), now=NOW).ca_cert_path)


def test_entry_name_carries_the_fingerprint(tmp_path: Path) -> None:
    """Each CA gets its own name, from its SHA-256, so one CA is never taken for another."""
    first, second = dev_ca(tmp_path / "a"), dev_ca(tmp_path / "b")

    assert first.name == f"tlsproxy-dev-ca-{first.sha256[:16]}"
    assert first.name != second.name
    assert first.matches((tmp_path / "a" / "ca.pem").read_bytes())
    assert not first.matches((tmp_path / "b" / "ca.pem").read_bytes())
    assert not first.matches(b"not a certificate")


def test_commands_by_hand_name_this_ca(tmp_path: Path) -> None:
    """The system-store commands carry this CA's path, entry name and SHA-1 thumbprint."""
    ca = dev_ca(tmp_path / "certs")

    assert f"{ca.path} /usr/local/share/ca-certificates/{ca.name}.crt" in ca.by_hand(
        "debian", uninstall=False
    )
    assert f"certutil -delstore ROOT {ca.sha1}" in ca.by_hand("windows", uninstall=True)


def test_record_belongs_to_one_ca(tmp_path: Path) -> None:
    """The record is read back for its CA only; an empty one is removed; junk reads as empty."""
    ca, other = dev_ca(tmp_path / "a"), dev_ca(tmp_path / "b")
    record = tmp_path / RECORD_NAME
    entries = {Entry("nss", "/home/me/.pki/nssdb"), Entry("debian", "/")}

    write_record(record, ca, entries)

    assert read_record(record, ca) == entries
    assert read_record(record, other) == set()
    assert json.loads(record.read_text())["ca_sha256"] == ca.sha256
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    write_record(record, ca, set())
    assert not record.exists()
    record.write_text("{not json")
    assert read_record(record, ca) == set()

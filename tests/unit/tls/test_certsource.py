"""tlsproxy.tls.certsource: the development certificate, read-only (a ``--workers`` worker's).

The rest of CertificateSource (pairs, --certs-dir scans, the default) is tested with the sets
it makes, in test_certset.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.certfactory import NOW
from tlsproxy.tls.certsource import CertificateSource
from tlsproxy.tls.pemfile import CertificateError


def test_without_writing_the_development_files_are_loaded_as_they_are(tmp_path: Path) -> None:
    """A worker serves the leaf its supervisor made, even one due for renewal, and writes
    nothing: N workers renewing at once would leave a key and a certificate that do not match."""
    writer = CertificateSource(pairs=(), passphrase_file=None, certs_dir=tmp_path / "certs")
    made, _ = writer.load(now=NOW)
    reader = replace(writer, writes_dev_files=False)
    files = sorted((tmp_path / "certs").iterdir())
    before = {path: path.stat().st_mtime_ns for path in files}
    later = made.default.not_after.replace(day=1)  # within 30 days of expiry: renewal due
    served, dev = reader.load(now=later)
    assert dev is not None
    assert served.default.fingerprint_sha256 == made.default.fingerprint_sha256
    assert {path: path.stat().st_mtime_ns for path in files} == before
    assert sorted((tmp_path / "certs").iterdir()) == files


def test_without_writing_a_missing_development_file_is_an_error_naming_who_makes_it(
    tmp_path: Path,
) -> None:
    """No leaf: not made here, but a CertificateError that says the supervisor makes it."""
    writer = CertificateSource(pairs=(), passphrase_file=None, certs_dir=tmp_path / "certs")
    writer.load(now=NOW)
    (tmp_path / "certs" / "localhost-key.pem").unlink()
    reader = replace(writer, writes_dev_files=False)
    with pytest.raises(CertificateError, match=r"localhost-key\.pem is missing; .*supervisor"):
        reader.load(now=NOW)
    assert not (tmp_path / "certs" / "localhost-key.pem").exists()

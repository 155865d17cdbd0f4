"""Files made fresh for every run: an ECDSA P-256 certificate and the backend's bodies."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

SMALL_BODY = b"x" * 99 + b"\n"  # the 100-byte response of the keep-alive scenario
MIB = 1024 * 1024
GIB = 1024 * MIB


@dataclass(frozen=True)
class Fixtures:
    """Paths inside the run's temporary directory."""

    root: Path
    cert: Path
    key: Path
    www: Path  # document root of the backend: small, 1m, big (sparse)
    upload_file: Path  # sparse file streamed up by the memory scenario
    stream_bytes: int


def make_fixtures(root: Path, *, openssl: str, stream_bytes: int) -> Fixtures:
    """Generate the certificate pair and the bodies under ``root``."""
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    os.chmod(key, 0o600)
    www = root / "www"
    www.mkdir()
    (www / "small").write_bytes(SMALL_BODY)
    (www / "1m").write_bytes(os.urandom(MIB))
    # Sparse files: streamed from the page cache of a hole, they cost no disk.
    with open(www / "big", "wb") as f:
        f.truncate(stream_bytes)
    upload_file = root / "upload.bin"
    with open(upload_file, "wb") as f:
        f.truncate(stream_bytes)
    return Fixtures(
        root=root, cert=cert, key=key, www=www, upload_file=upload_file,
        stream_bytes=stream_bytes,
    )  # fmt: skip

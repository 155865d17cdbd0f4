"""Helpers for the TLS tests: the real `openssl` and `certutil`, and real handshakes in memory.

In-memory handshakes against MemoryTLS are ``tests.unit.tls.test_memorytls.TLSPair``; clients
are Python's ``ssl`` over memory BIOs (a client users really have), made by
:func:`client_context`.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.certfactory import Issued, cert_pem

OpenSSL = Callable[..., bytes]


@pytest.fixture
def certutil() -> str:
    """The path of NSS's certutil; skips without it (Debian package libnss3-tools)."""
    program = shutil.which("certutil")
    if program is None:
        pytest.skip("NSS's certutil is not installed (apt-get install libnss3-tools)")
    return program


@pytest.fixture
def openssl(tmp_path: Path) -> OpenSSL:
    """Run ``openssl ARGS`` in ``tmp_path`` and return its stdout; skips without the binary."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command-line tool is not installed")

    def run(*args: str, stdin: bytes | None = None) -> bytes:
        return subprocess.run(
            ["openssl", *args],
            cwd=tmp_path,
            input=stdin,
            capture_output=True,
            check=True,
        ).stdout

    return run


def client_context(
    ca: Issued,
    *,
    versions: tuple[ssl.TLSVersion, ssl.TLSVersion] | None = None,
    alpn: list[str] | None = None,
    ciphers: str | None = None,
) -> ssl.SSLContext:
    """A verifying client context that trusts ``ca``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=cert_pem(ca.cert).decode())
    if versions is not None:
        context.minimum_version, context.maximum_version = versions
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    if ciphers is not None:
        context.set_ciphers(ciphers)
    return context

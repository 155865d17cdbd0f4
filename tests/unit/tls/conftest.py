"""Helpers for the TLS tests: the real `openssl` and `certutil`, and real handshakes in memory.

`handshake` runs Twisted's TLSMemoryBIOProtocol (the server side, as a listener wraps it) over a
StringTransport against Python's ``ssl`` module over memory BIOs (a client users really have).
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

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


@dataclass
class Handshake:
    """The outcome of one in-memory handshake, seen from both ends."""

    client: ssl.SSLObject
    server: TLSMemoryBIOProtocol
    error: ssl.SSLError | None
    server_disconnected: bool


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


def handshake(
    creator: IOpenSSLServerConnectionCreator,
    context: ssl.SSLContext,
    *,
    server_hostname: str = "localhost",
    session: ssl.SSLSession | None = None,
) -> Handshake:
    """Run a TLS handshake between ``context`` and a server using ``creator``, in memory."""
    factory = TLSMemoryBIOFactory(creator, False, Factory.forProtocol(Protocol), Clock())
    server = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8443))
    assert isinstance(server, TLSMemoryBIOProtocol)
    transport = StringTransport()
    server.makeConnection(transport)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname, session=session)
    error: ssl.SSLError | None = None
    done = False
    for _ in range(10):
        try:
            if done:
                client.read(1)  # let the client take in post-handshake messages (TLS 1.3 tickets)
            else:
                client.do_handshake()
                done = True
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            error = exc
            break
        if sent := outgoing.read():
            server.dataReceived(sent)
        incoming.write(transport.value())
        transport.clear()
    return Handshake(client, server, error, transport.disconnecting)

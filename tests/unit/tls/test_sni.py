"""tlsproxy.tls.sni: the handshake's certificate chosen by name, in memory, with no file work."""

from __future__ import annotations

import contextlib
import ssl
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from tests.certfactory import NOW, Issued, make_ca, make_leaf, write_pair
from tests.unit.tls.conftest import client_context
from tlsproxy.tls.certset import CertificateSet, certificate_set
from tlsproxy.tls.certstore import load_certificate
from tlsproxy.tls.policy import server_ssl_context
from tlsproxy.tls.sni import server_name, sni_context

_watching: list[str] = []  # audit events seen while a test watches (sys.addaudithook is forever)
_FILE_EVENTS = ("open", "os.listdir", "os.scandir", "os.stat", "os.remove", "os.rename")


def _audit(event: str, _: tuple[object, ...]) -> None:
    if _watching and event in _FILE_EVENTS:
        _watching.append(event)


sys.addaudithook(_audit)


def unverifying_client(ca: Issued) -> ssl.SSLContext:
    client_ctx = client_context(ca)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE  # NOW is a fixed date: which certificate came matters
    return client_ctx


def handshake(
    server_context: ssl.SSLContext,
    ca: Issued,
    name: str | None,
    client_ctx: ssl.SSLContext | None = None,
) -> tuple[ssl.SSLObject, bytes]:
    """Run a handshake in memory sending ``name`` as SNI: (server side, certificate DER seen)."""
    client_ctx = client_ctx or unverifying_client(ca)
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_context.wrap_bio(server_in, server_out, server_side=True)
    client = client_ctx.wrap_bio(client_in, client_out, server_hostname=name)
    for _ in range(10):
        with contextlib.suppress(ssl.SSLWantReadError):
            client.do_handshake()  # raises the server's alert, once it has one to read
            break
        server_in.write(client_out.read())
        with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLError):  # its alert is the test
            server.do_handshake()
        client_in.write(server_out.read())
    der = client.getpeercert(binary_form=True)
    assert der is not None
    return server, der


@pytest.fixture
def sites(tmp_path: Path) -> tuple[Issued, list[Issued], CertificateSet]:
    ca = make_ca()
    leaves = [
        make_leaf(ca, names=("default.test",)),
        make_leaf(ca, names=("*.example.test",)),
        make_leaf(ca, names=("app.example.test",)),
    ]
    loaded = []
    for index, leaf in enumerate(leaves):
        cert, key = write_pair(tmp_path, leaf, cert_name=f"{index}.pem", key_name=f"{index}.key")
        loaded.append(load_certificate(cert, key, now=NOW))
    return ca, leaves, certificate_set(loaded)


def test_each_name_gets_its_certificate_and_is_remembered(
    sites: tuple[Issued, list[Issued], CertificateSet],
) -> None:
    ca, leaves, served = sites
    context = sni_context(served, server_ssl_context)
    for name, expected in [
        ("app.example.test", 2),
        ("www.example.test", 1),
        ("other.test", 0),
        (None, 0),
    ]:
        server, der = handshake(context, ca, name)
        assert der == leaves[expected].cert.public_bytes(Encoding.DER)
        assert server_name(server) == name


def test_choosing_reads_no_file_even_for_unknown_names(
    sites: tuple[Issued, list[Issued], CertificateSet], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rule 3 of certset: two dictionary reads per handshake, never the file system.

    OpenSSL's own file reads raise no audit event: loading a certificate or CA is watched too.
    """
    ca, _, served = sites
    context = sni_context(served, server_ssl_context)
    client = unverifying_client(ca)  # made before watching: only the server side is watched
    for method in ("load_cert_chain", "load_verify_locations"):
        real = getattr(ssl.SSLContext, method)

        def watched(
            self: ssl.SSLContext, *args: Any, _real: Any = real, _name: str = method, **kwargs: Any
        ) -> Any:
            if _watching:
                _watching.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(ssl.SSLContext, method, watched)
    _watching.append("watching")
    try:
        for name in ["unknown.test", "x.example.test", "app.example.test", "a.b.c.d", None]:
            handshake(context, ca, name, client)
    finally:
        seen, _watching[:] = _watching[1:], []
    assert seen == []


def test_the_watch_sees_file_work_when_there_is_some(
    tmp_path: Path, sites: tuple[Issued, list[Issued], CertificateSet]
) -> None:
    """The audit hook above can fail: reading a file while watching is seen, and so is building
    a context, which is where OpenSSL reads certificate files."""
    _watching.append("watching")
    try:
        (tmp_path / "x").write_text("x")
        server_ssl_context(sites[2].default)
    finally:
        seen, _watching[:] = _watching[1:], []
    assert "open" in seen


def test_strict_ends_the_handshake_with_unrecognized_name(
    sites: tuple[Issued, list[Issued], CertificateSet],
) -> None:
    ca, leaves, served = sites
    strict = certificate_set(served.certificates, strict=True)
    context = sni_context(strict, server_ssl_context)
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        handshake(context, ca, "unknown.test")
    _, der = handshake(context, ca, None)
    assert der == leaves[0].cert.public_bytes(Encoding.DER)

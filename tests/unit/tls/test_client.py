"""tlsproxy.tls.client: the TLS client side for an https:// backend, and its failures in words.

Real handshakes in memory (``twisted.test.iosim``) against servers with certificates made here.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from twisted.internet import error as net_error
from twisted.internet import ssl
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from tests.certfactory import Issued, make_ca, make_leaf
from tlsproxy.tls.client import BackendTLS, client_tls, describe_tls_failure


def tls_address(*, ca_pem: bytes | None = None) -> BackendTLS:
    return BackendTLS(server_name="backend.test", ca_pem=ca_pem)


def test_insecure_https_backend_still_sends_sni_but_verifies_nothing() -> None:
    """--insecure-backend: the client side sends the server name, and the context verifies
    no certificate."""
    creator = client_tls(BackendTLS(server_name="backend.test", verify=False))
    connection = creator.clientConnectionForTLS(None)  # type: ignore[arg-type]
    assert connection.get_servername() == b"backend.test"
    assert connection.get_context().get_verify_mode() == SSL.VERIFY_NONE


def handshake(tls: BackendTLS, server: Issued) -> list[str]:
    """A real TLS handshake in memory between ``client_tls(tls)`` and a server with ``server``:
    what the client side saw (``"verified"``, or the failure's type name)."""
    seen: list[str] = []

    @implementer(IHandshakeListener)
    class Seen(Protocol):
        def handshakeCompleted(self) -> None:
            seen.append("verified")

        def connectionLost(self, reason: Failure = net_error.ConnectionDone) -> None:  # type: ignore[assignment]
            if not seen:
                seen.append(type(reason.value).__name__)

    server_options = ssl.CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(server.key),  # type: ignore[arg-type]
        certificate=crypto.X509.from_cryptography(server.cert),
        acceptableProtocols=[b"http/1.1"],  # without it, OpenSSL alerts any ALPN client
    )
    server_protocol = TLSMemoryBIOFactory(
        server_options, False, Factory.forProtocol(Protocol)
    ).buildProtocol(None)
    client_protocol = TLSMemoryBIOFactory(
        client_tls(tls), True, Factory.forProtocol(Seen)
    ).buildProtocol(None)
    pump = iosim.connect(
        server_protocol,
        iosim.makeFakeServer(server_protocol),
        client_protocol,
        iosim.makeFakeClient(client_protocol),
    )
    pump.flush()
    return seen


# Twisted's CertificateOptions hands pyOpenSSL X509/PKey objects to pyOpenSSL, which warns.
@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
def test_backend_ca_verifies_the_backend_and_nothing_else_does() -> None:
    """With --backend-ca, a certificate it signed for the name verifies; one for another name,
    or one signed by another CA (the system store is not consulted), does not."""
    now = datetime.now(UTC)
    ca, other_ca = make_ca(now=now), make_ca(now=now)
    tls = BackendTLS(server_name="backend.test", ca_pem=ca.cert_pem)
    assert handshake(tls, make_leaf(ca, names=["backend.test"], now=now)) == ["verified"]
    assert handshake(tls, make_leaf(ca, names=["other.test"], now=now)) == ["VerificationError"]
    assert handshake(tls, make_leaf(other_ca, names=["backend.test"], now=now)) == ["Error"]


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (VerificationError(errors=[]), "it is not issued to that name"),
        (SSL.Error([("SSL routines", "", "certificate verify failed")]), "--backend-ca PEM"),
        (SSL.Error([("SSL routines", "", "wrong version number")]), "wrong version number"),
        (net_error.ConnectionLost(), "closed the connection during the TLS handshake"),
    ],
)
def test_tls_failures_are_explained(error: Exception, said: str) -> None:
    """Each way the handshake fails is said in words: name mismatch, untrusted chain, not TLS
    at all, or a close."""
    message = describe_tls_failure(Failure(error), tls_address(), port=8443)
    assert said in message


def test_untrusted_chain_names_where_trust_came_from() -> None:
    """The message says whether the system store or the --backend-ca file was used."""
    failure = Failure(SSL.Error([("SSL routines", "", "certificate verify failed")]))
    system = describe_tls_failure(failure, tls_address(), port=443)
    given = describe_tls_failure(failure, tls_address(ca_pem=b"x"), port=443)
    assert "the system store" in system
    assert "the --backend-ca file" in given

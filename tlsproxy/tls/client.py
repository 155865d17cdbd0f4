"""TLS to an ``https://`` backend: the client side of the handshake, and why it failed.

Rules:

1. Verified by default: the certificate must chain to ``--backend-ca`` (or the system store)
   and be issued to the server name, checked by service-identity. ``--insecure-backend``
   verifies nothing but still sends SNI.
2. The context is built once per backend and shared by every connection to it.
3. A failed handshake is said in words, with the flag that fixes it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer


@dataclass(frozen=True)
class BackendTLS:
    """How to speak TLS to an ``https://`` backend (rule 1)."""

    server_name: str  # sent as SNI and verified against the certificate (a name or an IP)
    ca_pem: bytes | None = None  # --backend-ca: the certificates trusted; None: the system store
    verify: bool = True  # False only with --insecure-backend


def client_tls(tls: BackendTLS) -> IOpenSSLClientConnectionCreator:
    """The TLS client side for ``tls``: verified with service-identity unless told otherwise.

    Built once per pool: the context (and the trust store it loads) is shared by every
    connection.
    """
    if not tls.verify:
        return _UnverifiedClientTLS(tls.server_name)
    trust_root: Any = ssl.platformTrust()
    if tls.ca_pem is not None:
        trust_root = ssl.trustRootFromCertificates(
            [
                ssl.Certificate.loadPEM(cert.public_bytes(Encoding.PEM))
                for cert in x509.load_pem_x509_certificates(tls.ca_pem)
            ]
        )
    return ssl.optionsForClientTLS(
        tls.server_name, trustRoot=trust_root, acceptableProtocols=[b"http/1.1"]
    )


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedClientTLS:
    """--insecure-backend: TLS without checking the certificate, still sending SNI.

    ``optionsForClientTLS`` always verifies, and a bare ``CertificateOptions`` sends no SNI (a
    backend serving several names would answer with the wrong certificate, or refuse).
    """

    def __init__(self, server_name: str) -> None:
        options = ssl.CertificateOptions(verify=False, acceptableProtocols=[b"http/1.1"])
        self._context = options.getContext()
        self._sni: bytes | None = None
        try:
            ipaddress.ip_address(server_name)
        except ValueError:  # SNI carries names only (RFC 6066, section 3)
            self._sni = server_name.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:  # noqa: N803
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self._sni is not None:
            connection.set_tlsext_host_name(self._sni)
        connection.set_connect_state()
        return connection


def describe_tls_failure(reason: Failure, tls: BackendTLS, *, port: int) -> str:
    """Why the TLS handshake with the backend failed, and the flag that fixes it, in words."""
    name = tls.server_name
    testing = "or, for testing only, --insecure-backend"
    if reason.check(VerificationError):
        return (
            f"presented a certificate that did not verify for {name}: it is not issued to "
            f"that name; connect by a name the certificate holds, or set the name to check "
            f"with --backend-server-name, {testing}"
        )
    error = reason.value
    if isinstance(error, SSL.Error):
        said = _openssl_reasons(error)
        if "certificate verify failed" in said:
            trusted = "the --backend-ca file" if tls.ca_pem is not None else "the system store"
            return (
                f"presented a certificate that did not verify for {name} (not signed by a CA "
                f"in {trusted}, self-signed, or expired); give the CA that signed it with "
                f"--backend-ca PEM, {testing}"
            )
        return (
            f"failed the TLS handshake ({said or 'no reason given'}); is it serving https "
            f"on port {port}, or plain http (then use an http:// --backend)?"
        )
    return "closed the connection during the TLS handshake; is it serving https there?"


def _openssl_reasons(error: SSL.Error) -> str:
    """The reason strings of a pyOpenSSL error (its args are a list of (lib, func, reason))."""
    entries = error.args[0] if error.args and isinstance(error.args[0], list) else []
    reasons = [str(entry[-1]) for entry in entries if isinstance(entry, tuple) and entry]
    return ", ".join(reasons) or str(error)

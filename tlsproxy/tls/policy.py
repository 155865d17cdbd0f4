"""TLS policy: versions, ciphers, curves, ALPN and sessions for every server context.

Rules:

1. TLS 1.2 is the floor; TLS 1.3 is on.
2. Ciphers are the ECDHE + AEAD part of Twisted's default list, in Twisted's order: forward
   secrecy always, no CBC, no static-RSA key exchange. TLS 1.3 suites are OpenSSL's defaults.
   Key-exchange groups are OpenSSL's defaults (X25519 and P-256 first).
3. ALPN is always set and always offers http/1.1: with Twisted 26 and pyOpenSSL 26, a context
   without ALPN answers every client that offers ALPN with an ``internal_error`` alert.
4. The server session cache is on, so clients resume within one process (no shared ticket keys:
   pyOpenSSL cannot set them). Stateless tickets stay off, as Twisted defaults, so the TLS 1.2
   ticket key never outlives forward secrecy.
5. Idle connections release their record buffers (``SSL_MODE_RELEASE_BUFFERS``).
6. All of this is decided once per certificate, when the context is built; no Python runs per
   handshake beyond Twisted's own ALPN callback.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator

from tlsproxy.tls.certstore import LoadedCertificate

_SERVER_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)

HTTP1_ALPN: tuple[bytes, ...] = (b"http/1.1",)
HTTP2_ALPN: tuple[bytes, ...] = (b"h2", b"http/1.1")

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
CIPHERS = ssl.AcceptableCiphers.fromOpenSSLCipherString(
    "TLS13-AES-256-GCM-SHA384:TLS13-CHACHA20-POLY1305-SHA256:TLS13-AES-128-GCM-SHA256:"
    "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!MD5:!DSS"
)


def server_connection_creator(
    certificate: LoadedCertificate, *, alpn: Sequence[bytes] = HTTP1_ALPN
) -> IOpenSSLServerConnectionCreator:
    """The object TLSMemoryBIOFactory needs, with our policy applied."""
    protocols = list(alpn)
    if b"http/1.1" not in protocols:
        raise ValueError(f"ALPN must offer http/1.1, got {protocols!r}")
    key = certificate.key
    if not isinstance(key, _SERVER_KEY_TYPES):
        raise ValueError(f"no TLS server can use a {type(key).__name__}")  # certstore refuses it
    options = ssl.CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),
        certificate=crypto.X509.from_cryptography(certificate.leaf),
        extraCertChain=[crypto.X509.from_cryptography(c) for c in certificate.chain],
        raiseMinimumTo=MINIMUM_VERSION,
        acceptableCiphers=CIPHERS,
        acceptableProtocols=protocols,
        enableSessions=True,
    )
    # Build the SSL context now: a bad pair fails at load (startup, reload), not at the first
    # handshake, and every connection then shares this context and its session cache. Twisted
    # hands pyOpenSSL the X509/PKey objects pyOpenSSL 24+ deprecates; that is Twisted's to
    # change, and it happens once per certificate, here, so say it once in the code, not per run.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Passing pyOpenSSL", category=DeprecationWarning)
        context = options.getContext()
    # Idle connections hand their TLS record buffers back to the allocator (nginx does the same):
    # tens of KiB per idle keep-alive connection otherwise.
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    return options

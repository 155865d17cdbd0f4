"""TLS policy: versions, ciphers, curves, ALPN and sessions for every front TLS context.

The front's TLS is CPython's ``ssl`` (:mod:`tlsproxy.tls.memorytls`), chosen by measurement over
Twisted's TLSMemoryBIOProtocol on pyOpenSSL: less Python per record, and idle connections hold
less memory (docs/benchmarks.md). Rules:

1. TLS 1.2 is the floor; TLS 1.3 is on.
2. Ciphers are the ECDHE + AEAD part of Twisted's default list, in Twisted's order: forward
   secrecy always, no CBC, no static-RSA key exchange. TLS 1.3 suites are OpenSSL's defaults.
   Key-exchange groups are OpenSSL's defaults (X25519 and P-256 first).
3. ALPN is always set and always offers http/1.1 (clients without ALPN speak it).
4. The server session cache is on, so clients resume within one process (no shared ticket
   keys). Stateless tickets stay off, so no ticket key outlives forward secrecy.
5. Idle connections release their record buffers (``SSL_MODE_RELEASE_BUFFERS``).
6. All of this is decided once per certificate, when the context is built; no Python runs per
   handshake beyond the SNI choice (:mod:`tlsproxy.tls.sni`).
7. Client certificates (``--client-ca``): the context asks every client for
   one and verifies it against those CAs alone (``required``: no certificate, no handshake;
   ``optional``: none is accepted, a bad one never is). See docs/mtls.md.
"""

from __future__ import annotations

import os
import ssl as stdlib_ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from tlsproxy.tls.certstore import LoadedCertificate

_SERVER_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)

HTTP1_ALPN: tuple[bytes, ...] = (b"http/1.1",)
HTTP2_ALPN: tuple[bytes, ...] = (b"h2", b"http/1.1")

CIPHER_STRING = (
    "TLS13-AES-256-GCM-SHA384:TLS13-CHACHA20-POLY1305-SHA256:TLS13-AES-128-GCM-SHA256:"
    "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!MD5:!DSS"
)


def _checked(certificate: LoadedCertificate, alpn: Sequence[bytes]) -> list[str]:
    """ALPN names, checked to offer http/1.1 (rule 3), for a key a server can use."""
    protocols = list(alpn)
    if b"http/1.1" not in protocols:
        raise ValueError(f"ALPN must offer http/1.1, got {protocols!r}")
    key = certificate.key
    if not isinstance(key, _SERVER_KEY_TYPES):
        raise ValueError(f"no TLS server can use a {type(key).__name__}")  # certstore refuses it
    return [name.decode("ascii") for name in protocols]


CLIENT_AUTH_MODES = ("required", "optional")


def server_ssl_context(
    certificate: LoadedCertificate,
    *,
    alpn: Sequence[bytes] = HTTP1_ALPN,
    client_ca: bytes | None = None,
    client_auth: str = "required",
) -> stdlib_ssl.SSLContext:
    """The front's TLS context for ``certificate`` (one per certificate; :mod:`tlsproxy.tls.sni`).

    Rule 4 here: the session cache is on and stateless tickets are off (``OP_NO_TICKET``), so
    TLS 1.3 "tickets" are cache entries and no ticket key outlives forward secrecy. One ticket
    per handshake, not OpenSSL's two: each costs the server an encryption and a cache entry per
    handshake, and a client reconnects with one. Client-initiated renegotiation is refused
    (nginx refuses it too): MemoryTLS encrypts each write at once and has no place to hold one
    while a renegotiation runs.

    ``client_ca``: PEM CA certificate(s) that client certificates must chain to (rule 7), with
    ``client_auth`` "required" or "optional"; None asks clients for no certificate.
    """
    if client_auth not in CLIENT_AUTH_MODES:
        raise ValueError(f"client_auth must be 'required' or 'optional', got {client_auth!r}")
    protocols = _checked(certificate, alpn)
    context = stdlib_ssl.SSLContext(stdlib_ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = stdlib_ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHER_STRING)
    context.options |= (
        stdlib_ssl.OP_NO_COMPRESSION | stdlib_ssl.OP_NO_TICKET | stdlib_ssl.OP_NO_RENEGOTIATION
    )
    context.num_tickets = 1
    context.set_alpn_protocols(protocols)
    # CPython already sets SSL_MODE_RELEASE_BUFFERS (rule 5) and a session ID context.
    _load_chain(context, certificate)
    if client_ca is not None:
        # Only these CAs: the context starts with an empty store (no system CAs are loaded).
        context.load_verify_locations(cadata=client_ca.decode("ascii"))
        context.verify_mode = (
            stdlib_ssl.CERT_REQUIRED if client_auth == "required" else stdlib_ssl.CERT_OPTIONAL
        )
    return context


def _load_chain(context: stdlib_ssl.SSLContext, certificate: LoadedCertificate) -> None:
    """Give ``context`` the leaf, its chain and the key, already decrypted, from memory.

    ``ssl`` loads only from files: the PEM lives in an owner-only file in a private directory
    (0700) for the duration of one call, and the key is never written encrypted with a
    passphrase we would then have to pass along.
    """
    pem = b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in (certificate.leaf, *certificate.chain)
    ) + certificate.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with tempfile.TemporaryDirectory(prefix="tlsproxy-") as directory:
        path = Path(directory, "server.pem")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(pem)
            context.load_cert_chain(path)
        finally:
            path.unlink()

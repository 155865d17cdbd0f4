"""TLS policy: versions, ciphers, curves, ALPN and sessions for every server context.

STUB: the interface is fixed; the implementation is being written (see the helper brief).
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.interfaces import IOpenSSLServerConnectionCreator

from tlsproxy.tls.certstore import LoadedCertificate

HTTP1_ALPN: tuple[bytes, ...] = (b"http/1.1",)


def server_connection_creator(
    certificate: LoadedCertificate, *, alpn: Sequence[bytes] = HTTP1_ALPN
) -> IOpenSSLServerConnectionCreator:
    """The object TLSMemoryBIOFactory needs, with our policy applied."""
    raise NotImplementedError

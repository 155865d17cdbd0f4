"""The certificate for each handshake, chosen by the SNI name the client sent (stdlib engine).

One ``ssl.SSLContext`` is built per certificate when the set loads, all with the same policy;
the default's SNI callback moves a handshake to another one by name (:mod:`certset`'s rules).
The name the client sent is kept on the connection for :mod:`tlsproxy.routing`, which answers
421 to a request whose Host belongs elsewhere.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

from tlsproxy.tls.certset import CertificateSet
from tlsproxy.tls.certstore import LoadedCertificate

__all__ = ["server_name", "sni_context"]

_SENT_NAME = "tlsproxy_server_name"  # set on the ssl.SSLObject by the callback


def sni_context(
    certificates: CertificateSet, build: Callable[[LoadedCertificate], ssl.SSLContext]
) -> ssl.SSLContext:
    """The default certificate's context, choosing among ``build``'s contexts for each name."""
    contexts = [build(certificate) for certificate in certificates.certificates]
    index_for = certificates.index_for

    def choose(connection: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> int | None:
        setattr(connection, _SENT_NAME, name)
        index = index_for(name)
        if index is None:  # --strict-sni
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        if index:
            connection.context = contexts[index]
        return None

    contexts[0].sni_callback = choose
    return contexts[0]


def server_name(connection: ssl.SSLObject) -> str | None:
    """The SNI name the client sent on ``connection`` (None: none, or no handshake yet)."""
    name: str | None = getattr(connection, _SENT_NAME, None)
    return name

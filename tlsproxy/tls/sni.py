"""The certificate for each handshake, chosen by the SNI name the client sent.

One ``ssl.SSLContext`` is built per certificate when the set loads, all with the same policy;
the default's SNI callback moves a handshake to another one by name (:mod:`certset`'s rules).
The name the client sent is kept on the connection for :mod:`tlsproxy.routing`, which answers
421 to a request whose Host belongs elsewhere.
"""

from __future__ import annotations

import ssl
import sys
from collections.abc import Callable
from typing import Any

from tlsproxy.tls.certset import CertificateSet
from tlsproxy.tls.certstore import LoadedCertificate

__all__ = ["server_name", "sni_context"]

_SENT_NAME = "tlsproxy_server_name"  # set on the ssl.SSLObject by the callback


def sni_context(
    certificates: CertificateSet, build: Callable[[LoadedCertificate], ssl.SSLContext]
) -> ssl.SSLContext:
    """The default certificate's context, choosing among ``build``'s contexts for each name."""
    contexts = [build(certificate) for certificate in certificates.certificates]
    index_for, default = certificates.index_for, certificates.default_index

    def choose(connection: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> int | None:
        setattr(connection, _SENT_NAME, name)
        index = index_for(name)
        if index is None:  # --strict-sni
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        if index != default:
            connection.context = contexts[index]
        return None

    contexts[default].sni_callback = choose
    _quiet_undecodable_names()
    return contexts[default]


class _QuietUndecodableNames:
    """``sys.unraisablehook`` that keeps a client's non-ASCII SNI name out of the log.

    CPython decodes the name as ASCII before the callback runs; a name that is not (RFC 6066
    allows A-labels only) ends the handshake with an internal_error alert, which is right, and
    CPython writes the UnicodeDecodeError to stderr as "unraisable", five lines per client.
    Any client could fill the log that way: such handshakes fail as quietly as other bad
    handshakes, and are counted like them (:mod:`tlsproxy.metrics`).
    """

    def __init__(self, previous: Callable[[Any], object]) -> None:
        self._previous = previous

    def __call__(self, unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, UnicodeDecodeError) and isinstance(
            unraisable.object, bytes
        ):
            return
        self._previous(unraisable)


def _quiet_undecodable_names() -> None:
    """Install :class:`_QuietUndecodableNames`, once per process."""
    if not isinstance(sys.unraisablehook, _QuietUndecodableNames):
        sys.unraisablehook = _QuietUndecodableNames(sys.unraisablehook)


def server_name(connection: ssl.SSLObject) -> str | None:
    """The SNI name the client sent on ``connection`` (None: none, or no handshake yet)."""
    name: str | None = getattr(connection, _SENT_NAME, None)
    return name

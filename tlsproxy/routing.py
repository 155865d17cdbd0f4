"""Which backend a request goes to (``--route``), and which requests are misdirected (421).

Rules:

1. A request goes to the route its Host names (exact, then ``*.`` wildcard: :mod:`names`);
   no route, to ``--backend``. Without a Host (HTTP/1.0), the SNI name chooses.
2. A request is misdirected (421, RFC 9110 section 15.5.20) when its Host is not the name the
   client sent in SNI and would have been given another certificate or another backend.
   Browsers reuse one HTTP/2 connection for every name its certificate covers (RFC 9113
   section 9.1.1): such a request, same certificate and same backend, is served; a 421 makes
   the browser open a connection of its own for that name, which is what a different
   certificate or backend needs. A client that sent no SNI is never misdirected.
3. With no route and one certificate nothing can be misdirected, and the request pays one
   attribute read (:attr:`Router.only`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tlsproxy.names import NameTable, host_name, normalise

if TYPE_CHECKING:
    from tlsproxy.backendpool import BackendPool
    from tlsproxy.tls.certset import CertificateSet

__all__ = ["MISDIRECTED", "Router"]

MISDIRECTED = (
    "this connection's TLS name (SNI) belongs to another site than the Host asked for; "
    "open a new connection for that host"
)


class Router:
    """Picks the backend pool for each request; see the module's rules."""

    __slots__ = ("_certificates", "_routes", "default", "only")

    def __init__(
        self,
        default: BackendPool,
        routes: Sequence[tuple[str, BackendPool]] = (),
        certificates: CertificateSet | None = None,
    ) -> None:
        self.default = default
        self._routes: NameTable[BackendPool] = NameTable()
        for host, pool in routes:
            self._routes.add(host, pool)
        self._certificates = certificates
        self.only: BackendPool | None = None  # rule 3: the pool for every request
        self.use_certificates(certificates)

    def use_certificates(self, certificates: CertificateSet | None) -> None:
        """A reload replaced the certificates: names may now choose others (None: one)."""
        self._certificates = certificates
        one = certificates is None or len(certificates.certificates) == 1
        self.only = self.default if one and not self._routes else None

    def pick(self, host: bytes | None, server_name: str | None) -> BackendPool | None:
        """The pool for a request with this Host, on a connection with this SNI; None: 421."""
        if host is None:
            return self._pool(normalise(server_name)) if server_name else self.default
        name = host_name(host)
        pool = self._pool(name)
        if server_name is None:
            return pool
        sent = normalise(server_name)
        if sent == name:
            return pool
        certificates = self._certificates
        if self._pool(sent) is not pool or (
            certificates is not None
            and certificates.index_for(sent) != certificates.index_for(name)
        ):
            return None
        return pool

    def pools(self) -> list[BackendPool]:
        """Every pool, the default first: for closing them."""
        pools = [self.default]
        for _, pool in self._routes.patterns():
            if pool not in pools:
                pools.append(pool)
        return pools

    def _pool(self, name: str) -> BackendPool:
        pool = self._routes.lookup(name)
        return self.default if pool is None else pool

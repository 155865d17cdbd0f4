"""The certificates served, and which one a handshake gets for the SNI name it sent.

Rules:

1. The first certificate is the default, or the one ``--sni-default`` names: clients that send
   no name (those that connect to an IP address) and clients whose name no certificate covers
   get it, unless ``strict`` refuses the latter (``--strict-sni``, TLS alert unrecognized_name).
2. A name is matched exactly first, then by a one-label wildcard (:mod:`tlsproxy.names`); when
   two certificates cover the same name, the one listed first serves it and a warning says so.
3. Everything is decided at load: choosing a certificate during a handshake reads two
   dictionaries and never touches the file system, whatever name a client sends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tlsproxy.names import NameTable, normalise
from tlsproxy.tls.certstore import LoadedCertificate

__all__ = ["CertificateSet", "certificate_set"]


@dataclass(frozen=True)
class CertificateSet:
    """Certificates in serving order (the default first) and the names that choose each."""

    certificates: tuple[LoadedCertificate, ...]  # in the order given: the first keeps a name
    default_index: int = 0
    strict: bool = False  # --strict-sni: a name no certificate covers ends the handshake
    warnings: tuple[str, ...] = ()  # shadowed names: said once at load, not per handshake
    names: NameTable[int] = field(default_factory=NameTable, compare=False, repr=False)

    @property
    def default(self) -> LoadedCertificate:
        return self.certificates[self.default_index]

    def index_for(self, server_name: str | None) -> int | None:
        """The index of the certificate for ``server_name``; None: refused (``strict``)."""
        if server_name is None:
            return self.default_index
        index = self.names.lookup(normalise(server_name))
        if index is None and not self.strict:
            return self.default_index
        return index

    @property
    def all_warnings(self) -> tuple[str, ...]:
        """Each certificate's warnings, then the set's own."""
        return (*(w for c in self.certificates for w in c.warnings), *self.warnings)

    def describe(self) -> list[str]:
        """Banner lines: each certificate's own lines, the default marked."""
        if len(self.certificates) == 1:
            return self.default.describe()
        lines = []
        for index, certificate in enumerate(self.certificates):
            role = "by SNI name"
            if index == self.default_index:
                role = "default, for unknown names and none"
                if self.strict:
                    role = "default, for clients that send no name (--strict-sni)"
            lines.append(f"certificate {index + 1} of {len(self.certificates)} ({role}):")
            lines += [f"  {line}" for line in certificate.describe()]
        return lines


def certificate_set(
    certificates: Sequence[LoadedCertificate],
    *,
    default_name: str | None = None,
    strict: bool = False,
    warnings: Sequence[str] = (),
) -> CertificateSet:
    """Index ``certificates`` by name; ``default_name`` picks the default (rule 1).

    ``warnings``: what loading found to say (files left out), kept with the set's own.
    Raise ``ValueError`` when ``default_name`` is covered by none of them.
    """
    if not certificates:
        raise ValueError("no certificate to serve")
    names, shadowed = _table(certificates)
    default_index = 0
    if default_name is not None:
        chosen = names.lookup(normalise(default_name))
        if chosen is None:
            covered = ", ".join(n for c in certificates for n in c.sni_names) or "none"
            raise ValueError(
                f"--sni-default {default_name}: no certificate covers that name (they cover: "
                f"{covered}); give one of those names"
            )
        default_index = chosen
    return CertificateSet(
        tuple(certificates),
        default_index=default_index,
        strict=strict,
        warnings=(*warnings, *shadowed),
        names=names,
    )


def _table(certificates: Sequence[LoadedCertificate]) -> tuple[NameTable[int], list[str]]:
    names: NameTable[int] = NameTable()
    warnings = []
    for index, certificate in enumerate(certificates):
        for name in certificate.sni_names:
            earlier = names.add(name, index)
            if earlier is not None and earlier != index:
                warnings.append(
                    f"{name} is in both {certificates[earlier].cert_path} and "
                    f"{certificate.cert_path}; the first one serves it"
                )
    return names, warnings

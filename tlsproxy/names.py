"""Host names matched the way certificates match them: exactly, then by a one-label wildcard.

Both the SNI certificate choice (:mod:`tlsproxy.tls.certset`) and ``--route`` (:mod:`routing`)
use one :class:`NameTable`, so a name a certificate covers and a name a route covers mean the
same thing.

Rules:

1. Names compare case-insensitively and without a trailing dot.
2. An exact name wins over a wildcard, whatever the order they were added in.
3. ``*.example.com`` covers ``a.example.com``, not ``example.com`` and not ``a.b.example.com``
   (RFC 6125 section 6.4.3, as browsers apply it).
4. The first value added for a name keeps it; :meth:`NameTable.add` says when one is shadowed.
5. A lookup is two dictionary reads: nothing else, whatever name a client sends.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["HOSTNAME", "NameTable", "host_name", "normalise"]

#: A DNS name as the command line may give it: letters, digits, ``-`` and ``_`` in labels of 1
#: to 63, at most 253 in all, an optional ``*.`` first and trailing dot.
HOSTNAME = re.compile(
    r"^(?=.{1,253}$)(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?\.)*[a-z0-9_]"
    r"([a-z0-9-]{0,61}[a-z0-9])?\.?$",
    re.IGNORECASE,
)

T = TypeVar("T")


def normalise(name: str) -> str:
    """Lower case, no trailing dot: the form names are stored and looked up in."""
    return name.rstrip(".").lower()


def host_name(host: bytes) -> str:
    """The name in a ``Host`` header or ``:authority`` (``Example.com:8443`` → ``example.com``).

    An IPv6 literal keeps its address without brackets; a value that is not ASCII gives "".
    """
    try:
        text = host.decode("ascii")
    except UnicodeDecodeError:
        return ""
    if text.startswith("["):
        return text[1 : text.find("]")].lower() if "]" in text else ""
    return normalise(text.rpartition(":")[0] if ":" in text else text)


class NameTable(Generic[T]):
    """Names and ``*.`` wildcards, each mapped to one value (a certificate, a backend)."""

    __slots__ = ("_exact", "_wildcard")

    def __init__(self) -> None:
        self._exact: dict[str, T] = {}
        self._wildcard: dict[str, T] = {}  # "*.example.com" is kept as "example.com"

    def add(self, pattern: str, value: T) -> T | None:
        """Map ``pattern`` to ``value``; return the earlier value that keeps it, if any (rule 4)."""
        name = normalise(pattern)
        table = self._exact
        if name.startswith("*."):
            name, table = name[2:], self._wildcard
        earlier = table.get(name)
        if earlier is not None:
            return earlier
        table[name] = value
        return None

    def lookup(self, name: str) -> T | None:
        """The value for ``name`` (already normalised, rule 1), exact first (rule 2); or None."""
        value = self._exact.get(name)
        if value is None:
            first, dot, parent = name.partition(".")
            if dot and first and first != "*":  # "*.x" and ".x" are no names a wildcard covers
                value = self._wildcard.get(parent)
        return value

    def patterns(self) -> Iterator[tuple[str, T]]:
        """Every name and wildcard with its value, for banners and checks."""
        yield from self._exact.items()
        for parent, value in self._wildcard.items():
            yield f"*.{parent}", value

    def __bool__(self) -> bool:
        return bool(self._exact or self._wildcard)

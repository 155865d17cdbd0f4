"""tlsproxy.names: one name-matching rule for SNI certificates and --route."""

from __future__ import annotations

import pytest

from tlsproxy.names import NameTable, host_name, normalise


def table(*patterns: str) -> NameTable[str]:
    names: NameTable[str] = NameTable()
    for pattern in patterns:
        names.add(pattern, pattern)
    return names


def test_exact_wins_over_wildcard_whatever_the_order() -> None:
    names = table("*.example.com", "app.example.com")
    assert names.lookup("app.example.com") == "app.example.com"
    assert names.lookup("web.example.com") == "*.example.com"


@pytest.mark.parametrize(
    "name",
    ["example.com", "a.b.example.com", "example.org", "com", "", "*.example.com", ".example.com"],
)
def test_a_wildcard_covers_exactly_one_label(name: str) -> None:
    assert table("*.example.com").lookup(name) is None


def test_the_first_value_keeps_a_name_and_the_second_is_told() -> None:
    names: NameTable[int] = NameTable()
    assert names.add("A.example.com.", 0) is None
    assert names.add("a.example.com", 1) == 0
    assert names.add("*.example.com", 2) is None
    assert names.add("*.EXAMPLE.com", 3) == 2
    assert names.lookup("a.example.com") == 0
    assert sorted(names.patterns()) == [("*.example.com", 2), ("a.example.com", 0)]


def test_the_index_zero_is_a_value_not_a_miss() -> None:
    names: NameTable[int] = NameTable()
    names.add("*.example.com", 0)
    assert names.lookup("x.example.com") == 0
    assert names.add("*.example.com", 5) == 0


@pytest.mark.parametrize(
    ("host", "name"),
    [
        (b"Example.COM", "example.com"),
        (b"example.com:8443", "example.com"),
        (b"example.com.", "example.com"),
        (b"[::1]:8443", "::1"),
        (b"[::1]", "::1"),
        (b"127.0.0.1:8443", "127.0.0.1"),
        (b"[::1", ""),
        (b"\xff.example", ""),
    ],
)
def test_host_name_drops_port_case_and_brackets(host: bytes, name: str) -> None:
    assert host_name(host) == name


def test_normalise() -> None:
    assert normalise("WWW.Example.Com.") == "www.example.com"

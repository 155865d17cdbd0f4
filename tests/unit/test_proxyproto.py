"""tlsproxy.proxyproto: PROXY protocol v1/v2 headers, from haproxy's doc/proxy-protocol.txt."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

import pytest

from tlsproxy.proxyproto import (
    NEED_MORE,
    V1_MAX_LENGTH,
    V2_MAX_LENGTH,
    V2_SIGNATURE,
    Address,
    Invalid,
    Parsed,
    parse,
    write_v1,
    write_v2,
)

# The specification's example (section 2.1), followed by the request it introduces.
SPEC_V1 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
REQUEST = b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n"
SOURCE4 = Address(IPv4Address("192.168.0.1"), 56324)
DESTINATION4 = Address(IPv4Address("192.168.0.11"), 443)
SOURCE6 = Address(IPv6Address("2001:db8::1"), 50000)
DESTINATION6 = Address(IPv6Address("2001:db8::2"), 8443)


def v2(command: int, family: int, body: bytes) -> bytes:
    """A v2 header built field by field as section 2.2 lays it out."""
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family, len(body)) + body


# TCP over IPv4 (0x11): 2*4 + 2*2 = 12 bytes of addresses.
SPEC_V2_TCP4 = v2(
    0x1, 0x11, bytes([192, 168, 0, 1, 192, 168, 0, 11]) + struct.pack("!HH", 56324, 443)
)


def test_spec_v1_example_names_the_client_and_its_length() -> None:
    """The v1 example line parses to its addresses; its length is where the request starts."""
    data = SPEC_V1 + REQUEST
    result = parse(data)
    assert result == Parsed(len(SPEC_V1), SOURCE4, DESTINATION4)
    assert data[len(SPEC_V1) :] == REQUEST


def test_v1_tcp6() -> None:
    """A TCP6 line names IPv6 addresses."""
    line = b"PROXY TCP6 2001:db8::1 2001:db8::2 50000 8443\r\n"
    assert parse(line) == Parsed(len(line), SOURCE6, DESTINATION6)


def test_v1_worst_case_of_107_bytes_is_accepted() -> None:
    """The specification's longest line (UNKNOWN with full IPv6 fields) is 107 bytes and valid."""
    full = ":".join(["ffff"] * 8)
    line = f"PROXY UNKNOWN {full} {full} 65535 65535\r\n".encode()
    assert len(line) == V1_MAX_LENGTH
    assert parse(line) == Parsed(V1_MAX_LENGTH, None, None)


@pytest.mark.parametrize("line", [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN 1.2.3.4 x y z\r\n"])
def test_v1_unknown_means_use_the_real_peer(line: bytes) -> None:
    """UNKNOWN is a valid header without a client address; the rest of its line is ignored."""
    assert parse(line + REQUEST) == Parsed(len(line), None, None)


@pytest.mark.parametrize(
    "data",
    [b"", b"P", b"PROXY", b"PROXY TCP4 192.168.0.1 ", SPEC_V1[:-1]],
)
def test_v1_partial_line_needs_more(data: bytes) -> None:
    """A line not yet ended by CRLF (and under 107 bytes) waits for more bytes."""
    assert parse(data) is NEED_MORE


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GET / HTTP/1.1\r\n", "no PROXY"),
        (b"\x16\x03\x01\x02\x00\x01", "no PROXY"),  # a TLS ClientHello: the balancer sent none
        (b"PROXI TCP4", "no PROXY"),
        (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n", "CR"),
        (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\r\n", "CR"),
        (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n", "not 'PROXY"),
        (b"PROXY TCP4  192.168.0.1 192.168.0.11 56324 443\r\n", "not 'PROXY"),
        (b"PROXY UDP4 192.168.0.1 192.168.0.11 56324 443\r\n", "not TCP4"),
        (b"PROXY TCP4 192.168.0.01 192.168.0.11 56324 443\r\n", "canonical"),
        (b"PROXY TCP4 192.168.0.1 192.168.0.11 056324 443\r\n", "canonical"),
        (b"PROXY TCP4 192.168.0.1 192.168.0.11 65536 443\r\n", "canonical"),
        (b"PROXY TCP4 192.168.0.1 192.168.0.11 +5 443\r\n", "canonical"),
        (b"PROXY TCP4 2001:db8::1 192.168.0.11 56324 443\r\n", "canonical"),
        (b"PROXY TCP6 192.168.0.1 2001:db8::2 56324 443\r\n", "canonical"),
        (b"PROXY TCP6 fe80::1%eth0 2001:db8::2 56324 443\r\n", "canonical"),
        (b"PROXY TCP4 192.168.0.1 192.168.0.11 5\xc3\xa9 443\r\n", "canonical"),
    ],
)
def test_v1_garbage_is_invalid(data: bytes, reason: str) -> None:
    """Anything that is not exactly a v1 line is refused, with a reason that says what."""
    result = parse(data)
    assert isinstance(result, Invalid)
    assert reason in result.reason


def test_v1_oversize_line_is_invalid_without_waiting() -> None:
    """107 bytes without CRLF: refused at once, however much more might come."""
    data = b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 14)
    assert len(data) == V1_MAX_LENGTH
    result = parse(data)
    assert isinstance(result, Invalid)
    assert "longer than 107" in result.reason
    assert parse(data[:-1]) is NEED_MORE


def test_v1_crlf_beyond_107_bytes_is_invalid() -> None:
    """A CRLF that ends a 108-byte line is too late."""
    data = b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 15) + b"\r\n"
    assert isinstance(parse(data), Invalid)


def test_spec_v2_tcp4_names_the_client_and_its_length() -> None:
    """A v2 TCP over IPv4 header (0x21 0x11, 12 address bytes) parses to its 28 bytes."""
    result = parse(SPEC_V2_TCP4 + REQUEST)
    assert result == Parsed(28, SOURCE4, DESTINATION4)


def test_v2_tcp6() -> None:
    """A v2 TCP over IPv6 header (0x21) carries 36 address bytes."""
    body = SOURCE6.ip.packed + DESTINATION6.ip.packed + struct.pack("!HH", 50000, 8443)
    header = v2(0x1, 0x21, body)
    assert parse(header) == Parsed(16 + 36, SOURCE6, DESTINATION6)


def test_v2_local_command_means_use_the_real_peer() -> None:
    """LOCAL (a health check): valid, no client address, and any address block is skipped."""
    assert parse(v2(0x0, 0x00, b"")) == Parsed(16, None, None)
    # "Receivers ... must not assume zero is presented for LOCAL connections."
    with_addresses = SPEC_V2_TCP4[:12] + b"\x20" + SPEC_V2_TCP4[13:]
    assert parse(with_addresses + REQUEST) == Parsed(28, None, None)


@pytest.mark.parametrize(
    ("family", "length"),
    [(0x00, 0), (0x31, 216), (0x32, 216), (0x10, 12)],
    ids=["unspec", "unix-stream", "unix-dgram", "inet-unspec-transport"],
)
def test_v2_families_without_an_ip_mean_use_the_real_peer(family: int, length: int) -> None:
    """AF_UNSPEC, AF_UNIX and the UNSPEC transport are valid but name no IP client."""
    header = v2(0x1, family, b"\x00" * length)
    assert parse(header) == Parsed(16 + length, None, None)


def test_v2_tlvs_are_skipped() -> None:
    """TLVs after the addresses (here AWS's VPC endpoint id, type 0xEA) count in the length."""
    tlv = b"\xea" + struct.pack("!H", 5) + b"\x01vpce"
    header = v2(0x1, 0x11, SPEC_V2_TCP4[16:] + tlv)
    assert parse(header + REQUEST) == Parsed(28 + len(tlv), SOURCE4, DESTINATION4)


@pytest.mark.parametrize("cut", [1, 11, 12, 15, 16, 27])
def test_v2_partial_header_needs_more(cut: int) -> None:
    """A v2 header cut anywhere before its last byte waits for more."""
    assert parse(SPEC_V2_TCP4[:cut]) is NEED_MORE


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (V2_SIGNATURE[:5] + b"X" * 11, "no PROXY"),
        (b"\r\nX", "no PROXY"),
        (V2_SIGNATURE + b"\x11\x11\x00\x0c" + SPEC_V2_TCP4[16:], "version 1"),
        (V2_SIGNATURE + b"\x22\x11\x00\x0c" + SPEC_V2_TCP4[16:], "command 2"),
        (V2_SIGNATURE + b"\x21\x41\x00\x00", "family"),
        (V2_SIGNATURE + b"\x21\x13\x00\x0c" + SPEC_V2_TCP4[16:], "family"),
        (v2(0x1, 0x11, SPEC_V2_TCP4[16:24]), "too short"),
        (v2(0x1, 0x21, SPEC_V2_TCP4[16:]), "too short"),
        (v2(0x1, 0x11, SPEC_V2_TCP4[16:] + b"\xea\x00"), "cut short"),
        (v2(0x1, 0x11, SPEC_V2_TCP4[16:] + b"\xea\x00\x09abc"), "longer"),
    ],
)
def test_v2_garbage_is_invalid(header: bytes, reason: str) -> None:
    """Wrong signature, version, command, family or lengths: refused, saying which."""
    result = parse(header)
    assert isinstance(result, Invalid)
    assert reason in result.reason


def test_v2_oversize_length_is_invalid_before_it_arrives() -> None:
    """A length field above the bound is refused from the 16 fixed bytes alone."""
    body_length = V2_MAX_LENGTH - 16 + 1
    header = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, body_length)
    result = parse(header)
    assert isinstance(result, Invalid)
    assert "more than" in result.reason
    largest = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, body_length - 1)
    assert parse(largest) is NEED_MORE


@pytest.mark.parametrize(
    ("source", "destination"), [(SOURCE4, DESTINATION4), (SOURCE6, DESTINATION6), (None, None)]
)
def test_written_headers_parse_back(source: Address | None, destination: Address | None) -> None:
    """What write_v1 and write_v2 produce parses back to the same addresses."""
    for header in (write_v1(source, destination), write_v2(source, destination)):
        assert parse(header + REQUEST) == Parsed(len(header), source, destination)


def test_write_matches_the_spec_examples() -> None:
    """write_v1 and write_v2 produce the specification's bytes."""
    assert write_v1(SOURCE4, DESTINATION4) == SPEC_V1
    assert write_v2(SOURCE4, DESTINATION4) == SPEC_V2_TCP4
    assert write_v1(None, None) == b"PROXY UNKNOWN\r\n"
    assert write_v2(None, None) == V2_SIGNATURE + b"\x20\x00\x00\x00"


def test_write_refuses_mixed_families() -> None:
    """A header cannot pair an IPv4 source with an IPv6 destination."""
    with pytest.raises(ValueError, match="same address family"):
        write_v1(SOURCE4, DESTINATION6)
    with pytest.raises(ValueError, match="same address family"):
        write_v2(SOURCE6, DESTINATION4)

"""The PROXY protocol (HAProxy's, v1 text and v2 binary) as pure functions over bytes.

A load balancer that forwards TCP sends one header before the client's first byte, naming the
client's address; see haproxy's ``doc/proxy-protocol.txt``. Rules:

1. :func:`parse` looks at the bytes received so far and answers :class:`NeedMore`,
   :class:`Parsed` (with the header's length: what follows it belongs to TLS) or
   :class:`Invalid` (with a reason for the log). It never reads past the header.
2. Strict, as the specification asks ("any sequence which does not exactly match ... must
   ... abort the connection"): a v1 line is at most 107 bytes and ends in CRLF; its addresses
   are canonical (no leading zeros) and of the announced family; a v2 header has version 2,
   command LOCAL or PROXY, a known family and transport, and a length that holds the addresses.
3. No client address, but a valid header: the v2 LOCAL command (health checks), v1 ``UNKNOWN``,
   and the families we cannot put in ``X-Forwarded-For`` (AF_UNSPEC, AF_UNIX). The connection is
   accepted and described by its real peer: ``Parsed.source`` is None.
4. A v2 header's TLVs are skipped, after checking that they tile the rest of the header; the
   whole v2 header is bounded by :data:`V2_MAX_LENGTH`, far below the 64 kB its length field
   allows, so a peer cannot make us hold a large buffer before TLS begins.
5. Writing (``--send-proxy-protocol``): :func:`header_for` names the client and our own address
   as Twisted gives them, in either version.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107  # the specification's worst case, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER = struct.Struct("!12sBBH")  # signature, version and command, family and transport, len
#: Longest v2 header accepted: addresses and TLVs (AWS, GCP and Azure send tens of bytes;
#: HAProxy's SSL TLVs a few hundred).
V2_MAX_LENGTH = V2_HEADER.size + 4096

_V2_VERSION = 0x2
_LOCAL, _PROXY = 0x0, 0x1
_UNSPEC, _INET, _INET6, _UNIX = 0x0, 0x1, 0x2, 0x3
_STREAM, _DGRAM = 0x1, 0x2
_INET_ADDRESSES = struct.Struct("!4s4sHH")
_INET6_ADDRESSES = struct.Struct("!16s16sHH")
_UNIX_ADDRESSES_LENGTH = 216
_TLV_HEADER = struct.Struct("!BH")


@dataclass(frozen=True, slots=True)
class Address:
    """One end of the proxied connection, as the load balancer saw it."""

    ip: IPAddress
    port: int


@dataclass(frozen=True, slots=True)
class NeedMore:
    """A header may still follow: read more bytes (up to the version's bound) and parse again."""


@dataclass(frozen=True, slots=True)
class Parsed:
    """A complete, valid header of ``length`` bytes; None addresses: use the real connection's."""

    length: int
    source: Address | None
    destination: Address | None


@dataclass(frozen=True, slots=True)
class Invalid:
    """Not a PROXY header, or a broken one: the connection must be closed."""

    reason: str


Result = NeedMore | Parsed | Invalid
NEED_MORE = NeedMore()


def parse(data: bytes) -> Result:
    """Parse the PROXY header at the start of ``data`` (all bytes received so far)."""
    if not data:
        return NEED_MORE
    if data[:1] == b"P":
        return _parse_v1(data)
    if data[:1] == b"\r":
        return _parse_v2(data)
    return Invalid("no PROXY protocol header (the peer must send one first)")


def _parse_v1(data: bytes) -> Result:
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if not data.startswith(V1_PREFIX[: len(data)]):
            return Invalid("no PROXY protocol header (the peer must send one first)")
        if b"\n" in data[:V1_MAX_LENGTH]:
            return Invalid("PROXY v1 line ends without CR before LF")
        if len(data) >= V1_MAX_LENGTH:
            return Invalid(f"PROXY v1 line longer than {V1_MAX_LENGTH} bytes")
        return NEED_MORE
    line = data[:end]
    if not line.startswith(V1_PREFIX):
        return Invalid("no PROXY protocol header (the peer must send one first)")
    if b"\r" in line or b"\n" in line:
        return Invalid("PROXY v1 line holds a lone CR or LF")
    fields = line.split(b" ")
    length = end + 2
    if fields[1] == b"UNKNOWN":  # the receiver must ignore the rest of the line
        return Parsed(length, None, None)
    if len(fields) != 6:
        return Invalid("PROXY v1 line is not 'PROXY TCP4|TCP6 SRC DST SPORT DPORT'")
    _, protocol, *values = fields
    kind: type[IPAddress]
    if protocol == b"TCP4":
        kind = ipaddress.IPv4Address
    elif protocol == b"TCP6":
        kind = ipaddress.IPv6Address
    else:
        return Invalid(f"PROXY v1 protocol {protocol[:8]!r} is not TCP4, TCP6 or UNKNOWN")
    try:
        text = [value.decode("ascii") for value in values]
        if "%" in text[0] or "%" in text[1]:  # ipaddress accepts IPv6 scope ids; PROXY does not
            raise ValueError(text)
        source_ip, destination_ip = kind(text[0]), kind(text[1])
        source_port, destination_port = _v1_port(text[2]), _v1_port(text[3])
    except (UnicodeDecodeError, ValueError):
        return Invalid(f"PROXY v1 {protocol.decode()} addresses or ports are not canonical")
    return Parsed(
        length, Address(source_ip, source_port), Address(destination_ip, destination_port)
    )


def _v1_port(text: str) -> int:
    # Decimal, 0-65535, no sign, no spaces, no leading zeros (they could be read as octal).
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0"):
        raise ValueError(text)
    port = int(text)
    if port > 65535:
        raise ValueError(text)
    return port


def _parse_v2(data: bytes) -> Result:
    if len(data) < V2_HEADER.size:
        if not V2_SIGNATURE.startswith(data[: len(V2_SIGNATURE)]):
            return Invalid("no PROXY protocol header (the peer must send one first)")
        return NEED_MORE
    signature, version_command, family_transport, length = V2_HEADER.unpack_from(data)
    if signature != V2_SIGNATURE:
        return Invalid("no PROXY protocol header (the peer must send one first)")
    if version_command >> 4 != _V2_VERSION:
        return Invalid(f"PROXY v2 header with version {version_command >> 4}, not 2")
    command = version_command & 0xF
    if command not in (_LOCAL, _PROXY):
        return Invalid(f"PROXY v2 header with unknown command {command}")
    family, transport = family_transport >> 4, family_transport & 0xF
    if family > _UNIX or transport > _DGRAM:
        return Invalid(f"PROXY v2 header with unknown family/transport 0x{family_transport:02x}")
    total = V2_HEADER.size + length
    if total > V2_MAX_LENGTH:
        return Invalid(f"PROXY v2 header of {total} bytes, more than the {V2_MAX_LENGTH} allowed")
    if len(data) < total:
        return NEED_MORE
    body = data[V2_HEADER.size : total]
    addresses = _v2_addresses(family, transport, body)
    if isinstance(addresses, Invalid):
        return addresses
    if command == _LOCAL:  # the balancer's own connection (a health check): use the real ends
        return Parsed(total, None, None)
    return Parsed(total, *addresses)


def _v2_addresses(
    family: int, transport: int, body: bytes
) -> tuple[Address | None, Address | None] | Invalid:
    """The addresses in a v2 body, checking that the TLVs after them are well framed."""
    if family == _INET:
        layout: struct.Struct | None = _INET_ADDRESSES
        kind: type[IPAddress] = ipaddress.IPv4Address
        size = _INET_ADDRESSES.size
    elif family == _INET6:
        layout, kind, size = _INET6_ADDRESSES, ipaddress.IPv6Address, _INET6_ADDRESSES.size
    elif family == _UNIX:
        layout, size = None, _UNIX_ADDRESSES_LENGTH
    else:
        layout, size = None, 0
    if len(body) < size:
        return Invalid(f"PROXY v2 address block of {len(body)} bytes, too short for its family")
    invalid = _check_tlvs(body[size:])
    if invalid is not None:
        return invalid
    # AF_UNSPEC, AF_UNIX and UNSPEC transport: nothing to put in X-Forwarded-For (rule 3).
    if layout is None or transport == _UNSPEC:
        return None, None
    source, destination, source_port, destination_port = layout.unpack_from(body)
    return Address(kind(source), source_port), Address(kind(destination), destination_port)


def _check_tlvs(tlvs: bytes) -> Invalid | None:
    offset = 0
    # Each pass consumes at least three bytes, so this ends within len(tlvs) / 3 passes.
    while offset < len(tlvs):
        if len(tlvs) - offset < _TLV_HEADER.size:
            return Invalid("PROXY v2 TLV cut short")
        _, length = _TLV_HEADER.unpack_from(tlvs, offset)
        offset += _TLV_HEADER.size + length
        if offset > len(tlvs):
            return Invalid("PROXY v2 TLV longer than the header")
    return None


def write_v1(source: Address | None, destination: Address | None) -> bytes:
    """A v1 line for a connection between ``source`` and ``destination``; None: ``UNKNOWN``."""
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    _check_same_family(source, destination)
    protocol = "TCP4" if source.ip.version == 4 else "TCP6"
    return (
        f"PROXY {protocol} {source.ip} {destination.ip} {source.port} {destination.port}\r\n"
    ).encode("ascii")


def write_v2(source: Address | None, destination: Address | None) -> bytes:
    """A v2 header for a TCP connection; None addresses: the LOCAL command, no address."""
    if source is None or destination is None:
        return V2_HEADER.pack(V2_SIGNATURE, _V2_VERSION << 4 | _LOCAL, _UNSPEC, 0)
    _check_same_family(source, destination)
    if source.ip.version == 4:
        layout, family = _INET_ADDRESSES, _INET
    else:
        layout, family = _INET6_ADDRESSES, _INET6
    body = layout.pack(source.ip.packed, destination.ip.packed, source.port, destination.port)
    head = V2_HEADER.pack(V2_SIGNATURE, _V2_VERSION << 4 | _PROXY, family << 4 | _STREAM, len(body))
    return head + body


def _check_same_family(source: Address, destination: Address) -> None:
    if source.ip.version != destination.ip.version:
        raise ValueError(f"{source.ip} and {destination.ip} are not of the same address family")


def header_for(version: str, peer: tuple[str, int] | None, local: tuple[str, int] | None) -> bytes:
    """The PROXY ``version`` ("v1" or "v2") header naming ``peer`` → ``local`` (None: no IP).

    Mixed families (an IPv4 client named by a PROXY header, on an IPv6 listener) are written
    as IPv6 with the IPv4 address mapped, as HAProxy does; a non-IP end (a unix socket) makes
    the header say only that the connection is proxied (v1 ``UNKNOWN``, v2 ``LOCAL``).
    """
    source = _address(peer)
    destination = _address(local)
    if (
        source is not None
        and destination is not None
        and source.ip.version != destination.ip.version
    ):
        source, destination = _as_ipv6(source), _as_ipv6(destination)
    write = write_v1 if version == "v1" else write_v2
    return write(source, destination)


def _address(end: tuple[str, int] | None) -> Address | None:
    if end is None:
        return None
    try:
        ip = ipaddress.ip_address(end[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
    return Address(ip, end[1])


def _as_ipv6(address: Address) -> Address:
    if address.ip.version == 6:
        return address
    return Address(ipaddress.IPv6Address(f"::ffff:{address.ip}"), address.port)

"""Header rules of a reverse proxy, as pure functions over ``(name, value)`` byte pairs.

Rules, in the order they apply to a request head:

1. Exactly one ``Host`` (HTTP/1.1; HTTP/1.0 may omit it). The value is kept as sent.
2. ``Transfer-Encoding`` may appear once and only as ``chunked``; anything else is refused,
   because an intermediary that guesses at codings is how requests get smuggled.
   (llhttp has already refused CL+TE, repeated or differing ``Content-Length``, obs-fold,
   whitespace before the colon, bare LF and invalid characters.)
3. Hop-by-hop headers stop here: ``Connection`` and every name it lists, ``Keep-Alive``,
   ``Proxy-Connection``, ``TE`` (``trailers`` survives), ``Trailer``, ``Upgrade``, and the framing
   headers, which the proxy writes again for the next hop.
4. Forwarding headers (``X-Forwarded-*``, ``Forwarded``) are believed only from trusted peers, whose
   values we extend; anyone else's are dropped and replaced with what this hop saw.
5. Client-certificate headers (``X-Client-Cert-Subject``, ``X-Client-Cert-SAN``,
   ``X-Client-Cert-SHA256``, ``X-Client-Verified``) are dropped from every request, trusted peer
   or not, with or without ``--client-ca``; only this hop writes them (docs/mtls.md).

Everything that is the same for every request on a connection is computed once, in
:class:`ClientInfo`, so the per-request work is one pass over the headers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

Header = tuple[bytes, bytes]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Headers that describe one connection, never forwarded as they are (RFC 9110 §7.6.1).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
FORWARDING = frozenset(
    {
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-proto",
    }
)
#: Headers only this hop writes (rule 5), describing the verified client certificate.
CLIENT_CERTIFICATE = frozenset(
    {
        b"x-client-cert-subject",
        b"x-client-cert-san",
        b"x-client-cert-sha256",
        b"x-client-verified",
    }
)
# Connection tokens that name no header of their own and need no second pass.
_PLAIN_CONNECTION_TOKENS = frozenset({b"keep-alive", b"close", b"upgrade", b"te", b""})
_REQUEST_SPECIAL = HOP_BY_HOP | FORWARDING | CLIENT_CERTIFICATE | {b"host"}
# RFC 9110 §6.5.1: what a trailer may not carry (framing, routing, authentication, controls).
_NOT_IN_TRAILERS = (
    HOP_BY_HOP
    | FORWARDING
    | CLIENT_CERTIFICATE
    | {
        b"authorization",
        b"cache-control",
        b"content-encoding",
        b"content-length",
        b"content-range",
        b"content-type",
        b"cookie",
        b"expect",
        b"host",
        b"max-forwards",
        b"proxy-authorization",
        b"set-cookie",
    }
)
# uri-host [ ":" port ] (RFC 9112 §3.2): a reg-name, an IPv4 address or a bracketed IP literal.
_HOST = re.compile(rb"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(:[0-9]*)?$")
_RESPONSE_SPECIAL = HOP_BY_HOP | {b"content-length"}


class ResponseRejected(Exception):
    """A backend response head that cannot be passed on; the client gets 502."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HeadRejected(Exception):
    """A request head that must not be forwarded; ``status`` is what the client gets."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """What this hop knows about one client connection, precomputed as header bytes."""

    trusted: bool
    address: bytes  # for X-Forwarded-For: ``203.0.113.7`` or ``2001:db8::1``
    forwarded_for: bytes  # for Forwarded: ``203.0.113.7`` or ``"[2001:db8::1]"``
    port_line: bytes  # ``X-Forwarded-Port: 8443\r\n``, ready to send
    # When no earlier hop's values are kept, the forwarding lines are these two around the host.
    plain_prefix: bytes
    plain_suffix: bytes  # ends with ``certificate_lines``
    # X-Client-* lines for the client certificate (--client-ca); empty without --client-ca.
    certificate_lines: bytes = b""

    @classmethod
    def for_peer(
        cls, host: str, local_port: int, trusted_proxies: tuple[IPNetwork, ...]
    ) -> ClientInfo:
        """Describe a peer at ``host`` that reached us on ``local_port``."""
        key = (host, local_port, trusted_proxies)
        known = _CLIENTS.get(key)
        if known is None:
            if len(_CLIENTS) >= _MAX_CLIENTS:
                _CLIENTS.clear()
            known = _CLIENTS[key] = cls._describe(host, local_port, trusted_proxies)
        return known

    @classmethod
    def _describe(
        cls, host: str, local_port: int, trusted_proxies: tuple[IPNetwork, ...]
    ) -> ClientInfo:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:  # a unix socket peer has no IP address
            ip = None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        trusted = ip is not None and any(ip in net for net in trusted_proxies)
        address = str(ip) if ip is not None else "unknown"
        forwarded_for = f'"[{ip}]"' if isinstance(ip, ipaddress.IPv6Address) else address
        port_line = b"X-Forwarded-Port: %d\r\n" % local_port
        return cls(
            trusted=trusted,
            address=address.encode("ascii"),
            forwarded_for=forwarded_for.encode("ascii"),
            port_line=port_line,
            plain_prefix=f"X-Forwarded-For: {address}\r\nForwarded: for={forwarded_for}".encode(),
            plain_suffix=b";proto=https\r\nX-Forwarded-Proto: https\r\n" + port_line,
        )

    def with_certificate(self, der: bytes | None) -> ClientInfo:
        """This client, on a connection whose (verified) client certificate is ``der``.

        For a context that asks for client certificates only; once per connection, after the
        handshake. The lines are folded into ``plain_suffix``, so requests pay nothing for them.
        """
        lines = client_certificate_lines(der)
        return dataclasses.replace(
            self, certificate_lines=lines, plain_suffix=self.plain_suffix + lines
        )


def client_certificate_lines(der: bytes | None) -> bytes:
    """The X-Client-* header lines for a verified client certificate (None: the client sent none).

    Memoised: a client reconnects with the same certificate, and parsing it costs more than a
    dictionary lookup keyed by its bytes.
    """
    if der is None:
        return b"X-Client-Verified: NONE\r\n"
    known = _CERTIFICATES.get(der)
    if known is None:
        if len(_CERTIFICATES) >= _MAX_CERTIFICATES:
            _CERTIFICATES.clear()
        known = _CERTIFICATES[der] = _describe_certificate(der)
    return known


def _describe_certificate(der: bytes) -> bytes:
    certificate = x509.load_der_x509_certificate(der)
    lines = [
        b"X-Client-Verified: SUCCESS\r\n",
        b"X-Client-Cert-Subject: " + _header_safe(certificate.subject.rfc4514_string()) + b"\r\n",
    ]
    try:
        alt_names = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
    except x509.ExtensionNotFound:
        alt_names = None
    if alt_names is not None:
        described = [_describe_alt_name(name) for name in alt_names]
        if described:
            lines.append(b"X-Client-Cert-SAN: " + b", ".join(described) + b"\r\n")
    lines.append(b"X-Client-Cert-SHA256: " + hashlib.sha256(der).hexdigest().encode() + b"\r\n")
    return b"".join(lines)


def _describe_alt_name(name: x509.GeneralName) -> bytes:
    """``DNS:a.example``, ``IP:192.0.2.1``, ``URI:spiffe://…``, ``email:a@b.example``, …"""
    if isinstance(name, x509.DNSName):
        kind, value = "DNS", name.value
    elif isinstance(name, x509.IPAddress):
        kind, value = "IP", str(name.value)
    elif isinstance(name, x509.UniformResourceIdentifier):
        kind, value = "URI", name.value
    elif isinstance(name, x509.RFC822Name):
        kind, value = "email", name.value
    elif isinstance(name, x509.DirectoryName):
        kind, value = "DirName", name.value.rfc4514_string()
    elif isinstance(name, x509.RegisteredID):
        kind, value = "RID", name.value.dotted_string
    elif isinstance(name, x509.OtherName):  # its value is DER of a type we cannot know
        kind, value = "othername", name.type_id.dotted_string
    else:
        kind, value = "unknown", type(name).__name__
    # ", " separates the names: a comma inside one (a URI may hold one) is written %2C.
    return kind.encode() + b":" + _header_safe(value).replace(b",", b"%2C")


def _header_safe(text: str) -> bytes:
    """``text`` as visible ASCII: any other byte of its UTF-8 becomes an RFC 4514 ``\\XX`` escape.

    A CA may sign a name holding CR, LF or NUL; none of them may reach a header line.
    """
    raw = text.encode("utf-8", "surrogateescape")
    if all(0x20 <= byte < 0x7F for byte in raw):
        return raw
    return b"".join(bytes([byte]) if 0x20 <= byte < 0x7F else b"\\%02X" % byte for byte in raw)


# Parsing an address and matching it against networks costs more than a TLS record: clients
# come back, so what was worked out for an address is kept (a bounded, self-clearing memo).
_CLIENTS: dict[tuple[str, int, tuple[IPNetwork, ...]], ClientInfo] = {}
_MAX_CLIENTS = 4096
_CERTIFICATES: dict[bytes, bytes] = {}
_MAX_CERTIFICATES = 1024


@dataclass(slots=True)
class RequestHead:
    """The parts of a checked request head that the exchange needs."""

    lines: bytes  # header lines for the backend, each ending in CRLF, no framing headers
    host: bytes | None
    chunked: bool
    content_length: bytes | None
    upgrade: bytes | None  # the Upgrade header's value, when the client asked for one


def check_request_head(
    headers: Sequence[Header], client: ClientInfo, *, http10: bool
) -> RequestHead:
    """Apply rules 1-4 to a parsed request head; raise :class:`HeadRejected` if it must not pass."""
    out: list[bytes] = []
    host: bytes | None = None
    hosts = 0
    chunked = False
    content_length: bytes | None = None
    connection_tokens: list[bytes] = []
    upgrade: bytes | None = None
    forwarded_for: list[bytes] = []
    forwarded: list[bytes] = []
    kept: set[bytes] = set()  # X-Forwarded-Host/Proto/Port that a trusted proxy set
    te_trailers = False
    for name, value in headers:
        lname = name.lower()
        if lname not in _REQUEST_SPECIAL:
            if lname == b"content-length":
                content_length = value
            else:
                out.append(b"%s: %s\r\n" % (name, value))
            continue
        if lname == b"host":
            hosts += 1
            host = value
            out.append(b"%s: %s\r\n" % (name, value))
        elif lname == b"transfer-encoding":
            if chunked or value.strip().lower() != b"chunked":
                raise HeadRejected(400, "unsupported or repeated Transfer-Encoding")
            chunked = True
        elif lname == b"connection":
            connection_tokens.extend(t.strip().lower() for t in value.split(b","))
        elif lname == b"te":
            te_trailers = te_trailers or b"trailers" in (
                t.split(b";")[0].strip().lower() for t in value.split(b",")
            )
        elif lname == b"upgrade":
            upgrade = value
        elif lname in CLIENT_CERTIFICATE:
            pass  # rule 5: only this hop says what certificate the client showed
        elif client.trusted:
            if lname == b"x-forwarded-for":
                forwarded_for.append(value)
            elif lname == b"forwarded":
                forwarded.append(value)
            else:  # the rest of X-Forwarded-* describe the original request: keep them
                kept.add(lname)
                out.append(b"%s: %s\r\n" % (name, value))
        # else: an untrusted client's forwarding header or a hop-by-hop one: dropped.
    if hosts > 1:
        raise HeadRejected(400, "more than one Host header")
    if hosts == 0 and not http10:
        raise HeadRejected(400, "missing Host header")
    if host is not None and not _HOST.match(host):
        # Also what makes Host safe inside the Forwarded quoted-string: no '"' and no '\\'.
        raise HeadRejected(400, "invalid Host header")
    if any(t not in _PLAIN_CONNECTION_TOKENS for t in connection_tokens):
        # Connection may name extra hop-by-hop fields, but never the Host we keep.
        named = {t for t in connection_tokens if t not in _PLAIN_CONNECTION_TOKENS} - {b"host"}
        out = [line for line in out if line.split(b":", 1)[0].lower() not in named]
        kept -= named  # a hop-by-hop X-Forwarded-* is not an earlier hop's value
        if b"x-forwarded-for" in named:
            forwarded_for = []
        if b"forwarded" in named:
            forwarded = []
    if te_trailers:
        out.append(b"TE: trailers\r\n")
    out.append(_forwarding_lines(client, host, forwarded_for, forwarded, kept))
    return RequestHead(
        lines=b"".join(out),
        host=host,
        chunked=chunked,
        content_length=content_length,
        # As llhttp decides: an upgrade needs "Connection: upgrade" and a non-empty Upgrade.
        upgrade=upgrade
        if b"upgrade" in connection_tokens and upgrade and upgrade.strip()
        else None,
    )


def _forwarding_lines(
    client: ClientInfo,
    host: bytes | None,
    forwarded_for: list[bytes],
    forwarded: list[bytes],
    kept: set[bytes],
) -> bytes:
    if not (forwarded_for or forwarded or kept):  # nothing from earlier hops: the common case
        if host is None:
            return client.plain_prefix + client.plain_suffix
        return b'%s;host="%s"%sX-Forwarded-Host: %s\r\n' % (
            client.plain_prefix,
            host,
            client.plain_suffix,
            host,
        )
    xff = b", ".join([*forwarded_for, client.address])
    element = b"for=" + client.forwarded_for
    if host is not None:
        element += b';host="' + host + b'"'
    element += b";proto=https"
    fwd = b", ".join([*forwarded, element])
    lines = b"X-Forwarded-For: " + xff + b"\r\nForwarded: " + fwd + b"\r\n"
    if not kept:
        lines += b"X-Forwarded-Proto: https\r\n" + client.port_line
        if host is not None:
            lines += b"X-Forwarded-Host: " + host + b"\r\n"
        return lines + client.certificate_lines
    if b"x-forwarded-proto" not in kept:
        lines += b"X-Forwarded-Proto: https\r\n"
    if b"x-forwarded-port" not in kept:
        lines += client.port_line
    if host is not None and b"x-forwarded-host" not in kept:
        lines += b"X-Forwarded-Host: " + host + b"\r\n"
    return lines + client.certificate_lines


def clean_trailers(trailers: Sequence[Header]) -> list[Header]:
    """The trailer fields that may pass: none that frames, routes, authenticates or controls."""
    if not trailers:  # nearly always: no list to build
        return []
    return [(n, v) for n, v in trailers if n.lower() not in _NOT_IN_TRAILERS]


@dataclass(slots=True)
class ResponseHead:
    """A backend response head with the hop-by-hop headers taken out, as HTTP/1.1 lines."""

    lines: bytes  # header lines, each ending in CRLF, without framing headers
    content_length: bytes | None
    chunked: bool
    upgrade: bytes | None = None  # the Upgrade header (what a 101 switches to)


def clean_response_headers(headers: Sequence[Header]) -> ResponseHead:
    """Drop hop-by-hop headers from a response head and note its framing."""
    out: list[bytes] = []
    content_length: bytes | None = None
    chunked = False
    upgrade: bytes | None = None
    connection_tokens: list[bytes] = []
    for name, value in headers:
        lname = name.lower()
        if lname not in _RESPONSE_SPECIAL:
            out.append(b"%s: %s\r\n" % (name, value))
        elif lname == b"content-length":
            content_length = value
        elif lname == b"transfer-encoding":
            if chunked or value.strip().lower() != b"chunked":
                # De-chunking "gzip, chunked" would hand the client gzip it was not told about.
                raise ResponseRejected(
                    f"sent Transfer-Encoding {value.decode('latin-1')!r}, which tlsproxy does "
                    "not pass on (only chunked)"
                )
            chunked = True
        elif lname == b"connection":
            connection_tokens.extend(t.strip().lower() for t in value.split(b","))
        elif lname == b"upgrade":
            upgrade = value
    if any(t not in _PLAIN_CONNECTION_TOKENS for t in connection_tokens):
        named = set(connection_tokens)
        out = [line for line in out if line.split(b":", 1)[0].lower() not in named]
    return ResponseHead(
        lines=b"".join(out), content_length=content_length, chunked=chunked, upgrade=upgrade
    )

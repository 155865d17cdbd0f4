"""tlsproxy.http.headers: the header rules as pure functions, no transport in sight."""

from __future__ import annotations

import hashlib
import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tlsproxy.http.headers import (
    ClientInfo,
    Header,
    HeadRejected,
    RequestHead,
    ResponseRejected,
    check_request_head,
    clean_response_headers,
    clean_trailers,
)

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8:1::/48"))
UNTRUSTED = ClientInfo.for_peer("203.0.113.7", 8443, TRUSTED)
PROXY = ClientInfo.for_peer("10.1.2.3", 443, TRUSTED)


def check(
    headers: list[Header], client: ClientInfo = UNTRUSTED, *, http10: bool = False
) -> RequestHead:
    return check_request_head(headers, client, http10=http10)


def lines(head: RequestHead) -> list[bytes]:
    return head.lines.split(b"\r\n")[:-1]


def values(head: RequestHead, name: bytes) -> list[bytes]:
    return [
        line.split(b": ", 1)[1]
        for line in lines(head)
        if line.split(b":", 1)[0].lower() == name.lower()
    ]


def names(head: RequestHead) -> list[bytes]:
    return [line.split(b":", 1)[0] for line in lines(head)]


# --- ClientInfo -----------------------------------------------------------------------------


def test_ipv4_peer_is_described_plainly() -> None:
    """An IPv4 peer is its dotted address in both header styles, with our port ready to send."""
    info = ClientInfo.for_peer("203.0.113.7", 8443, TRUSTED)
    assert not info.trusted
    assert info.address == b"203.0.113.7"
    assert info.forwarded_for == b"203.0.113.7"
    assert info.port_line == b"X-Forwarded-Port: 8443\r\n"


def test_ipv6_peer_is_bracketed_and_quoted_for_forwarded() -> None:
    """RFC 7239 wants IPv6 nodes as quoted "[addr]"; X-Forwarded-For has them bare."""
    info = ClientInfo.for_peer("2001:DB8::7", 8443, TRUSTED)
    assert info.address == b"2001:db8::7"
    assert info.forwarded_for == b'"[2001:db8::7]"'


def test_ipv4_mapped_peer_is_treated_as_ipv4() -> None:
    """A dual-stack socket's ::ffff:10.1.2.3 is 10.1.2.3: described and trusted as such."""
    info = ClientInfo.for_peer("::ffff:10.1.2.3", 8443, TRUSTED)
    assert info.trusted
    assert info.address == b"10.1.2.3"
    assert info.forwarded_for == b"10.1.2.3"


@pytest.mark.parametrize(
    ("host", "trusted"),
    [("10.255.0.1", True), ("11.0.0.1", False), ("2001:db8:1::5", True), ("2001:db8:2::5", False)],
)
def test_trust_follows_the_configured_ranges(host: str, trusted: bool) -> None:
    """Only peers inside a --trusted-proxy range are trusted."""
    assert ClientInfo.for_peer(host, 8443, TRUSTED).trusted is trusted


def test_unix_socket_peer_is_unknown_and_untrusted() -> None:
    """A peer without an IP address is "unknown" (an RFC 7239 token) and never trusted."""
    info = ClientInfo.for_peer("", 0, (ipaddress.ip_network("0.0.0.0/0"),))
    assert not info.trusted
    assert info.address == b"unknown"
    assert info.forwarded_for == b"unknown"


# --- request heads: what is refused ---------------------------------------------------------


def test_missing_host_is_refused_for_http11() -> None:
    """HTTP/1.1 requires exactly one Host."""
    with pytest.raises(HeadRejected) as caught:
        check([(b"Accept", b"*/*")])
    assert (caught.value.status, caught.value.reason) == (400, "missing Host header")


def test_missing_host_is_allowed_for_http10() -> None:
    """HTTP/1.0 predates Host; its absence is not an error there."""
    head = check([(b"Accept", b"*/*")], http10=True)
    assert head.host is None
    assert values(head, b"X-Forwarded-Host") == []


def test_repeated_host_is_refused() -> None:
    """Two Host headers (even equal ones) make the target ambiguous: 400."""
    with pytest.raises(HeadRejected) as caught:
        check([(b"Host", b"a"), (b"Host", b"a")])
    assert caught.value.status == 400


@pytest.mark.parametrize("value", [b"gzip", b"identity", b"gzip, chunked", b"chunked, gzip", b""])
def test_transfer_codings_other_than_chunked_are_refused(value: bytes) -> None:
    """Only a lone chunked coding passes; a proxy that guesses at codings invites smuggling."""
    with pytest.raises(HeadRejected) as caught:
        check([(b"Host", b"a"), (b"Transfer-Encoding", value)])
    assert caught.value.status == 400


def test_repeated_transfer_encoding_is_refused() -> None:
    """Transfer-Encoding: chunked twice is refused, not merged."""
    with pytest.raises(HeadRejected, match="repeated Transfer-Encoding"):
        check(
            [
                (b"Host", b"a"),
                (b"Transfer-Encoding", b"chunked"),
                (b"Transfer-Encoding", b"chunked"),
            ]
        )


# --- request heads: what is passed, and how -------------------------------------------------


def test_host_is_kept_exactly_as_sent() -> None:
    """Host keeps its spelling, case and port."""
    head = check([(b"HOST", b"Example.COM:8443")])
    assert lines(head)[0] == b"HOST: Example.COM:8443"
    assert head.host == b"Example.COM:8443"
    assert values(head, b"X-Forwarded-Host") == [b"Example.COM:8443"]


def test_end_to_end_headers_keep_their_order_and_repeats() -> None:
    """Ordinary headers pass in order, repeated ones separately."""
    head = check(
        [(b"Host", b"a"), (b"Accept", b"x"), (b"Cookie", b"a=1"), (b"Cookie", b"b=2"), (b"X", b"")]
    )
    assert lines(head)[:5] == [b"Host: a", b"Accept: x", b"Cookie: a=1", b"Cookie: b=2", b"X: "]


def test_framing_headers_are_reported_not_copied() -> None:
    """Content-Length and Transfer-Encoding are noted for re-framing, not passed as lines."""
    head = check([(b"Host", b"a"), (b"Content-Length", b"12")])
    assert head.content_length == b"12"
    assert not head.chunked
    assert b"Content-Length" not in names(head)
    chunked = check([(b"Host", b"a"), (b"Transfer-Encoding", b" Chunked ")])
    assert chunked.chunked
    assert b"Transfer-Encoding" not in names(chunked)


@pytest.mark.parametrize(
    "name", [b"Connection", b"Keep-Alive", b"Proxy-Connection", b"TE", b"Trailer", b"Upgrade"]
)
def test_hop_by_hop_headers_stop_here(name: bytes) -> None:
    """Headers that describe one connection are not forwarded."""
    head = check([(b"Host", b"a"), (name, b"gzip")])
    assert name.lower() not in [n.lower() for n in names(head)]


def test_headers_named_by_connection_are_removed_whatever_their_case() -> None:
    """Every header Connection names is hop-by-hop too, across several Connection headers."""
    head = check(
        [
            (b"Host", b"a"),
            (b"Connection", b"X-One , keep-alive"),
            (b"x-one", b"1"),
            (b"Connection", b"x-TWO"),
            (b"X-Two", b"2"),
            (b"X-Three", b"3"),
        ]
    )
    assert names(head)[:2] == [b"Host", b"X-Three"]
    assert b"x-one" not in names(head)
    assert b"X-Two" not in names(head)


@pytest.mark.parametrize("value", [b"trailers", b"deflate, Trailers;q=0.5", b"TRAILERS"])
def test_te_trailers_survives_alone(value: bytes) -> None:
    """TE is rewritten to just "trailers" when the client accepts them (gRPC needs it)."""
    head = check([(b"Host", b"a"), (b"TE", value)])
    assert values(head, b"TE") == [b"trailers"]


def test_te_without_trailers_is_dropped() -> None:
    """A TE that does not accept trailers is simply removed."""
    head = check([(b"Host", b"a"), (b"TE", b"gzip, deflate")])
    assert values(head, b"TE") == []


def test_upgrade_is_reported_only_with_connection_upgrade() -> None:
    """An upgrade request needs both Upgrade and Connection: upgrade."""
    asked = check([(b"Host", b"a"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")])
    assert asked.upgrade == b"websocket"
    assert check([(b"Host", b"a"), (b"Upgrade", b"websocket")]).upgrade is None


# --- forwarding headers ---------------------------------------------------------------------


def test_untrusted_forwarding_headers_are_replaced_by_ours() -> None:
    """From an untrusted peer, every X-Forwarded-* and Forwarded is dropped and set afresh."""
    head = check(
        [
            (b"Host", b"app.example"),
            (b"X-Forwarded-For", b"1.1.1.1"),
            (b"x-forwarded-proto", b"http"),
            (b"X-Forwarded-Host", b"evil"),
            (b"X-Forwarded-Port", b"1"),
            (b"Forwarded", b"for=1.1.1.1"),
        ]
    )
    assert lines(head) == [
        b"Host: app.example",
        b"X-Forwarded-For: 203.0.113.7",
        b'Forwarded: for=203.0.113.7;host="app.example";proto=https',
        b"X-Forwarded-Proto: https",
        b"X-Forwarded-Port: 8443",
        b"X-Forwarded-Host: app.example",
    ]


def test_trusted_forwarding_headers_are_extended_in_order() -> None:
    """A trusted proxy's chain is kept, several headers joined in order, and this hop appended."""
    head = check(
        [
            (b"Host", b"a"),
            (b"X-Forwarded-For", b"1.1.1.1, 2.2.2.2"),
            (b"X-Forwarded-For", b"3.3.3.3"),
            (b"Forwarded", b"for=1.1.1.1"),
            (b"Forwarded", b'for="[2001:db8::1]"'),
        ],
        PROXY,
    )
    assert values(head, b"X-Forwarded-For") == [b"1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3"]
    assert values(head, b"Forwarded") == [
        b'for=1.1.1.1, for="[2001:db8::1]", for=10.1.2.3;host="a";proto=https'
    ]


def test_trusted_proxy_values_for_proto_host_port_are_kept_not_doubled() -> None:
    """What a trusted proxy says about the original request wins; ours is added only where it
    said nothing."""
    head = check([(b"Host", b"a"), (b"X-Forwarded-Proto", b"http")], PROXY)
    assert values(head, b"X-Forwarded-Proto") == [b"http"]
    assert values(head, b"X-Forwarded-Port") == [b"443"]
    assert values(head, b"X-Forwarded-Host") == [b"a"]


@pytest.mark.parametrize("host", [b'a"b', b"a\\b", b"a b", b"a/b", b"a@b", b"[::1"])
def test_invalid_host_is_rejected(host: bytes) -> None:
    """RFC 9112 §3.2: a Host that is not uri-host[:port] gets 400, so it can never break out
    of the Forwarded quoted-string or name a path."""
    with pytest.raises(HeadRejected) as raised:
        check([(b"Host", host)])
    assert raised.value.status == 400


@pytest.mark.parametrize("host", [b"localhost:8443", b"[::1]:8443", b"127.0.0.1", b"a-b.example"])
def test_valid_hosts_pass(host: bytes) -> None:
    """Names, IPv4 and bracketed IPv6 literals, with or without a port, pass as sent."""
    assert values(check([(b"Host", host)]), b"Host") == [host]


def test_connection_cannot_remove_our_forwarding_headers() -> None:
    """An untrusted client naming X-Forwarded-For in Connection still gets ours sent."""
    head = check([(b"Host", b"a"), (b"Connection", b"X-Forwarded-For, Forwarded")])
    assert values(head, b"X-Forwarded-For") == [b"203.0.113.7"]
    assert len(values(head, b"Forwarded")) == 1


def test_connection_cannot_remove_host() -> None:
    """Connection: host does not make Host hop-by-hop: the backend still gets it, and the
    forwarding headers still name it."""
    head = check([(b"Host", b"a.example"), (b"Connection", b"host")])
    assert values(head, b"Host") == [b"a.example"]
    assert values(head, b"X-Forwarded-Host") == [b"a.example"]


def test_trusted_header_named_by_connection_is_replaced_by_ours() -> None:
    """A trusted proxy's X-Forwarded-Host that its Connection marks hop-by-hop is dropped, and
    this hop's own value is sent instead of nothing."""
    head = check(
        [(b"Host", b"a"), (b"Connection", b"X-Forwarded-Host"), (b"X-Forwarded-Host", b"b")],
        PROXY,
    )
    assert values(head, b"X-Forwarded-Host") == [b"a"]


# --- response heads -------------------------------------------------------------------------


def test_response_headers_lose_hop_by_hop_ones_and_keep_the_rest_in_order() -> None:
    """Connection, Keep-Alive, Transfer-Encoding, Upgrade and Connection-named headers go;
    repeated end-to-end headers stay separate and in order; framing is noted."""
    head = clean_response_headers(
        [
            (b"Set-Cookie", b"a=1"),
            (b"Connection", b"close, X-Private"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Transfer-Encoding", b"chunked"),
            (b"x-private", b"p"),
            (b"Upgrade", b"h2c"),
            (b"Proxy-Connection", b"close"),
            (b"Set-Cookie", b"b=2"),
            (b"Content-Length", b"7"),
        ]
    )
    assert head.lines == b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
    assert head.content_length == b"7"
    assert head.chunked


def test_response_without_framing_headers_is_close_delimited() -> None:
    """No Content-Length and no chunked: neither is reported, and other headers pass as sent."""
    head = clean_response_headers([(b"Connection", b"keep-alive"), (b"x-Case", b"Kept As Sent")])
    assert head.lines == b"x-Case: Kept As Sent\r\n"
    assert head.content_length is None
    assert not head.chunked


@pytest.mark.parametrize(
    "value", [b"gzip, chunked", b"gzip", b"identity", b"chunked, chunked", b"x-chunked"]
)
def test_response_transfer_codings_other_than_chunked_are_refused(value: bytes) -> None:
    """A response coded with anything but plain chunked cannot be passed on faithfully: it is
    refused with a reason that names the coding and says only chunked passes."""
    with pytest.raises(ResponseRejected) as raised:
        clean_response_headers([(b"Transfer-Encoding", value)])
    assert repr(value.decode()) in raised.value.reason
    assert "only chunked" in raised.value.reason


def test_repeated_response_transfer_encoding_is_refused() -> None:
    """Two Transfer-Encoding: chunked headers are two codings, refused like one header that
    lists chunked twice."""
    with pytest.raises(ResponseRejected, match="only chunked"):
        clean_response_headers([(b"Transfer-Encoding", b"chunked")] * 2)


@pytest.mark.parametrize("value", [b"chunked", b"Chunked", b" chunked "])
def test_plain_chunked_response_is_accepted(value: bytes) -> None:
    """chunked, in any case and with optional whitespace, is the one coding we pass on."""
    assert clean_response_headers([(b"Transfer-Encoding", value)]).chunked


# --- trailers -------------------------------------------------------------------------------


def test_trailers_lose_framing_routing_forwarding_and_control_fields() -> None:
    """RFC 9110 §6.5.1: a trailer cannot frame, route, authenticate, forward or control; only
    the rest (here a checksum, in any case and in order) passes."""
    trailers = [
        (b"X-Checksum", b"abc"),
        (b"X-Forwarded-For", b"10.0.0.1"),
        (b"Forwarded", b"for=10.0.0.1"),
        (b"Host", b"evil.example"),
        (b"Content-Length", b"5"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Connection", b"close"),
        (b"authorization", b"Basic YTpi"),
        (b"Set-Cookie", b"a=1"),
        (b"Cookie", b"a=1"),
        (b"Cache-Control", b"public"),
        (b"Content-Type", b"text/html"),
        (b"x-checksum-sha256", b"def"),
    ]
    assert clean_trailers(trailers) == [(b"X-Checksum", b"abc"), (b"x-checksum-sha256", b"def")]


def test_an_empty_upgrade_is_no_upgrade() -> None:
    """llhttp does not switch protocols for "Upgrade:" with an empty value, so neither do we:
    a 101 to it would start a tunnel while the parser reads on as HTTP."""
    head = check([(b"Host", b"a"), (b"Connection", b"upgrade"), (b"Upgrade", b" ")])
    assert head.upgrade is None


# --- client certificates (rule 5) ----------------------------------------------------------


def _client_certificate(subject: x509.Name, alt_names: list[x509.GeneralName]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Header Test CA")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


ALICE = _client_certificate(
    x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example, Inc."),
            x509.NameAttribute(NameOID.COMMON_NAME, "alice"),
        ]
    ),
    [
        x509.DNSName("alice.example.test"),
        x509.RFC822Name("alice@example.test"),
        x509.UniformResourceIdentifier("spiffe://example.test/a,b"),
        x509.IPAddress(ipaddress.ip_address("192.0.2.5")),
    ],
)
CLIENT_HEADERS = [
    b"X-Client-Cert-Subject",
    b"X-Client-Cert-SAN",
    b"X-Client-Cert-SHA256",
    b"X-Client-Verified",
]


@pytest.mark.parametrize("client", [UNTRUSTED, PROXY], ids=["untrusted", "trusted"])
@pytest.mark.parametrize("name", [*CLIENT_HEADERS, b"x-client-cert-subject"])
def test_client_sent_certificate_headers_are_always_dropped(
    client: ClientInfo, name: bytes
) -> None:
    """Without --client-ca, and even from a trusted proxy: only this hop writes them."""
    head = check([(b"Host", b"a.example"), (name, b"CN=mallory"), (b"Accept", b"*/*")], client)

    assert not any(n.lower().startswith(b"x-client-") for n in names(head))
    assert values(head, b"Accept") == [b"*/*"]


def test_client_certificate_headers_are_not_allowed_in_trailers() -> None:
    assert clean_trailers([(b"X-Client-Cert-Subject", b"CN=mallory"), (b"X-Ok", b"1")]) == [
        (b"X-Ok", b"1")
    ]


def test_verified_certificate_is_described_in_our_headers() -> None:
    client = UNTRUSTED.with_certificate(ALICE)
    head = check(
        [(b"Host", b"a.example"), (b"X-Client-Cert-Subject", b"CN=mallory")],
        client,
    )

    assert values(head, b"X-Client-Verified") == [b"SUCCESS"]
    assert values(head, b"X-Client-Cert-Subject") == [b"CN=alice,O=Example\\, Inc."]
    assert values(head, b"X-Client-Cert-SAN") == [
        b"DNS:alice.example.test, email:alice@example.test, "
        b"URI:spiffe://example.test/a%2Cb, IP:192.0.2.5"
    ]
    assert values(head, b"X-Client-Cert-SHA256") == [hashlib.sha256(ALICE).hexdigest().encode()]
    assert values(head, b"X-Forwarded-For") == [b"203.0.113.7"]  # the rest is unchanged


@pytest.mark.parametrize("host", [None, b"a.example"])
def test_certificate_headers_also_follow_a_trusted_proxys_forwarding_headers(
    host: bytes | None,
) -> None:
    """The path that extends an earlier hop's values adds them too."""
    headers = [(b"X-Forwarded-For", b"198.51.100.1")]
    if host is not None:
        headers.insert(0, (b"Host", host))
    for kept in ([], [(b"X-Forwarded-Proto", b"http")]):
        head = check(headers + kept, PROXY.with_certificate(ALICE), http10=True)

        assert values(head, b"X-Client-Verified") == [b"SUCCESS"]
        assert values(head, b"X-Client-Cert-Subject") == [b"CN=alice,O=Example\\, Inc."]
        assert values(head, b"X-Forwarded-For") == [b"198.51.100.1, 10.1.2.3"]


def test_no_certificate_is_said_plainly() -> None:
    """--client-auth optional, and the client sent none: NONE and nothing else."""
    head = check([(b"Host", b"a.example")], UNTRUSTED.with_certificate(None))

    assert values(head, b"X-Client-Verified") == [b"NONE"]
    assert [n for n in names(head) if n.lower().startswith(b"x-client-")] == [b"X-Client-Verified"]


def test_without_client_ca_no_certificate_headers_are_added() -> None:
    head = check([(b"Host", b"a.example")])

    assert not any(n.lower().startswith(b"x-client-") for n in names(head))


def test_a_name_with_line_breaks_cannot_break_the_header() -> None:
    """A CA may sign a CN holding CR LF: it reaches the backend escaped, on one line."""
    evil = _client_certificate(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eve\r\nX-Admin: yes é")]),
        [x509.DNSName("a\r\nb.example")],
    )
    head = check([(b"Host", b"a.example")], UNTRUSTED.with_certificate(evil))

    assert values(head, b"X-Client-Cert-Subject") == [b"CN=eve\\0D\\0AX-Admin: yes \\C3\\A9"]
    assert values(head, b"X-Client-Cert-SAN") == [b"DNS:a\\0D\\0Ab.example"]
    assert b"X-Admin" not in names(head)


def test_a_certificate_without_alt_names_has_no_san_header() -> None:
    bare = _client_certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bob")]), [])
    head = check([(b"Host", b"a.example")], UNTRUSTED.with_certificate(bare))

    assert values(head, b"X-Client-Cert-Subject") == [b"CN=bob"]
    assert values(head, b"X-Client-Cert-SAN") == []


def test_with_certificate_leaves_the_shared_description_alone() -> None:
    """ClientInfo.for_peer is memoised across connections: a certificate belongs to one."""
    UNTRUSTED.with_certificate(ALICE)

    assert ClientInfo.for_peer("203.0.113.7", 8443, TRUSTED).certificate_lines == b""
    assert b"X-Client" not in ClientInfo.for_peer("203.0.113.7", 8443, TRUSTED).plain_suffix

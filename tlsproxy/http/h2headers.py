"""HTTP/2 header lists both ways: the request's as an HTTP/1.1 head, the response's from one.

Rule: the request goes to the backend as HTTP/1.1 through the same checks as an HTTP/1.1 request
(:func:`check_request_head`, :func:`backend_target`): ``:authority`` becomes ``Host`` (a ``Host``
field too must name the same host), so forwarding, hop-by-hop and trust rules are the ones of the
HTTP/1.1 front. A body without ``content-length`` goes chunked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tlsproxy.http.h1 import MAX_HEADERS, MAX_URI_BYTES
from tlsproxy.http.headers import (
    HOP_BY_HOP,
    ClientInfo,
    Header,
    HeadRejected,
    ResponseHead,
    check_request_head,
)
from tlsproxy.http.target import backend_target

# Methods whose empty body is still worth a "Content-Length: 0" (RFC 9110 §8.6).
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


@dataclass(frozen=True, slots=True)
class BackendRequest:
    """An HTTP/2 request head rebuilt for the backend."""

    head: bytes  # request line, header lines and framing, ending in the empty line
    has_body: bool
    chunked: bool


def backend_request(
    headers: Sequence[Header], *, client: ClientInfo, prefix: bytes, ended: bool
) -> BackendRequest:
    """The HTTP/1.1 head for an HTTP/2 request (the rule); raise :class:`HeadRejected` if none."""
    method = path = authority = None
    hosts: list[bytes] = []
    fields: list[Header] = []
    for name, value in headers:
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            # :scheme is ignored: this hop is https, and the forwarding headers say so.
        elif name == b"host":
            hosts.append(value)
        else:
            fields.append((name, value))
    if method == b"CONNECT":
        raise HeadRejected(405, "CONNECT is for forward proxies; this is a reverse proxy")
    if method is None or path is None:
        raise HeadRejected(400, "request without :method or :path")
    if len(path) > MAX_URI_BYTES:
        raise HeadRejected(414, "request target too long")
    if len(fields) > MAX_HEADERS:
        raise HeadRejected(431, f"more than {MAX_HEADERS} header fields")
    if authority is not None:
        if any(host.lower() != authority.lower() for host in hosts):
            raise HeadRejected(400, "the Host header names another host than :authority")
        hosts = [authority]
    head = check_request_head([(b"host", host) for host in hosts] + fields, client, http10=False)
    if head.chunked:  # h2 refuses transfer-encoding; never trust a framing header through
        raise HeadRejected(400, "Transfer-Encoding is not allowed in HTTP/2")
    if head.content_length is not None:
        framing = b"Content-Length: " + head.content_length + b"\r\n"
        has_body = head.content_length != b"0"
    elif ended:
        framing = b"Content-Length: 0\r\n" if method in _BODY_METHODS else b""
        has_body = False
    else:
        framing = b"Transfer-Encoding: chunked\r\n"
        has_body = True
    target = path
    if target[:1] != b"/" or prefix:
        target = backend_target(target, method=method, host=head.host, prefix=prefix)
    return BackendRequest(
        head=b"%s %s HTTP/1.1\r\n%s%s\r\n" % (method, target, head.lines, framing),
        has_body=has_body,
        chunked=framing[:1] == b"T",
    )


def response_fields(status: int, head: ResponseHead) -> list[Header]:
    """The HTTP/2 header list of a response head (names lower-case, hop-by-hop already gone)."""
    fields = [(b":status", b"%d" % status)]
    for line in head.lines.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b": ")
            fields.append((name.lower(), value))
    if head.content_length is not None and status != 204:
        fields.append((b"content-length", head.content_length))
    return fields


def plain_fields(status: int, headers: Sequence[Header]) -> list[Header]:
    """A 1xx head or trailers: names lower-case, nothing connection-specific."""
    fields = [(b":status", b"%d" % status)] if status else []
    fields += [(n.lower(), v) for n, v in headers if n.lower() not in HOP_BY_HOP]
    return fields

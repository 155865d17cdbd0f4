"""HTTP/1.1 responses as bytes: heads and their framing, bodies, trailers and error pages.

Rule: every response is framed so that the client can tell where it ends: ``Content-Length`` as
the backend sent it, else chunked, else (HTTP/1.0 clients) the connection closes after it.

Only bytes are made here; the connection writes them (:meth:`tlsproxy.http.h1.H1Connection.flush`).
"""

from __future__ import annotations

from tlsproxy.http.exchange import header_lines
from tlsproxy.http.headers import Header, ResponseHead
from tlsproxy.http.pages import error_response


class ResponseWriter:
    """The responses of one HTTP/1.1 connection, framed in turn, as bytes for the connection."""

    __slots__ = ("_chunked", "_hsts", "_http10", "close_after", "out", "size")

    def __init__(self, *, hsts: bytes) -> None:
        self._hsts = hsts  # --hsts: the Strict-Transport-Security value for every response
        self.out: list[bytes] = []  # made, not yet written: the connection writes and clears it
        self._http10 = False
        self._chunked = False
        self.close_after = False  # the connection ends after this response
        self.size = 0  # body bytes of this response, for the access log

    def start(self, *, http10: bool, close_after: bool) -> None:
        """A request was forwarded: its response is framed for an HTTP/1.0 or 1.1 client."""
        self._http10 = http10
        self._chunked = False
        self.close_after = close_after
        self.size = 0

    def interim(self, status: int, reason: bytes, headers: list[Header]) -> None:
        """A 1xx head, for clients that understand one."""
        if not self._http10:  # HTTP/1.0 clients do not understand 1xx (RFC 9110 §15.2)
            self.out.append(b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, reason, header_lines(headers)))

    def head(self, status: int, reason: bytes, head: ResponseHead, *, bodyless: bool) -> None:
        """The response head, with the framing its body needs (the rule)."""
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason), head.lines]
        if status == 101:  # the tunnel follows this head; the client must hear what it becomes
            lines.append(b"Connection: Upgrade\r\nUpgrade: %s\r\n\r\n" % (head.upgrade or b""))
            self.out.append(b"".join(lines))
            return
        hsts = self._hsts
        if hsts and b"strict-transport-security:" not in head.lines.lower():
            # The app's own policy, if it sets one, wins.
            lines.append(b"Strict-Transport-Security: " + hsts + b"\r\n")
        if head.content_length is not None and status != 204:
            lines.append(b"Content-Length: " + head.content_length + b"\r\n")
        elif not bodyless:
            if self._http10:
                self.close_after = True
            else:
                lines.append(b"Transfer-Encoding: chunked\r\n")
                self._chunked = True
        if self.close_after:
            lines.append(b"Connection: close\r\n\r\n")
        elif self._http10:
            lines.append(b"Connection: keep-alive\r\n\r\n")
        else:
            lines.append(b"\r\n")
        self.out.append(b"".join(lines))

    def body(self, data: bytes) -> None:
        """A piece of the response body, as a chunk if the response is chunked."""
        self.size += len(data)
        if self._chunked:
            self.out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self.out.append(data)

    def end(self, trailers: list[Header]) -> None:
        """The end of the body: for a chunked response, the last chunk and the trailers."""
        if self._chunked:
            self.out.append(b"0\r\n" + header_lines(trailers) + b"\r\n")

    def error(self, status: int, message: str, *, close: bool, head_only: bool = False) -> None:
        """An error page instead of the response; ``close``: the connection ends after it."""
        self.close_after = self.close_after or close
        head, body = error_response(status, message, close=self.close_after)
        if head_only:
            self.out.append(head)
        else:
            self.size = len(body)
            self.out += (head, body)

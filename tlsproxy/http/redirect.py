"""``--redirect-http``: a plain-HTTP port whose only answer is "use HTTPS" (308, same host, path).

Rules:

1. The answer is ``308 Permanent Redirect`` (method and body kept) to ``https://HOST:PORT/path``
   with the Host the client used and the TLS port; the request target is kept as sent.
2. Nothing is ever proxied from this port, and every connection closes after one answer.
3. A request without a usable Host gets 400; a head larger than 8 KiB or slower than the
   header timeout gets nothing but a closed connection.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol

from tlsproxy.http.pages import error_response

MAX_HEAD_BYTES = 8 * 1024
_REQUEST_LINE = re.compile(rb"^[A-Z]+ (/[^ \x00-\x20]*) HTTP/1\.[01]$")
_HOST = re.compile(rb"^\s*(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%]+)(:[0-9]+)?\s*$")


def redirect_answer(head: bytes, https_port: int) -> bytes:
    """The complete response to a plain-HTTP request head (ending in CRLF CRLF)."""
    lines = head.split(b"\r\n")
    request = _REQUEST_LINE.match(lines[0])
    host = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"host":
            host = _HOST.match(value)
            break
    if request is None or host is None:
        status, body = error_response(400, "send this request to the https:// URL", close=True)
        return status + body
    port = b"" if https_port == 443 else b":%d" % https_port
    location = b"https://" + host.group(1) + port + request.group(1)
    body = b"This site is served over HTTPS: " + location + b"\n"
    return (
        b"HTTP/1.1 308 Permanent Redirect\r\nLocation: %s\r\nContent-Type: text/plain\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (location, len(body), body)
    )


class RedirectToHTTPS(Protocol):
    """Reads one request head, answers with :func:`redirect_answer`, closes."""

    def __init__(self, factory: RedirectFactory) -> None:
        self._factory = factory
        self._buffer = b""
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        # A rare, low-volume port: a timer per connection is fine here (rule 3).
        self._timer = self._factory.clock.callLater(
            self._factory.timeout,
            self.transport.abortConnection,  # type: ignore[union-attr]
        )

    def connectionLost(self, reason: object = None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.transport.write(redirect_answer(self._buffer[: end + 4], self._factory.https_port()))  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


class RedirectFactory(Factory):
    noisy = False

    def __init__(
        self, *, https_port: Callable[[], int], clock: IReactorTime, timeout: float
    ) -> None:
        self.https_port = https_port  # asked per answer: the TLS port may be chosen at bind time
        self.clock = clock
        self.timeout = timeout

    def buildProtocol(self, addr: object) -> RedirectToHTTPS:
        return RedirectToHTTPS(self)

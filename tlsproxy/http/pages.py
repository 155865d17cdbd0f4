"""The short plain-text responses tlsproxy writes itself, when there is no backend answer."""

from __future__ import annotations

from http import HTTPStatus

# Where RFC 9110 renamed a status after Python's table was written.
_PHRASES = {413: "Content Too Large", 414: "URI Too Long", 422: "Unprocessable Content"}


def error_response(status: int, message: str, *, close: bool) -> tuple[bytes, bytes]:
    """The head and body of an HTTP/1.1 response whose body says what went wrong in a sentence."""
    phrase = _PHRASES.get(status) or HTTPStatus(status).phrase
    body = f"{status} {phrase}\n\n{message}\n".encode()
    connection = b"Connection: close\r\n" if close else b""
    head = (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
        b"Cache-Control: no-store\r\n%s\r\n" % (status, phrase.encode(), len(body), connection)
    )
    return head, body

"""tlsproxy.http.pages: the few responses tlsproxy writes itself."""

from __future__ import annotations

from tlsproxy.http.pages import error_response


def test_error_page_is_a_framed_head_and_a_one_sentence_body() -> None:
    """Status line, plain-text type, exact Content-Length, no caching; the body says why."""
    head, body = error_response(502, "the backend is not answering.", close=False)
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 502 Bad Gateway",
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Length: %d" % len(body),
        b"Cache-Control: no-store",
        b"",
        b"",
    ]
    assert body == b"502 Bad Gateway\n\nthe backend is not answering.\n"


def test_closing_error_page_says_connection_close() -> None:
    """When the connection ends after the page, its head says so."""
    head, _ = error_response(400, "bad", close=True)
    assert head.endswith(b"\r\nConnection: close\r\n\r\n")
    open_head, _ = error_response(400, "bad", close=False)
    assert b"Connection" not in open_head


def test_message_is_utf8_and_length_counts_bytes() -> None:
    """A non-ASCII message (a backend URL with an IDN, say) is counted in bytes, not characters."""
    head, body = error_response(502, "caf\u00e9", close=False)
    assert b"Content-Length: %d" % len(body) in head.split(b"\r\n")
    assert "caf\u00e9".encode() in body

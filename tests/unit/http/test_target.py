"""tlsproxy.http.target: the request target the backend gets, as a pure function."""

from __future__ import annotations

import pytest

from tlsproxy.http.headers import HeadRejected
from tlsproxy.http.target import backend_target

HOST = b"localhost:8443"


def target(
    sent: bytes, *, prefix: bytes = b"", method: bytes = b"GET", host: bytes | None = HOST
) -> bytes:
    return backend_target(sent, method=method, host=host, prefix=prefix)


def refused(sent: bytes, *, prefix: bytes = b"", method: bytes = b"GET") -> HeadRejected:
    with pytest.raises(HeadRejected) as raised:
        target(sent, prefix=prefix, method=method)
    assert raised.value.status == 400
    return raised.value


# --- origin-form ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent", [b"/", b"/a/../b/%2e%2E/%2F?x=%20&y=+", b"/a/./b", b"//x", b"/..", b"/%2e%2e/x"]
)
def test_origin_form_without_prefix_passes_byte_for_byte(sent: bytes) -> None:
    """Without a --backend path prefix, a path is the backend's business: it passes as sent,
    dot segments and percent-encoding included."""
    assert target(sent) == sent


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        (b"/a", b"/public/a"),
        (b"/", b"/public/"),
        (b"/a?q=/../x", b"/public/a?q=/../x"),  # the query is not a path
        (b"/..foo", b"/public/..foo"),  # not a dot segment: a name that starts with dots
        (b"/a..b", b"/public/a..b"),
        (b"/a/...", b"/public/a/..."),
    ],
)
def test_origin_form_is_appended_to_the_prefix(sent: bytes, expected: bytes) -> None:
    """With --backend http://host:port/public, /a goes to the backend as /public/a."""
    assert target(sent, prefix=b"/public") == expected


@pytest.mark.parametrize(
    "sent",
    [
        b"/../admin",
        b"/a/../../admin",
        b"/a/..",
        b"/a/./b",
        b"/.",
        b"/%2e%2e/x",
        b"/%2E%2e/x",
        b"/.%2e/x",
        b"/%2E/x",
        b"/..?q",
        b"/.?q",
    ],
)
def test_dot_segments_under_a_prefix_are_refused(sent: bytes) -> None:
    """Under a prefix, a dot segment (plain or percent-encoded, before any query or fragment)
    is 400: the backend would resolve it to a path outside the prefix."""
    assert "dot segments" in refused(sent, prefix=b"/public").reason


# --- absolute-form --------------------------------------------------------------------------


def test_absolute_form_for_our_host_is_sent_in_origin_form() -> None:
    """An absolute URL naming the Host is sent as its path and query (app servers expect
    origin-form)."""
    assert target(b"http://localhost:8443/x?y") == b"/x?y"


def test_absolute_form_gets_the_prefix_too() -> None:
    """An absolute URL's path is prefixed like any other."""
    assert target(b"http://localhost:8443/x?y", prefix=b"/public") == b"/public/x?y"


def test_absolute_form_is_checked_for_dot_segments_under_a_prefix() -> None:
    """The absolute-form path cannot leave the prefix either."""
    assert "dot segments" in refused(b"http://localhost:8443/../admin", prefix=b"/public").reason


def test_absolute_form_scheme_and_authority_compare_case_insensitively() -> None:
    """Scheme and host are case-insensitive (RFC 3986 §6.2.2.1)."""
    assert target(b"HTTPS://LocalHost:8443/x") == b"/x"


def test_absolute_form_without_a_path_is_the_root() -> None:
    """http://localhost:8443 with no path asks for /."""
    assert target(b"http://localhost:8443") == b"/"
    assert target(b"http://localhost:8443", prefix=b"/public") == b"/public/"


@pytest.mark.parametrize(
    "sent",
    [b"http://example.com/x", b"http://localhost:9999/x", b"http://localhost/x", b"http:///x"],
)
def test_absolute_form_naming_another_authority_is_refused(sent: bytes) -> None:
    """An absolute URL whose authority is not the Host header is 400, never a guess at which
    one the client meant."""
    assert "another host" in refused(sent).reason


def test_absolute_form_without_host_header_is_refused() -> None:
    """An HTTP/1.0 request with no Host has nothing to compare the authority to: 400."""
    with pytest.raises(HeadRejected, match="another host"):
        target(b"http://localhost:8443/x", host=None)


# --- asterisk-form and nonsense -------------------------------------------------------------


def test_asterisk_with_options_passes_unprefixed() -> None:
    """OPTIONS * is about the server, not a path: it passes, never prefixed."""
    assert target(b"*", method=b"OPTIONS") == b"*"
    assert target(b"*", method=b"OPTIONS", prefix=b"/public") == b"*"


@pytest.mark.parametrize("method", [b"GET", b"POST", b"options"])
def test_asterisk_with_another_method_is_refused(method: bytes) -> None:
    """The asterisk target is only for OPTIONS (RFC 9112 §3.2.4); methods are case-sensitive."""
    assert "only for OPTIONS" in refused(b"*", method=method).reason


@pytest.mark.parametrize("sent", [b"foo", b"ftp://localhost:8443/x", b"localhost:8443", b"**"])
def test_target_that_is_neither_path_nor_url_is_refused(sent: bytes) -> None:
    """Anything else (authority-form is for CONNECT, which we do not proxy) is 400."""
    assert "neither a path nor an absolute URL" in refused(sent).reason


@pytest.mark.parametrize("target", [b"/..#frag", b"/a/.#frag", b"/a#b"])
def test_fragments_under_a_prefix_are_refused(target: bytes) -> None:
    """llhttp lets a #fragment through; a backend that cuts it off could then resolve the dot
    segments before it, so under a prefix any fragment is refused (400)."""
    assert "fragment" in refused(target, prefix=b"/public").reason


@pytest.mark.parametrize(
    "target", [b"/..;/admin", b"/..%2fadmin", b"/%2e%2e%2fadmin", b"/..%5cadmin", b"/..\\admin"]
)
def test_lenient_dot_segments_under_a_prefix_are_refused(target: bytes) -> None:
    """Dot segments as lenient backends read them (``..;`` for Tomcat/Jetty, encoded slashes,
    backslashes) cannot leave the prefix either."""
    assert "dot segments" in refused(target, prefix=b"/public").reason

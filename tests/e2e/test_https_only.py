"""--redirect-http, --hsts and the framework hints: browsers end up on HTTPS and stay there."""

from __future__ import annotations

import socket

import httpx
import pytest

from .proxyprocess import ProxyFactory, free_port

pytestmark = pytest.mark.e2e


def _plain_get(port: int, target: str, host: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return answer


def test_redirect_http_sends_browsers_to_https(proxy_factory: ProxyFactory) -> None:
    """--redirect-http PORT answers plain HTTP with 308 to the same host and path over HTTPS."""
    plain = free_port()
    proxy = proxy_factory("--interface", "127.0.0.1", "--port", "0", "--redirect-http", str(plain))
    answer = _plain_get(plain, "/a/b?c=d", f"localhost:{plain}")
    head = answer.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("HTTP/1.1 308 Permanent Redirect")
    assert f"Location: https://localhost:{proxy.port}/a/b?c=d" in head
    assert "redirecting http://127.0.0.1:" in proxy.output()


def test_redirect_port_is_not_bound_unless_asked(proxy_factory: ProxyFactory) -> None:
    """Without --redirect-http only the TLS port listens (never port 80 by surprise)."""
    proxy = proxy_factory()
    assert "redirecting" not in proxy.output()
    assert proxy.output().count("listening on ") == 1


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "h2"])
def test_hsts_is_added_unless_the_app_sets_its_own(
    proxy_factory: ProxyFactory, http2: bool
) -> None:
    """--hsts 600 adds Strict-Transport-Security: max-age=600 over HTTP/1.1 and HTTP/2."""
    proxy = proxy_factory("--hsts", "600")
    with httpx.Client(verify=proxy.ssl_context(), http2=http2, timeout=10) as client:
        response = client.get(f"{proxy.url}/hsts")
    assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    assert response.headers.get_list("strict-transport-security") == ["max-age=600"]


def test_no_hsts_by_default(proxy_factory: ProxyFactory) -> None:
    """A development proxy must not pin localhost to HTTPS in the browser unless asked."""
    proxy = proxy_factory()
    with proxy.client() as client:
        assert "strict-transport-security" not in client.get(f"{proxy.url}/x").headers


def test_banner_names_each_frameworks_setting(proxy_factory: ProxyFactory) -> None:
    """Startup prints the one setting per framework, with the real port for Vite."""
    proxy = proxy_factory()
    output = proxy.output()
    for framework in ("Django:", "Flask/Werkzeug:", "Rails:", "Express:", "Vite:"):
        assert framework in output
    assert f"clientPort: {proxy.port}" in output

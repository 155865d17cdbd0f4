"""A real Flask app behind tlsproxy knows it is served over HTTPS (issue 3, frameworks)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
from flask import Flask, redirect, request, url_for
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers.response import Response

from .proxyprocess import ProxyFactory

pytestmark = pytest.mark.e2e


def _app() -> Flask:
    app = Flask(__name__)
    # The one setting tlsproxy prints for Flask at startup (tlsproxy/frameworks.py).
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1, x_port=1)  # type: ignore[method-assign]

    @app.get("/where")
    def where() -> dict[str, object]:
        return {
            "url": url_for("where", _external=True),
            "scheme": request.scheme,
            "secure": request.is_secure,
            "client": request.remote_addr,
        }

    @app.get("/go")
    def go() -> Response:
        return redirect(url_for("where", _external=True))

    return app


@pytest.fixture(scope="module")
def flask_server() -> Iterator[BaseWSGIServer]:
    """The Flask app served by Werkzeug on 127.0.0.1:0 in a thread."""
    server = make_server("127.0.0.1", 0, _app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    thread.join(5)


def _client(proxy_factory: ProxyFactory, server: BaseWSGIServer) -> tuple[httpx.Client, int]:
    proxy = proxy_factory("--backend", f"http://127.0.0.1:{server.server_port}")
    return proxy.client(), proxy.port


def test_external_urls_are_https_on_the_proxy_port(
    proxy_factory: ProxyFactory, flask_server: BaseWSGIServer
) -> None:
    """url_for(..., _external=True) gives https://localhost:PORT/..., and the request is secure."""
    client, port = _client(proxy_factory, flask_server)
    with client:
        seen = client.get(f"https://localhost:{port}/where").json()
    assert seen["url"] == f"https://localhost:{port}/where"
    assert seen["scheme"] == "https"
    assert seen["secure"] is True


def test_redirects_point_to_https(
    proxy_factory: ProxyFactory, flask_server: BaseWSGIServer
) -> None:
    """A redirect the app builds names the https URL the browser used, not http://."""
    client, port = _client(proxy_factory, flask_server)
    with client:
        response = client.get(f"https://localhost:{port}/go", follow_redirects=False)
    assert response.status_code == 302
    assert response.headers["location"] == f"https://localhost:{port}/where"


def test_client_sent_forwarded_for_is_not_believed(
    proxy_factory: ProxyFactory, flask_server: BaseWSGIServer
) -> None:
    """A client claiming X-Forwarded-For: 203.0.113.66 is seen as itself (127.0.0.1)."""
    client, port = _client(proxy_factory, flask_server)
    with client:
        seen = client.get(
            f"https://localhost:{port}/where",
            headers={"X-Forwarded-For": "203.0.113.66", "Forwarded": "for=203.0.113.66"},
        ).json()
    assert seen["client"] == "127.0.0.1"

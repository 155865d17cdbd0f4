"""--metrics-listen serves Prometheus counters that move with real traffic; JSON access logs."""

from __future__ import annotations

import json
import socket
import urllib.request

import httpx
import pytest

from .backend import Backend, BackendConnection, ReceivedRequest, echo_responder
from .proxyprocess import ProxyFactory, ProxyProcess

pytestmark = pytest.mark.e2e

METRICS = "--metrics-listen", "tcp:0:interface=127.0.0.1"


def metrics_url(proxy: ProxyProcess) -> str:
    match = proxy.wait_for_output(r"metrics on (http://127\.0\.0\.1:\d+/metrics)")
    assert match is not None, proxy.output()
    return match.group(1)


def scrape(url: str) -> dict[str, float]:
    """The sample lines of one scrape, by ``name{labels}``; checks the content type."""
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 (our own http URL)
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = answer.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    return values


def test_scrape_shows_requests_errors_and_failed_handshakes(
    proxy_factory: ProxyFactory, backend: Backend
) -> None:
    """After two 200s, a 502 and a garbage handshake, the scrape's counters have moved."""
    proxy = proxy_factory(*METRICS)
    url = metrics_url(proxy)
    before = scrape(url)
    with proxy.client() as client:
        assert client.get("/one").status_code == 200
        assert client.post("/two", content=b"12345").status_code == 200

    def hang_up_on_down(conn: BackendConnection, request: ReceivedRequest) -> None:
        if request.target == b"/down":
            conn.close()  # twice: the proxy retries once on a fresh connection, then says 502
        else:
            echo_responder(conn, request)

    backend.respond_with(hang_up_on_down)
    with proxy.client() as client:
        assert client.get("/down").status_code == 502
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as raw:
        raw.sendall(b"\x16\x03\x01\x00\x10" + b"\x00" * 16)  # a record that is no ClientHello
        raw.recv(1024)  # the alert, then the close
    after = scrape(url)
    assert after['tlsproxy_requests_total{status_class="2xx"}'] == 2
    assert after['tlsproxy_requests_total{status_class="5xx"}'] == 1
    assert after['tlsproxy_backend_errors_total{kind="closed"}'] == 1
    assert after['tlsproxy_tls_handshake_failures_total{reason="other"}'] == 1
    assert after["tlsproxy_connections_accepted_total"] >= 3
    assert after["tlsproxy_request_body_bytes_total"] == 5
    assert (
        after["tlsproxy_response_body_bytes_total"] > before["tlsproxy_response_body_bytes_total"]
    )
    assert after["tlsproxy_request_duration_seconds_count"] == 3
    expiry = [v for k, v in after.items() if k.startswith("tlsproxy_certificate_expiry_")]
    assert len(expiry) == 1
    assert expiry[0] > 0


def test_metrics_endpoint_answers_only_metrics(proxy_factory: ProxyFactory) -> None:
    """Other paths on the metrics listener are 404, and it speaks plain HTTP, not the proxy."""
    proxy = proxy_factory(*METRICS)
    url = metrics_url(proxy)
    result = httpx.get(url.replace("/metrics", "/"), timeout=10)
    assert result.status_code == 404
    assert result.headers["connection"] == "close"


def test_json_access_log_lines_parse(proxy_factory: ProxyFactory) -> None:
    """--access-log - --access-log-format json writes one JSON object per exchange."""
    proxy = proxy_factory("--access-log", "-", "--access-log-format", "json")
    with proxy.client() as client:
        assert client.get("/logged", headers={"User-Agent": "e2e"}).status_code == 200
    assert proxy.wait_for_output(r'"target":"/logged"') is not None, proxy.output()
    lines = [line for line in proxy.output().splitlines() if line.startswith("{")]
    entry = json.loads(lines[-1])
    assert entry["method"] == "GET"
    assert entry["status"] == 200
    assert entry["user_agent"] == "e2e"
    assert entry["protocol"] in ("HTTP/1.1", "HTTP/2.0")
    assert entry["time"].endswith("Z")
    assert entry["duration_ms"] >= 0

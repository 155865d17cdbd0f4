"""tlsproxy.metrics: the counters, their Prometheus rendering, and the /metrics endpoint."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport

from tests.certfactory import make_ca, make_leaf, write_pair
from tests.unit.harness import Proxy, request, response
from tlsproxy.listen import FrontFactory
from tlsproxy.metrics import (
    BACKEND_ERRORS,
    CONTENT_TYPE,
    DURATION_BUCKETS,
    HANDSHAKE_REASONS,
    HTTP_REQUEST,
    Metrics,
    MetricsFactory,
    answer,
    handshake_reason,
    render,
    snapshot,
    total,
)
from tlsproxy.tls.certstore import load_certificate
from tlsproxy.tls.memorytls import MemoryTLSFactory
from tlsproxy.tls.policy import HTTP1_ALPN, server_ssl_context

PEER = IPv4Address("TCP", "192.0.2.7", 51000)


@dataclass(frozen=True)
class Cert:
    names: tuple[str, ...]
    not_after: datetime
    fingerprint_sha256: str = "AB:CD"


def samples(text: str) -> dict[str, float]:
    """``{'name{labels}': value}`` for every sample line, after checking each line's form."""
    values: dict[str, float] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            assert len(line.split(" ", 3)) == 4, line
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram"), line
            assert name.startswith("tlsproxy_"), line
            assert kind != "counter" or name.endswith("_total"), line
            typed.add(name)
        else:
            key, value = line.rsplit(" ", 1)
            base = key.split("{", 1)[0]
            family = base.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
            assert base in typed or family in typed, f"sample before its TYPE: {line}"
            values[key] = float(value)
    return values


def scrape(proxy: Proxy) -> dict[str, float]:
    return samples(render(proxy.metrics, 0.0, []))


def test_render_is_prometheus_text_with_every_family() -> None:
    """Every family has HELP and TYPE, counters end in _total, and labelled series are all there."""
    text = render(Metrics(), 0.0, [])
    values = samples(text)
    assert text.endswith("\n")
    assert values["tlsproxy_connections_open"] == 0
    assert values["tlsproxy_connections_accepted_total"] == 0
    for reason in HANDSHAKE_REASONS:
        assert values[f'tlsproxy_tls_handshake_failures_total{{reason="{reason}"}}'] == 0
    for label in ("1xx", "2xx", "3xx", "4xx", "5xx", "other"):
        assert values[f'tlsproxy_requests_total{{status_class="{label}"}}'] == 0
    for kind in ("connect", "timeout", "closed", "malformed", "tls"):
        assert values[f'tlsproxy_backend_errors_total{{kind="{kind}"}}'] == 0
    assert values["tlsproxy_request_body_bytes_total"] == 0
    assert values["tlsproxy_response_body_bytes_total"] == 0
    assert values['tlsproxy_request_duration_seconds_bucket{le="+Inf"}'] == 0
    assert values["tlsproxy_request_duration_seconds_count"] == 0


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    """A duration lands in every bucket whose bound is at or above it (le), and in sum/count."""
    clock = MemoryReactorClock()
    metrics = Metrics(seconds=clock.seconds)
    clock.advance(0.05)
    metrics.exchange_ended(200, 0, 0.0)  # exactly 0.05 s: in le="0.05"
    clock.advance(100)
    metrics.exchange_ended(200, 0, 0.0)  # beyond the last bound: only in +Inf
    values = samples(render(metrics, 0.0, []))
    name = "tlsproxy_request_duration_seconds"
    assert values[f'{name}_bucket{{le="0.025"}}'] == 0
    assert values[f'{name}_bucket{{le="0.05"}}'] == 1
    assert values[f'{name}_bucket{{le="{DURATION_BUCKETS[-1]!r}"}}'] == 1
    assert values[f'{name}_bucket{{le="+Inf"}}'] == 2
    assert values[f"{name}_count"] == 2
    assert values[f"{name}_sum"] == pytest.approx(0.05 + 100.05)


def test_certificate_expiry_is_rendered_with_its_names() -> None:
    """Each certificate gives its expiry as Unix time and as seconds left at ``now``."""
    expiry = datetime(2027, 1, 1, tzinfo=UTC)
    cert = Cert(names=("example.com", 'we"ird'), not_after=expiry)
    values = samples(render(Metrics(), expiry.timestamp() - 3600, [cert]))
    labels = '{names="example.com,we\\"ird",sha256="abcd"}'
    assert values[f"tlsproxy_certificate_expiry_timestamp_seconds{labels}"] == expiry.timestamp()
    assert values[f"tlsproxy_certificate_expires_in_seconds{labels}"] == 3600


def test_exchanges_count_by_status_class_with_bytes_and_duration() -> None:
    """Real in-memory exchanges move the request, byte and duration counters."""
    proxy = Proxy()
    client = proxy.connect()
    client.send(request(method=b"POST", headers=[b"Content-Length: 4"], body=b"abcd"))
    backend = proxy.accept()
    proxy.clock.advance(0.2)
    backend.send(response(body=b"hello"))
    proxy.connect().send(request())  # goes to the same (pooled) backend connection
    backend.send(response(b"404 Not Found"))
    values = scrape(proxy)
    assert values['tlsproxy_requests_total{status_class="2xx"}'] == 1
    assert values['tlsproxy_requests_total{status_class="4xx"}'] == 1
    assert values["tlsproxy_request_body_bytes_total"] == 4
    assert values["tlsproxy_response_body_bytes_total"] == 5
    assert values['tlsproxy_request_duration_seconds_bucket{le="0.1"}'] == 1
    assert values['tlsproxy_request_duration_seconds_bucket{le="0.25"}'] == 2
    assert values["tlsproxy_request_duration_seconds_sum"] == pytest.approx(0.2)


def test_rejected_request_is_counted_without_a_duration() -> None:
    """A request refused before the backend (400) counts as 4xx but not in the histogram."""
    proxy = Proxy()
    proxy.connect().send(b"NOT A REQUEST\r\n\r\n")
    values = scrape(proxy)
    assert values['tlsproxy_requests_total{status_class="4xx"}'] == 1
    assert values["tlsproxy_request_duration_seconds_count"] == 0


def test_backend_refused_counts_a_connect_error_and_a_5xx() -> None:
    """A refused backend connection is a 502 and a backend error of kind connect."""
    proxy = Proxy()
    proxy.connect().send(request())
    proxy.refuse()
    values = scrape(proxy)
    assert values['tlsproxy_backend_errors_total{kind="connect"}'] == 1
    assert values['tlsproxy_requests_total{status_class="5xx"}'] == 1


def test_backend_timeout_malformed_and_closed_are_told_apart() -> None:
    """A silent backend is a timeout, garbage is malformed, a close before answering is closed."""
    proxy = Proxy()
    proxy.connect().send(request())
    proxy.accept()
    proxy.clock.advance(proxy.backend_timeout + 1)
    proxy.connect().send(request())
    proxy.accept().send(b"THIS IS NOT HTTP\r\n\r\n")
    proxy.connect().send(request())
    proxy.accept().close()
    proxy.clock.advance(0)
    values = scrape(proxy)
    assert values['tlsproxy_backend_errors_total{kind="timeout"}'] == 1
    assert values['tlsproxy_backend_errors_total{kind="malformed"}'] == 1
    assert values['tlsproxy_backend_errors_total{kind="closed"}'] == 1
    assert values['tlsproxy_requests_total{status_class="5xx"}'] == 3


def test_handshake_reasons_map_to_a_small_fixed_set() -> None:
    """OpenSSL's reason codes become one of four labels; anything unknown is "other"."""
    assert HANDSHAKE_REASONS[handshake_reason("NO_SHARED_CIPHER")] == "no shared cipher"
    assert HANDSHAKE_REASONS[handshake_reason("UNSUPPORTED_PROTOCOL")] == "unsupported protocol"
    assert HANDSHAKE_REASONS[handshake_reason("HTTP_REQUEST")] == "http request"
    assert HANDSHAKE_REASONS[handshake_reason("WRONG_VERSION_NUMBER")] == "other"
    assert HANDSHAKE_REASONS[handshake_reason(None)] == "other"


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    now = datetime.now(UTC)
    ca = make_ca("Metrics Test CA", now=now)
    directory: Path = tmp_path_factory.mktemp("metrics")
    certificate = load_certificate(*write_pair(directory, make_leaf(ca, now=now)), now=now)
    return server_ssl_context(certificate, alpn=HTTP1_ALPN)


def handshake(context: ssl.SSLContext, data: bytes, metrics: Metrics) -> None:
    factory = MemoryTLSFactory(
        context, Factory.forProtocol(Protocol), plain_answer=b"no\n", metrics=metrics
    )
    server = factory.buildProtocol(PEER)
    assert server is not None
    server.makeConnection(StringTransport())  # type: ignore[no-untyped-call]
    server.dataReceived(data)


def test_failed_handshakes_are_counted_by_reason(context: ssl.SSLContext) -> None:
    """Garbage instead of a ClientHello is "other"; plain HTTP on the TLS port is "http request"."""
    metrics = Metrics()
    handshake(context, b"\x16\x03\x01\x00\x05garbage-garbage", metrics)
    handshake(context, b"GET / HTTP/1.1\r\n\r\n", metrics)
    assert metrics.handshake_failures == [0, 0, 1, 1]


def test_front_factory_counts_accepted_and_open_connections() -> None:
    """Accepted only grows; open follows connections as they close."""
    proxy = Proxy()
    front = FrontFactory(proxy.settings, max_connections=10)
    first = front.buildProtocol(PEER)
    front.buildProtocol(PEER)
    first.connectionLost()
    assert (proxy.metrics.connections_accepted, proxy.metrics.connections_open) == (2, 1)


def test_endpoint_answers_get_metrics_and_nothing_else() -> None:
    """GET /metrics is the page with the 0.0.4 content type; other paths 404; all close."""
    ok = answer(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", lambda: "page\n")
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: " + CONTENT_TYPE + b"\r\n" in ok
    assert b"Connection: close\r\n" in ok
    assert ok.endswith(b"\r\n\r\npage\n")
    assert answer(b"GET / HTTP/1.1\r\n\r\n", lambda: "page\n").startswith(b"HTTP/1.1 404 ")
    assert answer(b"POST /metrics HTTP/1.1\r\n\r\n", lambda: "").startswith(b"HTTP/1.1 405 ")
    assert answer(b"garbage\r\n\r\n", lambda: "").startswith(b"HTTP/1.1 400 ")


def test_endpoint_protocol_answers_then_closes_and_times_out_silence() -> None:
    """A scrape is answered once its head is in; a silent connection is dropped after 10 s."""
    clock = MemoryReactorClock()
    factory = MetricsFactory(lambda: "x 1\n", clock=clock)
    scrape_ = factory.buildProtocol(PEER)
    transport = StringTransport()
    scrape_.makeConnection(transport)  # type: ignore[no-untyped-call]
    scrape_.dataReceived(b"GET /metrics HTTP/1.1\r\n")
    assert transport.value() == b""
    scrape_.dataReceived(b"\r\n")
    assert transport.value().endswith(b"x 1\n")
    assert transport.disconnecting
    silent = factory.buildProtocol(PEER)
    silent_transport = StringTransport()
    silent.makeConnection(silent_transport)  # type: ignore[no-untyped-call]
    clock.advance(10)
    assert silent_transport.disconnecting


# -- several processes (--workers) ----------------------------------------------------------------


def test_snapshots_of_workers_add_up_sample_by_sample() -> None:
    """Counters, gauges, labelled counters and histogram buckets of several processes sum; a
    snapshot survives JSON; unknown names are ignored and missing ones count 0."""
    first, second = Metrics(), Metrics()
    first.connections_open, second.connections_open = 2, 3
    first.connections_accepted = 10
    first.responses[2], second.responses[2], second.responses[5] = 7, 1, 4
    first.duration_counts[0], second.duration_counts[-1] = 3, 1
    first.duration_sum, second.duration_sum = 0.25, 61.5
    second.handshake_failures[HTTP_REQUEST] = 1
    old = {**snapshot(second), "from_the_future": 9}
    del old["backend_errors"]
    summed = total([json.loads(json.dumps(snapshot(first))), old])
    assert summed.connections_open == 5
    assert summed.connections_accepted == 10
    assert (summed.responses[2], summed.responses[5]) == (8, 4)
    assert (summed.duration_counts[0], summed.duration_counts[-1]) == (3, 1)
    assert summed.duration_sum == 61.75
    assert summed.handshake_failures[HTTP_REQUEST] == 1
    assert summed.backend_errors == [0] * len(BACKEND_ERRORS)
    assert not hasattr(summed, "from_the_future")


def test_what_an_exited_worker_leaves_is_its_counts_not_its_gauges() -> None:
    """gauges=False: connections a gone process had open are not open any more."""
    gone = Metrics()
    gone.connections_open, gone.connections_accepted = 4, 9
    left = total([snapshot(gone)], gauges=False)
    assert (left.connections_open, left.connections_accepted) == (0, 9)

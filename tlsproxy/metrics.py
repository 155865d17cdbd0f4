"""Counters for ``--metrics-listen``, their Prometheus text rendering, and the endpoint serving it.

Rules:

1. Counting is on the hot path, so it costs attribute increments on one :class:`Metrics` object:
   no locks (one reactor thread), no strings built per request, labelled counters are small lists
   indexed by precomputed ints, and a duration finds its bucket by ``bisect`` on a fixed tuple.
2. Rendering (:func:`render`) is a pure function of the counters, the time and the certificates;
   it runs once per scrape, so it may be as slow as it likes.
3. The endpoint is plain HTTP on its own listener and never touches the proxy path: one tiny
   request in, ``Connection: close`` out.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol

#: Upper bounds (``le``) of the request duration buckets, in seconds; +Inf is implied.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: TLS handshake failure reasons, by index; OpenSSL's reason codes map onto them.
HANDSHAKE_REASONS = ("no shared cipher", "unsupported protocol", "http request", "other")
NO_SHARED_CIPHER, UNSUPPORTED_PROTOCOL, HTTP_REQUEST, OTHER_HANDSHAKE_FAILURE = range(4)
_OPENSSL_REASONS = {
    "NO_SHARED_CIPHER": NO_SHARED_CIPHER,
    "NO_CIPHERS_AVAILABLE": NO_SHARED_CIPHER,
    "NO_SUITABLE_SIGNATURE_ALGORITHM": NO_SHARED_CIPHER,
    "UNSUPPORTED_PROTOCOL": UNSUPPORTED_PROTOCOL,
    "TLSV1_ALERT_PROTOCOL_VERSION": UNSUPPORTED_PROTOCOL,
    "UNSUPPORTED_SSL_VERSION": UNSUPPORTED_PROTOCOL,
    "HTTP_REQUEST": HTTP_REQUEST,
    "HTTPS_PROXY_REQUEST": HTTP_REQUEST,
}

#: Backend error kinds, by index (see :mod:`tlsproxy.http.exchange`).
BACKEND_ERRORS = ("connect", "timeout", "closed", "malformed", "tls")
CONNECT, TIMEOUT, CLOSED, MALFORMED, TLS = range(5)

#: Response status classes, by ``status // 100``; 0 (no status) and 6-9 are "other".
_STATUS_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx", "other", "other", "other", "other")


def handshake_reason(openssl_reason: str | None) -> int:
    """The index in :data:`HANDSHAKE_REASONS` for an ``ssl.SSLError.reason``."""
    return _OPENSSL_REASONS.get(openssl_reason or "", OTHER_HANDSHAKE_FAILURE)


class Metrics:
    """Every counter the proxy keeps; the fronts, the TLS layer and the exchanges write to it."""

    __slots__ = (
        "backend_errors",
        "connections_accepted",
        "connections_open",
        "duration_counts",
        "duration_sum",
        "handshake_failures",
        "request_body_bytes",
        "response_body_bytes",
        "responses",
        "seconds",
    )

    def __init__(self, *, seconds: Callable[[], float] = time.monotonic) -> None:
        #: The clock request durations are measured with: one call at the head, one at the end.
        self.seconds = seconds
        self.connections_accepted = 0
        self.connections_open = 0
        self.handshake_failures = [0] * len(HANDSHAKE_REASONS)
        self.responses = [0] * 10  # by status // 100
        self.backend_errors = [0] * len(BACKEND_ERRORS)
        self.request_body_bytes = 0
        self.response_body_bytes = 0
        self.duration_counts = [0] * (len(DURATION_BUCKETS) + 1)  # not cumulative; last: +Inf
        self.duration_sum = 0.0

    def exchange_ended(self, status: int, size: int, started: float) -> None:
        """An exchange that began at ``started`` (by :attr:`seconds`) sent its last byte."""
        duration = self.seconds() - started
        self.responses[status // 100 % 10] += 1
        self.response_body_bytes += size
        self.duration_counts[bisect_left(DURATION_BUCKETS, duration)] += 1
        self.duration_sum += duration

    def rejected(self, status: int, size: int) -> None:
        """A request refused before it had an exchange (no duration: its head never completed)."""
        self.responses[status // 100 % 10] += 1
        self.response_body_bytes += size


#: The counters that say how things are now, not how many things happened: a worker that is
#: gone no longer contributes them (see :func:`total`).
GAUGES = frozenset({"connections_open"})


def snapshot(metrics: Metrics) -> dict[str, Any]:
    """Every counter of ``metrics`` by name, as plain numbers and lists (JSON-ready)."""
    values: dict[str, Any] = {}
    for name in Metrics.__slots__:
        if name == "seconds":
            continue
        value = getattr(metrics, name)
        values[name] = list(value) if isinstance(value, list) else value
    return values


def total(snapshots: Sequence[Mapping[str, Any]], *, gauges: bool = True) -> Metrics:
    """The sum of several processes' :func:`snapshot` s, sample by sample (``--workers``).

    Unknown names are ignored and missing ones count 0, so a snapshot from another version
    still adds up. ``gauges=False`` leaves the gauges at 0: what a worker that has exited
    leaves behind is its counts, not its open connections.
    """
    summed = Metrics()
    for name in Metrics.__slots__:
        if name == "seconds" or (not gauges and name in GAUGES):
            continue
        current = getattr(summed, name)
        for values in snapshots:
            value = values.get(name)
            if isinstance(current, list) and isinstance(value, list):
                for index, count in enumerate(value[: len(current)]):
                    current[index] += count
            elif isinstance(value, int | float) and not isinstance(current, list):
                current += value
        setattr(summed, name, current)
    return summed


class HasExpiry(TypingProtocol):
    """What :func:`render` reads of a certificate (a ``LoadedCertificate``)."""

    @property
    def names(self) -> tuple[str, ...]: ...
    @property
    def not_after(self) -> datetime: ...
    @property
    def fingerprint_sha256(self) -> str: ...


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def render(metrics: Metrics, now: float, certificates: Sequence[HasExpiry]) -> str:
    """The counters in Prometheus text exposition format 0.0.4; ``now`` is Unix time."""
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {_number(value)}" for labels, value in samples)

    family(
        "tlsproxy_connections_open",
        "gauge",
        "Client connections open now.",
        [("", metrics.connections_open)],
    )
    family(
        "tlsproxy_connections_accepted_total",
        "counter",
        "Client TCP connections accepted.",
        [("", metrics.connections_accepted)],
    )
    family(
        "tlsproxy_tls_handshake_failures_total",
        "counter",
        "Client TLS handshakes that failed, by reason.",
        [
            (f'{{reason="{reason}"}}', count)
            for reason, count in zip(HANDSHAKE_REASONS, metrics.handshake_failures, strict=True)
        ],
    )
    by_class = dict.fromkeys(("1xx", "2xx", "3xx", "4xx", "5xx", "other"), 0)
    for index, count in enumerate(metrics.responses):
        by_class[_STATUS_CLASSES[index]] += count
    family(
        "tlsproxy_requests_total",
        "counter",
        "Requests answered, by the status class of their response.",
        [(f'{{status_class="{label}"}}', count) for label, count in by_class.items()],
    )
    family(
        "tlsproxy_backend_errors_total",
        "counter",
        "Exchanges the backend failed, by kind.",
        [
            (f'{{kind="{kind}"}}', count)
            for kind, count in zip(BACKEND_ERRORS, metrics.backend_errors, strict=True)
        ],
    )
    family(
        "tlsproxy_request_body_bytes_total",
        "counter",
        "Request body bytes received from clients.",
        [("", metrics.request_body_bytes)],
    )
    family(
        "tlsproxy_response_body_bytes_total",
        "counter",
        "Response body bytes sent to clients.",
        [("", metrics.response_body_bytes)],
    )
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip((*DURATION_BUCKETS, None), metrics.duration_counts, strict=True):
        cumulative += count
        le = "+Inf" if bound is None else repr(bound)
        buckets.append((f'_bucket{{le="{le}"}}', cumulative))
    buckets += [("_sum", metrics.duration_sum), ("_count", cumulative)]
    family(
        "tlsproxy_request_duration_seconds",
        "histogram",
        "Time from a complete request head to the response's end.",
        buckets,
    )
    # The fingerprint tells apart two certificates with the same names (SNI: old and new).
    expiries = [
        (
            f'{{names="{_escape(",".join(c.names))}",'
            f'sha256="{c.fingerprint_sha256.replace(":", "").lower()}"}}',
            c.not_after.timestamp(),
        )
        for c in certificates
    ]
    family(
        "tlsproxy_certificate_expiry_timestamp_seconds",
        "gauge",
        "When the certificate served to new handshakes expires (Unix time).",
        expiries,
    )
    family(
        "tlsproxy_certificate_expires_in_seconds",
        "gauge",
        "Seconds until the certificate served to new handshakes expires.",
        [(labels, expiry - now) for labels, expiry in expiries],
    )
    return "\n".join(lines) + "\n"


# -- the endpoint ----------------------------------------------------------------------------------

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_MAX_HEAD = 8192
_TIMEOUT = 10.0  # seconds a scraper has to send its request head


def _response(status: bytes, content_type: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (status, content_type, len(body), body)
    )


def answer(head: bytes, page: Callable[[], str]) -> bytes:
    """The whole response to a request ``head``: the page for ``GET /metrics``, else 404 or 405."""
    request_line = head.split(b"\n", 1)[0].rstrip(b"\r").split(b" ")
    if len(request_line) != 3 or not request_line[2].startswith(b"HTTP/"):
        return _response(b"400 Bad Request", b"text/plain", b"400 Bad Request\n")
    method, target, _ = request_line
    if target.split(b"?", 1)[0] != b"/metrics":
        return _response(b"404 Not Found", b"text/plain", b"404 Not Found: try /metrics\n")
    if method not in (b"GET", b"HEAD"):
        return _response(b"405 Method Not Allowed", b"text/plain", b"405 Method Not Allowed\n")
    response = _response(b"200 OK", CONTENT_TYPE, page().encode())
    return response if method == b"GET" else response[: response.index(b"\r\n\r\n") + 4]


class MetricsRequest(Protocol):
    """One scrape: read a request head, answer it, close (rule 3)."""

    def __init__(self, page: Callable[[], str], clock: IReactorTime) -> None:
        self._page = page
        self._clock = clock
        self._head = b""
        self._timeout: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._timeout = self._clock.callLater(_TIMEOUT, self._give_up)

    def dataReceived(self, data: bytes) -> None:
        if self._timeout is None:  # answered already
            return
        self._head += data
        if b"\r\n\r\n" in self._head or b"\n\n" in self._head:
            self._finish(answer(self._head, self._page))
        elif len(self._head) > _MAX_HEAD:
            self._finish(_response(b"431 Request Header Fields Too Large", b"text/plain", b""))

    def connectionLost(self, reason: Any = None) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None

    def _give_up(self) -> None:
        self._timeout = None
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _finish(self, response: bytes) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
        self.transport.write(response)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


class MetricsFactory(Factory):
    """Serves ``page()`` at ``/metrics`` over plain HTTP/1.1."""

    noisy = False

    def __init__(self, page: Callable[[], str], *, clock: IReactorTime) -> None:
        self._page = page
        self._clock = clock

    def buildProtocol(self, addr: Any) -> MetricsRequest:
        return MetricsRequest(self._page, self._clock)

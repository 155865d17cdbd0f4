"""The scenarios of the issue: each measures one proxy once and returns a Sample."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import loads
from bench.fixtures import MIB
from bench.process import Service, children, cpu_busy_seconds, cpu_seconds, established, rss_kib
from bench.tools import Tools


@dataclass(frozen=True)
class Settings:
    """Knobs shared by every scenario in one run."""

    tools: Tools
    duration: float
    work_dir: Path
    idle_connections: int
    stream_bytes: int
    upload_file: Path
    handshake_processes: int = 4
    keepalive_connections: int = 50
    bulk_connections: int = 4
    h2_connections: int = 10
    h2_streams: int = 10
    ws_connections: int = 4
    ws_in_flight: int = 8  # 64 KiB messages in flight per websocket
    ws_small_in_flight: int = 64  # 64 B messages in flight per websocket
    ws_backend: Service | None = None  # the websocket echo server, whose CPU share is recorded
    load_cpu: int = 0  # the CPU of the clients and backends, whose busy share is recorded


@dataclass
class Sample:
    """One measurement of one proxy: the figure, the proxy's CPU share, and details."""

    value: float
    cpu: float | None  # proxy CPU seconds per wall second during the load (1.0 = a full core)
    errors: int = 0
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    """A scenario: how to measure, the unit, and what counts as meeting the target."""

    name: str
    title: str
    unit: str
    measure: Callable[[Settings, Service], Sample]
    target: float
    # "ratio": candidate/nginx >= target; "max": candidate's own figure <= target;
    # "figure": no target yet, the figures are reported (the verdict only flags errors).
    kind: str
    higher_is_better: bool = True
    # Restart both proxies first, so heap freed by earlier scenarios cannot hide growth.
    fresh: bool = False
    # Which proxy pair: "http" (in front of the nginx backend) or "ws" (the websocket echo).
    backend: str = "http"


def _url(proxy: Service, path: str) -> str:
    return f"https://127.0.0.1:{proxy.port}{path}"


def _with_cpu(
    proxy: Service, run: Callable[[], loads.LoadResult]
) -> tuple[loads.LoadResult, float]:
    cpu0, t0 = proxy.cpu_seconds(), time.monotonic()
    result = run()
    return result, (proxy.cpu_seconds() - cpu0) / (time.monotonic() - t0)


def _warm(settings: Settings, proxy: Service, path: str, post_bytes: int = 0) -> None:
    loads.run_wrk(
        settings.tools.wrk, _url(proxy, path), connections=2, duration=1,
        script_dir=settings.work_dir, post_bytes=post_bytes,
    )  # fmt: skip


def keepalive(settings: Settings, proxy: Service) -> Sample:
    """100-byte GETs over 50 keep-alive connections: requests/s."""
    _warm(settings, proxy, "/small")
    result, cpu = _with_cpu(proxy, lambda: loads.run_wrk(
        settings.tools.wrk, _url(proxy, "/small"),
        connections=settings.keepalive_connections, duration=settings.duration,
        script_dir=settings.work_dir,
    ))  # fmt: skip
    return Sample(result.requests_per_s, cpu, result.errors, {"wrk": vars(result)})


def workers_keepalive(settings: Settings, proxy: Service) -> Sample:
    """The keepalive load, also recording CPU 0's busy share and, halfway through, how the
    connections are split over the worker processes."""
    split: list[int] = []
    pids = children(proxy.pid) if proxy.children_serve else [proxy.pid]
    halfway = threading.Timer(
        1.0 + settings.duration / 2, lambda: split.extend(established(proxy.port, pids))
    )
    busy0, t0 = cpu_busy_seconds(settings.load_cpu), time.monotonic()
    halfway.start()
    try:
        sample = keepalive(settings, proxy)
    finally:
        halfway.cancel()
    busy = (cpu_busy_seconds(settings.load_cpu) - busy0) / (time.monotonic() - t0)
    sample.detail.update(load_cpu_busy=round(busy, 3), connections_per_worker=split)
    return sample


def h2_keepalive(settings: Settings, proxy: Service) -> Sample:
    """100-byte GETs over HTTP/2: 10 connections of 10 concurrent streams each, requests/s."""
    url = _url(proxy, "/small")
    loads.run_h2load(settings.tools.h2load, url, connections=2, streams=10, duration=1)
    result, cpu = _with_cpu(proxy, lambda: loads.run_h2load(
        settings.tools.h2load, url, connections=settings.h2_connections,
        streams=settings.h2_streams, duration=settings.duration,
    ))  # fmt: skip
    return Sample(result.requests_per_s, cpu, result.errors, {"h2load": vars(result)})


def get_1m(settings: Settings, proxy: Service) -> Sample:
    """1 MiB GETs over 4 keep-alive connections: MiB/s received."""
    _warm(settings, proxy, "/1m")
    result, cpu = _with_cpu(proxy, lambda: loads.run_wrk(
        settings.tools.wrk, _url(proxy, "/1m"),
        connections=settings.bulk_connections, duration=settings.duration,
        script_dir=settings.work_dir,
    ))  # fmt: skip
    return Sample(result.bytes_read / result.seconds / MIB, cpu, result.errors,
                  {"wrk": vars(result)})  # fmt: skip


def post_10m(settings: Settings, proxy: Service) -> Sample:
    """10 MiB POSTs over 4 keep-alive connections: MiB/s of request body sent."""
    _warm(settings, proxy, "/upload", post_bytes=10 * MIB)
    result, cpu = _with_cpu(proxy, lambda: loads.run_wrk(
        settings.tools.wrk, _url(proxy, "/upload"),
        connections=settings.bulk_connections, duration=settings.duration,
        script_dir=settings.work_dir, post_bytes=10 * MIB,
    ))  # fmt: skip
    return Sample(result.bytes_sent_body / result.seconds / MIB, cpu, result.errors,
                  {"wrk": vars(result)})  # fmt: skip


def handshakes(settings: Settings, proxy: Service) -> Sample:
    """Full TLS handshakes (no resumption) + one Connection: close GET each: connections/s."""
    loads.run_handshakes(proxy.port, path="/small", duration=0.5, processes=2)
    result, cpu = _with_cpu(proxy, lambda: loads.run_handshakes(
        proxy.port, path="/small", duration=settings.duration,
        processes=settings.handshake_processes,
    ))  # fmt: skip
    return Sample(result.requests_per_s, cpu, result.errors, {"client": vars(result)})


def _ws(settings: Settings, proxy: Service, *, message_bytes: int, in_flight: int) -> Sample:
    def run(duration: float) -> loads.LoadResult:
        return loads.run_ws_echo(
            proxy.port, connections=settings.ws_connections, in_flight=in_flight,
            message_bytes=message_bytes, duration=duration,
        )  # fmt: skip

    run(1.0)
    backend = settings.ws_backend.pid if settings.ws_backend else None
    backend0 = cpu_seconds(backend) if backend else 0.0
    busy0, t0 = cpu_busy_seconds(settings.load_cpu), time.monotonic()
    result, cpu = _with_cpu(proxy, lambda: run(settings.duration))
    wall = time.monotonic() - t0
    # Whether the clients' side, not the proxy, was the limit: CPU 0 busy, and the backend's part.
    load_side = {
        "load_cpu_busy": round((cpu_busy_seconds(settings.load_cpu) - busy0) / wall, 3),
        "backend_cpu": round((cpu_seconds(backend) - backend0) / wall, 3) if backend else None,
    }
    return Sample(
        result.requests_per_s if message_bytes < 1024 else result.bytes_read / result.seconds / MIB,
        cpu, result.errors,
        {"client": vars(result), "messages_per_s": round(result.requests_per_s, 1),
         "echoed_mib_per_s": round(result.bytes_read / result.seconds / MIB, 2)
         if result.seconds else 0,
         "message_bytes": message_bytes, "in_flight": in_flight,
         "connections": settings.ws_connections, **load_side},
    )  # fmt: skip


def ws_echo(settings: Settings, proxy: Service) -> Sample:
    """64 KiB binary messages echoed over 4 websockets, 8 in flight on each: MiB/s echoed."""
    return _ws(settings, proxy, message_bytes=64 * 1024, in_flight=settings.ws_in_flight)


def ws_echo_small(settings: Settings, proxy: Service) -> Sample:
    """64-byte binary messages echoed over 4 websockets, 64 in flight on each: messages/s."""
    return _ws(settings, proxy, message_bytes=64, in_flight=settings.ws_small_in_flight)


def _settled_rss(pid: int, settle: float = 1.0) -> int:
    time.sleep(settle)
    return rss_kib(pid)


def _baseline(settings: Settings, proxy: Service) -> int:
    # Warm every code path the measurement uses (TLS, parser, backend pool), then settle.
    held = loads.open_idle(proxy.port, 20, timeout=30)
    try:
        loads.request_each(held, "/small")
    finally:
        loads.close_all(held)
    return _settled_rss(proxy.measured_pid())


def idle_rss(settings: Settings, proxy: Service) -> Sample:
    """RSS per idle TLS connection, N held open: after the handshake, then after one request."""
    pid = proxy.measured_pid()
    base = _baseline(settings, proxy)
    n = settings.idle_connections
    held = loads.open_idle(proxy.port, n, timeout=120)
    try:
        after_handshake = _settled_rss(pid)
        answered = loads.request_each(held, "/small")
        after_request = _settled_rss(pid)
    finally:
        loads.close_all(held)
    after_close = _settled_rss(pid)
    per_hs = (after_handshake - base) / n
    per_req = (after_request - base) / n
    return Sample(
        max(per_hs, per_req), None, n - answered,
        {
            "connections": n, "answered": answered, "baseline_kib": base,
            "after_handshake_kib": after_handshake, "after_request_kib": after_request,
            "after_close_kib": after_close,
            "per_connection_after_handshake_kib": round(per_hs, 2),
            "per_connection_after_request_kib": round(per_req, 2),
        },
    )  # fmt: skip


def stream_rss(settings: Settings, proxy: Service) -> Sample:
    """RSS growth while the stream size goes up and down at once (one transfer each way)."""
    pid = proxy.measured_pid()
    base = _baseline(settings, proxy)
    nbytes = settings.stream_bytes
    timeout = max(120.0, nbytes / (4 * MIB))  # at least 4 MiB/s, or it counts as failed
    curl = settings.tools.curl
    with loads.RssSampler(pid) as sampler:
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        down = loads.start_curl(curl, _url(proxy, "/big"), upload=None, timeout=timeout)
        up = loads.start_curl(
            curl, _url(proxy, "/upload"), upload=settings.upload_file, timeout=timeout
        )
        got_down = loads.finish_curl(down, direction="down", expected=nbytes, timeout=timeout)
        got_up = loads.finish_curl(up, direction="up", expected=nbytes, timeout=timeout)
        cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
    peak = max(sampler.samples, default=base)
    errors = (not got_down.ok) + (not got_up.ok)
    return Sample(
        (peak - base) / 1024, cpu, errors,
        {
            "baseline_kib": base, "peak_kib": peak, "samples": len(sampler.samples),
            "down": vars(got_down), "up": vars(got_up),
            "down_mib_s": round(got_down.nbytes / MIB / got_down.seconds, 1)
            if got_down.seconds else 0,
            "up_mib_s": round(got_up.nbytes / MIB / got_up.seconds, 1)
            if got_up.seconds else 0,
        },
    )  # fmt: skip


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("keepalive", "keep-alive 100 B GET", "req/s", keepalive, 0.40, "ratio"),
        # Issue 3 asks for the h2 figure beside nginx, not for a target.
        Scenario("h2-keepalive", "h2 keep-alive 100 B GET", "req/s", h2_keepalive, 0.0,
                 "figure"),
        Scenario("get-1m", "1 MiB GET throughput", "MiB/s", get_1m, 0.70, "ratio"),
        Scenario("post-10m", "10 MiB POST throughput", "MiB/s", post_10m, 0.70, "ratio"),
        Scenario("handshakes", "new TLS conns (P-256, full)", "conn/s", handshakes, 0.80,
                 "ratio"),
        Scenario("idle-rss", "RSS per idle TLS conn", "KiB/conn", idle_rss, 24.0, "max",
                 higher_is_better=False, fresh=True),
        Scenario("stream-rss", "RSS growth, 2 GiB up+down", "MiB", stream_rss, 20.0, "max",
                 higher_is_better=False, fresh=True),
        Scenario("ws-echo", "websocket echo 64 KiB msgs", "MiB/s", ws_echo, 0.0, "figure",
                 backend="ws"),
        Scenario("ws-echo-small", "websocket echo 64 B msgs", "msg/s", ws_echo_small, 0.0,
                 "figure", backend="ws"),
        # tlsproxy --workers 2 against --workers 1 (not nginx): both may run on CPUs 0 and 1.
        Scenario("workers", "keep-alive GET, 2 workers/1", "req/s", workers_keepalive, 0.0,
                 "figure", backend="workers"),
    )
}  # fmt: skip

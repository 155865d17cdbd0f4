"""Load generators: wrk for request rates and throughput, our own clients where wrk can't do it.

wrk and h2load both resume TLS sessions when they reconnect (checked with nginx logging
``$ssl_session_reused``: all but the first handshake per connection slot were resumed), so the
new-connection client is ours: each connection gets a fresh ``SSLSocket`` without ``session=``,
and it counts ``session_reused`` to prove that no handshake was abbreviated.
"""

from __future__ import annotations

import base64
import contextlib
import multiprocessing
import os
import re
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.process import rss_kib
from bench.wsecho import accept_value, apply_mask, frame_header

_WRK_SCRIPT = """
{setup}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK-RESULT %d %d %d %d %d %d %d %d\\n",
    summary.requests, summary.bytes, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


@dataclass(frozen=True)
class LoadResult:
    """What one load run achieved."""

    requests: int
    bytes_read: int
    bytes_sent_body: int
    seconds: float
    errors: int  # socket errors, timeouts and non-2xx/3xx responses
    note: str = ""

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def run_wrk(
    wrk: str,
    url: str,
    *,
    connections: int,
    duration: float,
    script_dir: Path,
    post_bytes: int = 0,
    close: bool = False,
) -> LoadResult:
    """``wrk -t1 -cN -dS`` over HTTPS with keep-alive; POSTs a body of ``post_bytes`` if > 0.

    ``close``: every request says ``Connection: close``, so each is a new TCP connection and TLS
    handshake (wrk resumes the TLS session when it can).
    """
    setup = 'wrk.headers["Connection"] = "close"\n' if close else ""
    if post_bytes:
        setup += (
            'wrk.method = "POST"\n'
            f'wrk.body = string.rep("x", {post_bytes})\n'
            'wrk.headers["Content-Type"] = "application/octet-stream"\n'
        )
    script = script_dir / f"wrk-{post_bytes}{'-close' if close else ''}.lua"
    script.write_text(_WRK_SCRIPT.format(setup=setup))
    argv = [
        wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s",
        "--timeout", "30s", "-s", str(script), url,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("WRK-RESULT "):
            req, nbytes, usec, *errs = (int(v) for v in line.split()[1:])
            return LoadResult(
                requests=req,
                bytes_read=nbytes,
                bytes_sent_body=req * post_bytes,
                seconds=usec / 1e6,
                errors=sum(errs),
                note=" ".join(
                    f"{k}={v}"
                    for k, v in zip(
                        ("connect", "read", "write", "status", "timeout"), errs, strict=True
                    )
                    if v
                ),
            )
    raise RuntimeError(
        f"wrk gave no result (exit {done.returncode}): {' '.join(argv)}\n"
        f"{done.stdout}\n{done.stderr}"
    )


_H2LOAD_FINISHED = re.compile(r"finished in ([0-9.]+)s, ([0-9.]+) req/s")
_H2LOAD_REQUESTS = re.compile(
    r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_H2LOAD_STATUS = re.compile(r"status codes: (\d+) 2xx")


def run_h2load(
    h2load: str, url: str, *, connections: int, streams: int, duration: float
) -> LoadResult:
    """``h2load -cN -mM -D S``: N HTTP/2 connections with M concurrent streams each."""
    argv = [
        h2load, "-t1", f"-c{connections}", f"-m{streams}", "-D", str(max(1, round(duration))),
        url,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    finished = _H2LOAD_FINISHED.search(done.stdout)
    requests = _H2LOAD_REQUESTS.search(done.stdout)
    status = _H2LOAD_STATUS.search(done.stdout)
    if finished is None or requests is None:
        raise RuntimeError(
            f"h2load gave no result (exit {done.returncode}): {' '.join(argv)}\n"
            f"{done.stdout}\n{done.stderr}"
        )
    _total, finished_requests, succeeded, failed, errored, timeouts = (
        int(v) for v in requests.groups()
    )
    ok = int(status.group(1)) if status else succeeded
    return LoadResult(
        requests=ok,
        bytes_read=0,
        bytes_sent_body=0,
        seconds=float(finished.group(1)),
        errors=failed + errored + timeouts + (succeeded - ok),
        note=f"done={finished_requests} succeeded={succeeded} 2xx={ok}",
    )


def client_context() -> ssl.SSLContext:
    """A client context that trusts the bench's throwaway certificate and never resumes."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def read_response(sock: ssl.SSLSocket) -> int:
    """Read one HTTP/1.1 response with a Content-Length body; return its status code."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed inside the response head: {buf[:80]!r}")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed inside the response body")
        body += chunk
    return status


def _request(path: str, *, close: bool) -> bytes:
    conn = b"Connection: close\r\n" if close else b""
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + conn + b"\r\n"


def _handshake_worker(port: int, path: str, seconds: float, limit: int) -> tuple[int, int, int]:
    """Full handshake + one ``Connection: close`` request per connection, until time is up."""
    ctx = client_context()
    request = _request(path, close=True)
    done = reused = errors = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and done + errors < limit:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with ctx.wrap_socket(raw) as tls:
                    tls.sendall(request)
                    status = read_response(tls)
                    reused += bool(tls.session_reused)
            if status == 200:
                done += 1
            else:
                errors += 1
        except (OSError, ValueError, IndexError):
            errors += 1
            time.sleep(0.01)  # a refusing server must not turn this into a busy loop
    return done, reused, errors


def run_handshakes(port: int, *, path: str, duration: float, processes: int) -> LoadResult:
    """New TLS connections/s from ``processes`` forked clients (they inherit the bench's CPU)."""
    limit = 1_000_000  # per process; the time bound normally ends it first
    mp = multiprocessing.get_context("fork")
    start = time.monotonic()
    with mp.Pool(processes) as pool:
        results = pool.starmap(_handshake_worker, [(port, path, duration, limit)] * processes)
    seconds = time.monotonic() - start
    done = sum(r[0] for r in results)
    reused = sum(r[1] for r in results)
    errors = sum(r[2] for r in results)
    if reused:
        raise RuntimeError(f"{reused} of {done} handshakes were resumed: the client is broken")
    return LoadResult(
        requests=done, bytes_read=0, bytes_sent_body=0, seconds=seconds, errors=errors,
        note=f"resumed={reused}",
    )  # fmt: skip


def open_idle(port: int, count: int, *, timeout: float) -> list[ssl.SSLSocket]:
    """Open ``count`` TLS connections (handshake done, nothing sent) and keep them."""
    ctx = client_context()
    held: list[ssl.SSLSocket] = []
    deadline = time.monotonic() + timeout
    try:
        for _ in range(count):
            if time.monotonic() > deadline:
                raise TimeoutError(f"opened only {len(held)} of {count} in {timeout:.0f}s")
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            held.append(ctx.wrap_socket(raw))
    except BaseException:
        close_all(held)
        raise
    return held


def request_each(held: list[ssl.SSLSocket], path: str) -> int:
    """One keep-alive GET on every held connection; return how many answered 200."""
    request = _request(path, close=False)
    sent: list[ssl.SSLSocket] = []
    for tls in held:
        with contextlib.suppress(OSError):
            tls.sendall(request)
            sent.append(tls)
    answered = 0
    for tls in sent:
        with contextlib.suppress(OSError, ValueError, IndexError):
            answered += read_response(tls) == 200
    return answered


def close_all(held: list[ssl.SSLSocket]) -> None:
    for tls in held:
        with contextlib.suppress(OSError):
            tls.close()


@dataclass
class RssSampler:
    """Samples a process's VmRSS every ``interval`` seconds in a thread."""

    pid: int
    interval: float = 0.1
    samples: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                self.samples.append(rss_kib(self.pid))
            self._stop.wait(self.interval)


@dataclass(frozen=True)
class Transfer:
    """One curl transfer's outcome."""

    direction: str
    nbytes: int
    seconds: float
    status: int
    ok: bool
    detail: str


def start_curl(
    curl: str, url: str, *, upload: Path | None, timeout: float
) -> subprocess.Popen[str]:
    """A streaming transfer: download to /dev/null, or upload ``upload`` with Content-Length."""
    argv = [
        curl, "-sS", "-k", "--http1.1", "--max-time", str(int(timeout)),
        "-o", "/dev/null", "-H", "Expect:",
        "-w", "%{http_code} %{size_download} %{size_upload} %{time_total}",
    ]  # fmt: skip
    if upload is not None:
        argv += ["-X", "POST", "-T", str(upload)]
    argv.append(url)
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_curl(
    proc: subprocess.Popen[str], *, direction: str, expected: int, timeout: float
) -> Transfer:
    out, err = proc.communicate(timeout=timeout + 30)
    try:
        code, down, up, total = out.split()
        status, nbytes = int(code), int(up if direction == "up" else down)
        seconds = float(total)
    except ValueError:
        return Transfer(direction, 0, 0.0, 0, False, f"curl said {out!r} {err.strip()!r}")
    ok = proc.returncode == 0 and status == 200 and nbytes == expected
    return Transfer(direction, nbytes, seconds, status, ok, err.strip())


def ws_connect(port: int, *, tls: bool = True, timeout: float = 10) -> socket.socket:
    """Open a websocket (HTTP/1.1 upgrade, no extensions) on ``/ws``; check the 101's accept."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock: socket.socket = client_context().wrap_socket(raw) if tls else raw
    try:
        key = base64.b64encode(os.urandom(16))
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key
            + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )  # fmt: skip
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed before the upgrade answer: {buf[:80]!r}")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        if lines[0].split()[1:2] != [b"101"]:
            raise ConnectionError(f"upgrade refused: {lines[0]!r}")
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(b":") for x in lines)}
        if headers.get(b"sec-websocket-accept") != accept_value(key):
            raise ConnectionError(f"wrong Sec-WebSocket-Accept in {head!r}")
        if rest:
            raise ConnectionError(f"{len(rest)} unexpected bytes after the 101")
    except BaseException:
        sock.close()
        raise
    return sock


def _ws_close(sock: socket.socket) -> None:
    """Send a masked close frame (1000) and wait for the echoed close frame."""
    mask = os.urandom(4)
    code = (1000).to_bytes(2, "big")
    sock.sendall(frame_header(0x88, 2, mask) + apply_mask(code, mask))
    expected = frame_header(0x88, 2) + code
    got = b""
    while len(got) < len(expected):
        chunk = sock.recv(64)
        if not chunk:
            break
        got += chunk
    if got != expected:
        raise ConnectionError(f"close answered with {got!r}")


def _ws_echo_worker(
    port: int, message_bytes: int, in_flight: int, seconds: float, tls: bool
) -> tuple[int, float, int, str]:
    """One websocket keeping ``in_flight`` binary messages echoing until time is up.

    Returns (messages echoed before the deadline, seconds, errors, note). Every message is its
    own ``sendall`` (its own TLS record); a new one is sent as soon as an echo completes. After
    the deadline the messages still in flight are drained, the total byte count must be exact,
    the first echo must equal the message sent, and a close frame must be echoed.
    """
    try:
        sock = ws_connect(port, tls=tls)
    except (OSError, ValueError, IndexError) as e:
        return 0, 0.0, 1, f"connect: {e}"
    payload = os.urandom(message_bytes)
    mask = os.urandom(4)
    frame = frame_header(0x82, message_bytes, mask) + apply_mask(payload, mask)
    echo = frame_header(0x82, message_bytes) + payload
    size = len(echo)
    buf = bytearray(max(4 * size, 256 * 1024))
    view = memoryview(buf)
    first = bytearray()
    received = 0
    counted: tuple[int, float] | None = None
    with sock:
        try:
            start = time.monotonic()
            deadline = start + seconds
            for _ in range(in_flight):
                sock.sendall(frame)
            sent = in_flight
            while True:
                n = sock.recv_into(buf)
                if not n:
                    raise ConnectionError(f"closed after {received} of {sent * size} bytes")
                if len(first) < size:
                    first += view[: min(n, size - len(first))]
                    if len(first) == size and first != echo:
                        raise ValueError("the first echo differs from the message sent")
                received += n
                if received > sent * size:
                    raise ValueError(f"{received} bytes echoed for {sent * size} sent")
                done, extra = divmod(received, size)
                if counted is None:
                    now = time.monotonic()
                    if now < deadline:
                        for _ in range(done + in_flight - sent):
                            sock.sendall(frame)
                        sent = done + in_flight
                        continue
                    counted = (done, now - start)
                if done == sent and not extra:
                    break
            _ws_close(sock)
        except (OSError, ValueError) as e:
            got = counted or (received // size, time.monotonic() - start)
            return got[0], got[1], 1, f"{type(e).__name__}: {e}"
    assert counted is not None
    return counted[0], counted[1], 0, ""


def run_ws_echo(
    port: int,
    *,
    connections: int,
    in_flight: int,
    message_bytes: int,
    duration: float,
    tls: bool = True,
) -> LoadResult:
    """``connections`` forked websocket clients (on the bench's CPU), ``in_flight`` each.

    ``requests`` is the number of messages echoed, ``bytes_read`` their payload bytes (each
    also crossed the proxy the other way, so the proxy carried twice that).
    """
    mp = multiprocessing.get_context("fork")
    with mp.Pool(connections) as pool:
        results = pool.starmap(
            _ws_echo_worker, [(port, message_bytes, in_flight, duration, tls)] * connections
        )
    messages = sum(r[0] for r in results)
    # Each client counts its own window (from its first send to the deadline): add the rates.
    rate = sum(r[0] / r[1] for r in results if r[1] > 0)
    seconds = messages / rate if rate else 0.0
    return LoadResult(
        requests=messages, bytes_read=messages * message_bytes,
        bytes_sent_body=messages * message_bytes, seconds=seconds,
        errors=sum(r[2] for r in results),
        note="; ".join(sorted({r[3] for r in results if r[3]})),
    )  # fmt: skip

"""A plain-HTTP backend for end-to-end tests: raw sockets, every byte recorded, fully scriptable.

Rules:
1. The backend never interprets more than it must: it finds request heads by ``CRLF CRLF``,
   reads bodies by Content-Length or chunked framing, and writes exactly the bytes a test gives it,
   so tests can send raw status lines, odd reasons, chunked output, or die half way.
2. Everything the proxy sends is kept (``raw``, ``requests``), and connections are counted, so a
   test can assert what was forwarded and what never was.
3. Each accepted connection runs in its own daemon thread; ``stop()`` closes every socket and sets
   ``release`` so that handlers blocked on a test event end promptly. Nothing waits unbounded.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

# How long one blocking socket operation in the backend may take before the backend gives up.
SOCKET_TIMEOUT = 30.0


@dataclass
class ReceivedRequest:
    """One request head as the backend received it, plus its body once read."""

    connection: int
    head: bytes
    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""

    @classmethod
    def parse(cls, head: bytes, connection: int) -> ReceivedRequest:
        """Split a raw head (ending in CRLF CRLF) into request line and header fields."""
        lines = head[:-4].split(b"\r\n")
        method, target, version = lines[0].split(b" ", 2)
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                raise ValueError(f"backend got a header line without a colon: {line!r}")
            headers.append((name, value.strip(b" \t")))
        return cls(connection, head, method, target, version, headers)

    def header(self, name: str) -> list[bytes]:
        """Every value of the header ``name`` (case-insensitive), in order received."""
        wanted = name.lower().encode("ascii")
        return [value for key, value in self.headers if key.lower() == wanted]

    def only(self, name: str) -> bytes:
        """The single value of ``name``; fails when the header is absent or repeated."""
        values = self.header(name)
        assert len(values) == 1, f"expected exactly one {name}, backend got {values!r}"
        return values[0]

    def is_chunked(self) -> bool:
        """Whether the body is framed with chunked transfer coding."""
        codings = b",".join(self.header("Transfer-Encoding")).lower()
        return codings.rsplit(b",", 1)[-1].strip() == b"chunked"

    def content_length(self) -> int:
        """The declared Content-Length, 0 when absent."""
        values = self.header("Content-Length")
        return int(values[0]) if values else 0


class BackendConnection:
    """One connection from the proxy, with a read buffer and helpers to script a response."""

    def __init__(self, backend: Backend, sock: socket.socket, index: int) -> None:
        self.backend = backend
        self.sock = sock
        self.index = index
        self.closed = False
        self._buffer = bytearray()

    def _fill(self) -> bool:
        """Receive more bytes into the buffer; False at end of stream."""
        data = self.sock.recv(262144)
        if not data:
            return False
        self.backend.record_raw(data)
        self._buffer += data
        return True

    def read_head(self) -> bytes | None:
        """The next raw request head including its final CRLF CRLF; None at end of stream."""
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self._buffer[: end + 4])
                del self._buffer[: end + 4]
                return head
            if not self._fill():
                return None

    def read_request(self) -> ReceivedRequest | None:
        """Read and record the next request head (not its body)."""
        head = self.read_head()
        if head is None:
            return None
        request = ReceivedRequest.parse(head, self.index)
        self.backend.record_request(request)
        return request

    def recv_some(self) -> bytes:
        """Whatever bytes are available next (buffered first); b"" at end of stream."""
        if not self._buffer and not self._fill():
            return b""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def read_exact(self, size: int) -> bytes:
        """Exactly ``size`` bytes; ConnectionError if the stream ends first."""
        while len(self._buffer) < size:
            if not self._fill():
                raise ConnectionError(f"backend: stream ended {size - len(self._buffer)} short")
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def read_line(self) -> bytes:
        """One line including its CRLF."""
        while True:
            end = self._buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buffer[: end + 2])
                del self._buffer[: end + 2]
                return line
            if not self._fill():
                raise ConnectionError("backend: stream ended inside a line")

    def iter_body(self, request: ReceivedRequest) -> Iterator[bytes]:
        """The request body in pieces as they arrive, decoding chunked framing."""
        if request.is_chunked():
            while True:
                size_line = self.read_line()
                size = int(size_line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.read_line() != b"\r\n":  # trailer fields, then the empty line
                        pass
                    return
                remaining = size
                while remaining:
                    if not self._buffer and not self._fill():
                        raise ConnectionError("backend: stream ended inside a chunk")
                    piece = bytes(self._buffer[:remaining])
                    del self._buffer[: len(piece)]
                    remaining -= len(piece)
                    yield piece
                if self.read_exact(2) != b"\r\n":
                    raise ValueError("backend: chunk data not followed by CRLF")
        else:
            remaining = request.content_length()
            while remaining:
                if not self._buffer and not self._fill():
                    raise ConnectionError(f"backend: body ended {remaining} bytes short")
                piece = bytes(self._buffer[:remaining])
                del self._buffer[: len(piece)]
                remaining -= len(piece)
                yield piece

    def read_body(self, request: ReceivedRequest) -> bytes:
        """Read the whole body and keep it on the request."""
        request.body = b"".join(self.iter_body(request))
        return request.body

    def send(self, data: bytes) -> None:
        """Write all of ``data``."""
        self.sock.sendall(data)

    def close(self) -> None:
        """Close cleanly (FIN)."""
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def abort(self) -> None:
        """Close with a TCP reset, as a crashing process would."""
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


class BackendStarter(Protocol):
    """Starts another backend listening on ``host`` (the ``backend_factory`` fixture)."""

    def __call__(self, *, host: str, family: socket.AddressFamily) -> Backend: ...


Responder = Callable[[BackendConnection, ReceivedRequest], None]
ConnectionHandler = Callable[[BackendConnection], None]


def response(
    status: bytes = b"200 OK",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
    *,
    content_length: bool = True,
) -> bytes:
    """A raw HTTP/1.1 response, with Content-Length added unless told not to."""
    lines = [b"HTTP/1.1 " + status]
    for name, value in headers or []:
        lines.append(name + b": " + value)
    if content_length:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def chunk(data: bytes) -> bytes:
    """One chunk in chunked transfer coding (empty data gives the last chunk)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def echo_responder(conn: BackendConnection, request: ReceivedRequest) -> None:
    """Answer 200 with a body naming the method and target (no body bytes for HEAD)."""
    body = request.method + b" " + request.target + b"\n"
    headers = [(b"Content-Type", b"text/plain")]
    if request.method == b"HEAD":
        conn.send(
            response(
                b"200 OK", [*headers, (b"Content-Length", b"%d" % len(body))], content_length=False
            )
        )
    else:
        conn.send(response(b"200 OK", headers, body))


@dataclass
class Backend:
    """A plain-HTTP server on loopback, port 0, whose behaviour each test scripts."""

    family: socket.AddressFamily = socket.AF_INET
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[ReceivedRequest] = field(default_factory=list)
    connections_accepted: int = 0
    active_connections: int = 0
    max_active_connections: int = 0
    errors: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    read_bodies: bool = True
    _raw: bytearray = field(default_factory=bytearray)
    _responder: Responder = echo_responder
    _connection_handler: ConnectionHandler | None = None
    _lock: threading.Condition = field(default_factory=threading.Condition)
    _sockets: list[socket.socket] = field(default_factory=list)
    _stopping: bool = False
    _listener: socket.socket | None = None

    def start(self) -> Backend:
        """Listen on ``host`` port 0 and accept in a background thread."""
        listener = socket.socket(self.family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, 0))
        listener.listen(128)
        listener.settimeout(0.2)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept_loop, name="backend-accept", daemon=True).start()
        return self

    @property
    def url(self) -> str:
        """The URL to give ``--backend``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def respond_with(self, responder: Responder, *, read_bodies: bool = True) -> None:
        """Answer each request with ``responder`` (after reading its body unless told not to)."""
        self._responder = responder
        self.read_bodies = read_bodies

    def handle_connections(self, handler: ConnectionHandler) -> None:
        """Give each new connection to ``handler``, which then owns it completely."""
        self._connection_handler = handler

    def raw(self) -> bytes:
        """Every byte received from any connection so far."""
        with self._lock:
            return bytes(self._raw)

    def record_raw(self, data: bytes) -> None:
        """Keep received bytes (called by connections)."""
        with self._lock:
            self._raw += data

    def record_request(self, request: ReceivedRequest) -> None:
        """Keep a received request head (called by connections)."""
        with self._lock:
            self.requests.append(request)
            self._lock.notify_all()

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[ReceivedRequest]:
        """Block until ``count`` request heads have arrived; fail after ``timeout`` seconds."""
        with self._lock:
            ok = self._lock.wait_for(lambda: len(self.requests) >= count, timeout)
            assert ok, f"backend got {len(self.requests)} requests, expected {count}"
            return list(self.requests)

    def wait_for_connections(self, count: int, timeout: float = 10.0) -> None:
        """Block until ``count`` connections have been accepted."""
        with self._lock:
            ok = self._lock.wait_for(lambda: self.connections_accepted >= count, timeout)
            assert ok, f"backend accepted {self.connections_accepted}, expected {count}"

    def wait_for_idle(self, timeout: float = 10.0) -> bool:
        """Block until no connection is open; whether that happened in time."""
        with self._lock:
            return self._lock.wait_for(lambda: self.active_connections == 0, timeout)

    def reset(self) -> None:
        """Forget everything and close every connection: the state of a fresh backend."""
        self.release.set()  # let the previous test's blocked handlers finish
        with self._lock:
            sockets = list(self._sockets)
            self._sockets.clear()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.wait_for_idle(5)
        with self._lock:
            self.requests.clear()
            self._raw.clear()
            self.errors.clear()
            self.connections_accepted = 0
            self.max_active_connections = self.active_connections
        self.release = threading.Event()
        self._responder = echo_responder
        self.read_bodies = True
        self._connection_handler = None

    def stop(self) -> None:
        """Stop accepting, close every connection and release blocked handlers."""
        self._stopping = True
        self.release.set()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping:
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(SOCKET_TIMEOUT)
            with self._lock:
                index = self.connections_accepted
                self.connections_accepted += 1
                self.active_connections += 1
                self.max_active_connections = max(
                    self.max_active_connections, self.active_connections
                )
                self._sockets.append(sock)
                self._lock.notify_all()
            conn = BackendConnection(self, sock, index)
            threading.Thread(
                target=self._serve, args=(conn,), name=f"backend-conn-{index}", daemon=True
            ).start()

    def _serve(self, conn: BackendConnection) -> None:
        try:
            handler = self._connection_handler
            if handler is not None:
                handler(conn)
            else:
                self._serve_requests(conn)
        except (OSError, ConnectionError):
            pass  # the proxy closed or reset the connection; tests check what they need
        except Exception:
            if not self._stopping:
                self.errors.append(traceback.format_exc())
        finally:
            with contextlib.suppress(OSError):
                conn.sock.close()
            with self._lock:
                self.active_connections -= 1
                if conn.sock in self._sockets:
                    self._sockets.remove(conn.sock)
                self._lock.notify_all()

    def _serve_requests(self, conn: BackendConnection) -> None:
        while not self._stopping and not conn.closed:
            request = conn.read_request()
            if request is None:
                return
            if self.read_bodies:
                if b"100-continue" in b",".join(request.header("Expect")).lower():
                    conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                conn.read_body(request)
            self._responder(conn, request)
            wants_close = b"close" in b",".join(request.header("Connection")).lower()
            if wants_close or request.version == b"HTTP/1.0":
                conn.close()


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def slow_backend(backend: Backend) -> threading.Event:
    """``/slow`` is answered only once the returned event is set (at most 10 s later)."""
    go_on = threading.Event()

    def responder(conn: BackendConnection, request: ReceivedRequest) -> None:
        if request.target == b"/slow":
            go_on.wait(10)
            conn.send(response(b"200 OK", body=b"slow but complete"))
        else:
            echo_responder(conn, request)

    backend.respond_with(responder)
    return go_on

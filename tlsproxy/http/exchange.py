"""One proxied request: its head and body go to a backend connection, the response comes back.

The exchange knows nothing of how the front speaks (HTTP/1.1 now, HTTP/2 later): it talks to a
:class:`Front`. Failures become statuses while the client has seen nothing (502 when the backend
cannot be reached or breaks the protocol, 504 when it is too slow); after the response head has
gone out, the only honest signal left is to abort the client's connection, so that a truncated
body is never mistaken for a complete one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from tlsproxy import metrics as kinds
from tlsproxy.http.headers import (
    Header,
    ResponseHead,
    ResponseRejected,
    clean_response_headers,
    clean_trailers,
)

if TYPE_CHECKING:
    from tlsproxy.backend import BackendConnection
    from tlsproxy.backendpool import BackendPool
    from tlsproxy.metrics import Metrics

# Statuses whose responses never have a body, whatever their headers say (RFC 9110 §6.4.1).
_BODYLESS = frozenset({101, 204, 304})  # 101: what follows is the tunnel, not a body


class Front(Protocol):
    """What an exchange needs from the client side."""

    write_paused: bool

    def send_interim(self, status: int, reason: bytes, headers: list[Header]) -> None: ...
    def send_head(
        self, status: int, reason: bytes, head: ResponseHead, *, bodyless: bool
    ) -> None: ...
    def send_body(self, data: bytes) -> None: ...
    def send_end(self, trailers: list[Header]) -> None: ...
    def send_error(self, status: int, message: str) -> None: ...
    def start_tunnel(self, backend: BackendConnection, backend_data: bytes) -> None: ...
    def flush(self) -> None: ...
    def abort(self) -> None: ...
    def hold_reading(self, reason: str) -> None: ...
    def release_reading(self, reason: str) -> None: ...
    def exchange_ended(self, exchange: Exchange) -> None: ...


def header_lines(headers: list[Header]) -> bytes:
    return b"".join(b"%s: %s\r\n" % pair for pair in headers)


class Exchange:
    """Streams one request to the backend and its response back to the front."""

    __slots__ = (
        "_chunked",
        "_close_delimited",
        "_head",
        "_head_request",
        "_metrics",
        "_pending",
        "_pool",
        "_retried",
        "_upgrade",
        "backend_url",
        "connection",
        "front",
        "request_done",
        "response_done",
        "response_started",
        "status",
    )

    def __init__(
        self,
        *,
        front: Front,
        pool: BackendPool,
        head: bytes,
        has_body: bool,
        chunked: bool,
        head_request: bool,
        metrics: Metrics,
        upgrade: bool = False,
    ) -> None:
        self.front = front
        self._pool = pool
        self._metrics = metrics
        self._head = head
        self._chunked = chunked
        self._head_request = head_request
        self._upgrade = upgrade  # the request asked to switch protocols
        self._pending: list[bytes] | None = [head]
        self._retried = has_body  # a request with a body is never sent twice
        self._close_delimited = False
        self.backend_url = pool.address.url
        self.connection: BackendConnection | None = None
        self.request_done = not has_body
        self.response_started = False
        self.response_done = False
        self.status = 0

    def start(self) -> None:
        self._pool.acquire(self)

    # -- from the pool ---------------------------------------------------------------------------

    def backend_ready(self, connection: BackendConnection) -> None:
        pending = self._pending
        if self.response_done or pending is None:  # the client left while we were connecting
            self._pool.release(connection)
            return
        self.connection = connection
        self._pending = None
        connection.send(self, b"".join(pending), head_request=self._head_request)
        if self.front.write_paused:
            connection.pause_reading()
        self.front.release_reading("connect")

    def backend_unavailable(self, why: str) -> None:
        self._pending = None
        if self.response_done:  # the client left while we were connecting
            return
        self._metrics.backend_errors[kinds.CONNECT] += 1
        self._fail(
            502,
            f"tlsproxy could not connect to the backend {self.backend_url}: {why}. "
            "Is the app running and listening there?",
        )

    # -- from the front: the request -------------------------------------------------------------

    def request_body(self, data: bytes) -> None:
        if self.response_done:
            return  # answered already; the front closes the connection after the response
        parts = [b"%x\r\n" % len(data), data, b"\r\n"] if self._chunked else [data]
        connection = self.connection
        if connection is not None:
            connection.write_sequence(parts)
        elif self._pending is not None:
            self._pending.extend(parts)
            self.front.hold_reading("connect")

    def request_complete(self, trailers: list[Header]) -> None:
        self.request_done = True
        if not self._chunked or self.response_done:
            return
        end = b"0\r\n" + header_lines(trailers) + b"\r\n"
        if self.connection is not None:
            self.connection.write(end)
        elif self._pending is not None:
            self._pending.append(end)

    def pause_response(self) -> None:
        if self.connection is not None:
            self.connection.pause_reading()

    def resume_response(self) -> None:
        if self.connection is not None:
            self.connection.resume_reading()

    def front_lost(self) -> None:
        """The client is gone: nothing more goes to it, and an unfinished backend exchange stops."""
        self.response_done = True
        self._pending = None
        if self.connection is not None:
            self.connection.abort()
            self.connection = None

    def timed_out(self) -> None:
        """The backend made no progress within --backend-timeout."""
        self._metrics.backend_errors[kinds.TIMEOUT] += 1
        if self.response_started:
            self._abort()
        else:
            self._fail(
                504,
                f"the backend {self.backend_url} did not answer in time. "
                "Raise --backend-timeout if it is just slow.",
            )

    def client_timed_out(self) -> None:
        """The client stopped sending its request body."""
        if self.response_started:
            self._abort()
        else:
            self._fail(408, "the request body stopped arriving; the connection is closed.")

    # -- from the backend connection: the response -----------------------------------------------

    def pause_request_body(self) -> None:
        self.front.hold_reading("backend")

    def resume_request_body(self) -> None:
        self.front.release_reading("backend")

    def response_interim(self, status: int, reason: bytes, headers: list[Header]) -> None:
        self.front.send_interim(status, reason, headers)

    def response_head(self, status: int, reason: bytes, headers: list[Header]) -> None:
        head = clean_response_headers(headers)
        if status == 101 and not (self._upgrade and head.upgrade):
            raise ResponseRejected(
                "answered 101 Switching Protocols without being asked to, or without Upgrade"
            )
        bodyless = self._head_request or status in _BODYLESS
        self._close_delimited = not (bodyless or head.chunked or head.content_length is not None)
        self.response_started = True
        self.status = status
        self.front.send_head(status, reason, head, bodyless=bodyless)

    def switch_protocols(self, connection: BackendConnection, backend_data: bytes) -> None:
        """The backend said 101: the front and this connection become one tunnel (relay.py)."""
        self.response_done = True
        self.front.start_tunnel(connection, backend_data)

    def response_body(self, data: bytes) -> None:
        self.front.send_body(data)

    def response_complete(
        self, trailers: list[Header], connection: BackendConnection, *, reusable: bool
    ) -> None:
        self.response_done = True
        self.connection = None
        if reusable and self.request_done:
            self._pool.release(connection)
        else:
            connection.abort()
        self.front.send_end(clean_trailers(trailers))
        self.front.exchange_ended(self)

    def backend_failed(self, why: str) -> None:
        # Before a connection was handed over, the only failure backend.py reports is the TLS
        # handshake with an https backend; after, a response it could not parse.
        kind = kinds.TLS if self.connection is None else kinds.MALFORMED
        self._metrics.backend_errors[kind] += 1
        if self.response_started:
            self._abort()
        else:
            self._fail(502, f"the backend {self.backend_url} {why}.")

    def backend_closed(self, connection: BackendConnection, *, clean: bool) -> None:
        """The backend connection closed (``clean``: not reset) while this exchange used it."""
        self.connection = None
        if self.response_done:
            return
        if self.response_started:
            if self._close_delimited and clean:  # the close is how this response ends
                self.response_done = True
                self.front.send_end([])
                self.front.flush()
                self.front.exchange_ended(self)
            else:
                self._metrics.backend_errors[kinds.CLOSED] += 1
                self._abort()
        elif connection.served and not self._retried:
            # Rule 1 of backendpool.py: a reused connection the backend was closing; try anew.
            self._retried = True
            self._pending = [self._head]
            self._pool.acquire(self)
        else:
            self._metrics.backend_errors[kinds.CLOSED] += 1
            self._fail(
                502,
                f"the backend {self.backend_url} closed the connection without answering.",
            )

    def flush(self) -> None:
        self.front.flush()

    # -- endings ---------------------------------------------------------------------------------

    def _fail(self, status: int, message: str) -> None:
        self.response_done = True
        self.status = status
        if self.connection is not None:
            self.connection.abort()
            self.connection = None
        self.front.send_error(status, message)
        self.front.exchange_ended(self)

    def _abort(self) -> None:
        self.response_done = True
        if self.connection is not None:
            self.connection.abort()
            self.connection = None
        self.front.abort()

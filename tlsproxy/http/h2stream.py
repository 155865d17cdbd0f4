"""One HTTP/2 stream as the :class:`~tlsproxy.http.exchange.Front` of one exchange.

The request goes to the backend as HTTP/1.1 (:func:`~tlsproxy.http.h2headers.backend_request`).

Rules:

1. Request body back-pressure is this stream's flow-control window: DATA is acknowledged only
   once the exchange has taken it while holding nothing. A held stream stops acknowledging, so
   the client's window for it closes and the other streams on the connection go on.
2. Response body back-pressure: DATA leaves only within the client's window; what does not fit
   waits here, and past :data:`RESPONSE_BUFFER` bytes the backend connection is not read until
   a WINDOW_UPDATE drains it.
3. A failure before the response head is a status on this stream; after it, RST_STREAM. A
   stream's failure is never the connection's.
4. A response that ends before its request body did ends the request too: RST_STREAM NO_ERROR
   (RFC 9113 §8.1), so the client stops sending.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from twisted.logger import Logger

from tlsproxy.deadline import NEVER
from tlsproxy.http.exchange import Exchange
from tlsproxy.http.h2headers import backend_request, plain_fields, response_fields
from tlsproxy.http.headers import Header, HeadRejected, ResponseHead, clean_trailers
from tlsproxy.http.pages import error_response
from tlsproxy.routing import MISDIRECTED

if TYPE_CHECKING:
    from tlsproxy.backend import BackendConnection
    from tlsproxy.http.h2 import H2Connection

log = Logger()

#: Response bytes a stream holds beyond the client's window before its backend is paused.
RESPONSE_BUFFER = 64 * 1024
#: ...and below which the backend is read again.
RESPONSE_BUFFER_LOW = 16 * 1024

_ERROR_TYPE = (b"content-type", b"text/plain; charset=utf-8")


class H2Stream:
    """One request and its response on an HTTP/2 connection: the Front of one exchange."""

    __slots__ = (
        "_buffer",
        "_buffered",
        "_connection",
        "_end",
        "_h2",
        "_head_fields",
        "_head_request",
        "_headers",
        "_holds",
        "_method",
        "_request_ended",
        "_response_bytes",
        "_response_sent",
        "_started",
        "_status",
        "_target",
        "_trailers",
        "_unacked",
        "deadline",
        "exchange",
        "stream_id",
        "write_paused",
    )

    def __init__(self, connection: H2Connection, stream_id: int) -> None:
        self._connection = connection
        self._h2 = connection.h2
        self.stream_id = stream_id
        self.exchange: Exchange | None = None
        self.write_paused = False  # the backend is not read for this stream (rule 2)
        self.deadline = NEVER
        self._holds: set[str] = set()
        self._unacked = 0  # flow-controlled bytes taken while held, not yet handed back
        self._request_ended = False
        self._trailers: list[Header] = []
        self._buffer: deque[bytes | memoryview] = deque()
        self._buffered = 0
        self._head_fields: list[Header] | None = None  # a bodyless head, sent with the end
        self._end: list[Header] | None = None  # the response ended: its trailers (maybe none)
        self._response_sent = False  # END_STREAM or RST_STREAM has been handed to h2
        self._head_request = False
        self._method = b""
        self._target = b""
        self._headers: Sequence[Header] = ()
        self._status = 0
        self._response_bytes = 0
        self._started = 0.0  # when the exchange began, by settings.metrics.seconds

    # -- from the connection: the client's frames ------------------------------------------------

    def start(self, headers: Sequence[Header], *, ended: bool) -> None:
        """The request head arrived: check it and start its exchange, or answer the refusal."""
        connection = self._connection
        settings = connection.settings
        self._headers = headers
        self._request_ended = ended
        host = None
        for name, value in headers:
            if name == b":method":
                self._method = value
            elif name == b":path":
                self._target = value
            elif name in (b":authority", b"host") and host is None:
                host = value
        self._head_request = self._method == b"HEAD"
        sweeper = settings.sweeper
        self.deadline = sweeper.now + settings.backend_timeout
        sweeper.track(self)
        assert connection.client is not None
        try:
            pool = settings.router.only
            if pool is None:
                server_name = getattr(connection.transport, "server_name", None)
                pool = settings.router.pick(host, server_name)
                if pool is None:
                    raise HeadRejected(421, MISDIRECTED)
            request = backend_request(
                headers,
                client=connection.client,
                prefix=pool.address.path_prefix,
                ended=ended,
            )
        except HeadRejected as rejected:
            log.info(
                "rejected an HTTP/2 request from {client}: {status} {reason}",
                client=connection.client.address.decode(),
                status=rejected.status,
                reason=rejected.reason,
            )
            self.send_error(rejected.status, rejected.reason)
            self._log()
            return
        self._started = settings.metrics.seconds()
        exchange = Exchange(
            front=self,
            pool=pool,
            metrics=settings.metrics,
            head=request.head,
            has_body=request.has_body,
            chunked=request.chunked,
            head_request=self._head_request,
        )
        self.exchange = exchange
        exchange.start()

    def data_received(self, data: bytes, flow_controlled: int) -> None:
        exchange = self.exchange
        if exchange is None or not data:
            # Answered already: the bytes go nowhere and the window comes back. An empty DATA
            # frame is no chunk: as one it would end a chunked body early.
            self._acknowledge(flow_controlled)
            return
        settings = self._connection.settings
        settings.metrics.request_body_bytes += len(data)
        self.deadline = settings.sweeper.now + settings.backend_timeout
        exchange.request_body(data)
        if self._holds:  # taken, but not consumed (rule 1)
            self._unacked += flow_controlled
        else:
            self._acknowledge(flow_controlled)

    def trailers_received(self, headers: Sequence[Header]) -> None:
        self._trailers = clean_trailers(headers)

    def request_ended(self) -> None:
        self._request_ended = True
        if self.exchange is not None:
            self.exchange.request_complete(self._trailers)

    def reset_by_client(self) -> None:
        """RST_STREAM from the client: its exchange stops, nothing more is sent."""
        self._response_sent = True
        self.connection_lost()

    def connection_lost(self) -> None:
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.front_lost()
        self._buffer.clear()
        self._buffered = 0
        self._finish()

    def deadline_passed(self, now: float) -> None:
        self.deadline = NEVER
        exchange = self.exchange
        if self._buffered or exchange is None:  # the client does not take the response
            self.exchange = None
            if exchange is not None:
                exchange.front_lost()
            self._reset(ErrorCodes.CANCEL)
        elif not self._request_ended and not self._holds:  # the request body stopped coming
            exchange.client_timed_out()
        else:
            exchange.timed_out()
        self._connection.flush()

    # -- the exchange's Front --------------------------------------------------------------------

    def send_interim(self, status: int, reason: bytes, headers: list[Header]) -> None:
        self._send_headers(plain_fields(status, headers))

    def send_head(self, status: int, reason: bytes, head: ResponseHead, *, bodyless: bool) -> None:
        self._status = status
        fields = response_fields(status, head)
        settings = self._connection.settings
        if settings.hsts and not any(n == b"strict-transport-security" for n, _ in fields):
            fields.append((b"strict-transport-security", settings.hsts))
        self.deadline = settings.sweeper.now + settings.backend_timeout
        if bodyless:  # the end follows at once: one HEADERS frame with END_STREAM
            self._head_fields = fields
        else:
            self._send_headers(fields)

    def send_body(self, data: bytes) -> None:
        self._response_bytes += len(data)
        self._buffer.append(data)
        self._buffered += len(data)
        settings = self._connection.settings
        self.deadline = settings.sweeper.now + settings.backend_timeout
        self._connection.send_soon(self)

    def send_end(self, trailers: list[Header]) -> None:
        self._end = plain_fields(0, trailers)
        self._connection.send_soon(self)

    def send_error(self, status: int, message: str) -> None:
        self._status = status
        _, body = error_response(status, message, close=False)
        fields = [
            (b":status", b"%d" % status),
            _ERROR_TYPE,
            (b"content-length", b"%d" % len(body)),
            (b"cache-control", b"no-store"),
        ]
        if self._head_request:
            self._head_fields = fields
        else:
            self._send_headers(fields)
            self._response_bytes = len(body)
            self._buffer.append(body)
            self._buffered += len(body)
        self._end = []
        self._connection.send_soon(self)

    def start_tunnel(self, backend: BackendConnection, backend_data: bytes) -> None:
        # Never asked for: an HTTP/2 request cannot carry Upgrade (h2 refuses it), extended
        # CONNECT is not offered, and the exchange refuses a 101 nobody asked for.
        backend.abort()
        self.abort()

    def flush(self) -> None:
        self._connection.flush()

    def abort(self) -> None:
        """The response cannot be completed: RST_STREAM, never a truncation passed as whole."""
        self._log()
        self.exchange = None
        self._reset(ErrorCodes.INTERNAL_ERROR)
        self._connection.flush()

    def hold_reading(self, reason: str) -> None:
        self._holds.add(reason)

    def release_reading(self, reason: str) -> None:
        if reason in self._holds:
            self._holds.discard(reason)
            if not self._holds and self._unacked:
                unacked, self._unacked = self._unacked, 0
                self._acknowledge(unacked)
                self._connection.flush()

    def exchange_ended(self, exchange: Exchange) -> None:
        self._log()
        self.exchange = None
        self._holds.clear()
        if self._unacked:
            unacked, self._unacked = self._unacked, 0
            self._acknowledge(unacked)
        self._finish_if_done()
        self._connection.flush()

    # -- sending ---------------------------------------------------------------------------------

    def send_pending(self) -> None:
        """Send what the client's windows allow; end the stream once everything is out."""
        if self._response_sent:
            return
        connection = self._connection
        buffered = self._buffered
        if not connection.write_paused:
            h2 = self._h2
            buffer = self._buffer
            stream_id = self.stream_id
            while buffer:
                window = h2.local_flow_control_window(stream_id)
                if window <= 0:
                    break
                size = min(window, h2.max_outbound_frame_size)
                piece = buffer[0]
                if len(piece) > size:
                    view = memoryview(piece)
                    buffer[0] = view[size:]
                    piece = view[:size]
                else:
                    buffer.popleft()
                self._buffered -= len(piece)
                last = not buffer and self._end == [] and self._head_fields is None
                h2.send_data(stream_id, piece, end_stream=last)
                if last:
                    self._response_ended()
                    return
            if not buffer and self._end is not None:
                self._send_end()
                return
        if buffered:
            # Waiting for the client's window is the client's delay (--idle-timeout); once it
            # has taken everything, the wait is for the backend again.
            settings = connection.settings
            timeout = settings.idle_timeout if self._buffered else settings.backend_timeout
            self.deadline = settings.sweeper.now + timeout
            self.update_backpressure()

    def _send_end(self) -> None:
        end = self._end or []
        head = self._head_fields
        if head is not None:
            self._head_fields = None
            if end:
                self._send_headers(head)
            else:
                self._send_headers(head, end_stream=True)
                self._response_ended()
                return
        if end:
            self._send_headers(end, end_stream=True)
        else:
            self._h2.send_data(self.stream_id, b"", end_stream=True)
        self._response_ended()

    def _send_headers(self, fields: list[Header], *, end_stream: bool = False) -> None:
        try:
            self._h2.send_headers(self.stream_id, fields, end_stream=end_stream)
        except ProtocolError as e:  # a backend header HTTP/2 cannot carry
            log.warn("cannot send a response head over HTTP/2: {error}", error=str(e))
            exchange, self.exchange = self.exchange, None
            if exchange is not None:
                exchange.front_lost()
            self._reset(ErrorCodes.INTERNAL_ERROR)

    def _response_ended(self) -> None:
        self._response_sent = True
        self._buffer.clear()
        self._buffered = 0
        if not self._request_ended:  # rule 4
            self._request_ended = True
            self._h2.reset_stream(self.stream_id, ErrorCodes.NO_ERROR)
        self._finish_if_done()

    def update_backpressure(self) -> None:
        """Pause or resume this stream's backend reading to match its buffer and the connection."""
        exchange = self.exchange
        if not self.write_paused:
            if self._connection.write_paused or self._buffered >= RESPONSE_BUFFER:
                self.write_paused = True
                if exchange is not None:
                    exchange.pause_response()
        elif not self._connection.write_paused and self._buffered <= RESPONSE_BUFFER_LOW:
            self.write_paused = False
            if exchange is not None:
                exchange.resume_response()

    def _acknowledge(self, size: int) -> None:
        if size:
            self._h2.acknowledge_received_data(size, self.stream_id)

    def _reset(self, code: ErrorCodes) -> None:
        if not self._response_sent:
            self._response_sent = True
            self._h2.reset_stream(self.stream_id, code)
        self._buffer.clear()
        self._buffered = 0
        self._finish_if_done()

    # -- endings ---------------------------------------------------------------------------------

    def _finish_if_done(self) -> None:
        if self._response_sent and self.exchange is None:
            self._finish()

    def _finish(self) -> None:
        self.deadline = NEVER
        self._connection.settings.sweeper.untrack(self)
        self._connection.stream_finished(self)

    def _log(self) -> None:
        settings = self._connection.settings
        metrics = settings.metrics
        exchange = self.exchange
        status = exchange.status if exchange is not None and exchange.status else self._status
        duration: float | None = None
        if exchange is not None:
            metrics.exchange_ended(status, self._response_bytes, self._started)
            duration = metrics.seconds() - self._started
        else:  # refused before an exchange began
            metrics.rejected(status, self._response_bytes)
        access_log = settings.access_log
        client = self._connection.client
        if access_log is None or client is None:
            return
        access_log.record(
            client=client.address,
            method=self._method,
            target=self._target,
            version=b"HTTP/2.0",
            status=status,
            size=self._response_bytes,
            headers=self._headers,
            duration=duration,
        )

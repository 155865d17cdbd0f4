"""The HTTP/2 front: one TLS connection, many streams, each stream one exchange.

Rules:

1. The connection starts as HTTP/1.1 and is taken over after the TLS handshake when ALPN chose
   ``h2`` (:attr:`FrontSettings.alpn_takeover`). The streams are :class:`H2Stream` objects; this
   class only moves frames, keeps the limits and owns the connection's deadline.
2. Limits: at most ``max_concurrent_streams`` streams; the decoded header list and the encoded
   header block (HEADERS + CONTINUATION, counted while it arrives) at most --max-header-bytes.
   Streams reset by the client (CVE-2023-44487, rapid reset) and PING, SETTINGS and PRIORITY
   frames (the 2019 flood family) are counted per window; over a limit the client gets GOAWAY
   ENHANCE_YOUR_CALM and the connection closes. Other clients are not affected.
3. A client that stops reading: DATA stops and every stream's backend pauses. What it still
   makes us write (SETTINGS and PING acknowledgements, RST_STREAM) is counted, and past
   ``max_paused_output`` bytes the connection is aborted: such a client only wants our memory.
4. One deadline for the connection: --header-timeout until the client's preface, then
   --idle-timeout while no stream is open or while the client does not read; each stream keeps
   its own deadline for its exchange.
5. :meth:`close` sends GOAWAY naming the last stream accepted: open streams finish, later ones
   are refused (REFUSED_STREAM, which clients retry safely), and the connection closes when the
   last stream ends. RFC 8441 extended CONNECT is not offered, so browsers open websockets on a
   separate HTTP/1.1 connection.
6. All frames of one read (or of one backend read) leave in one TLS write (``flush``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection as H2State
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    PingReceived,
    PriorityUpdated,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from tlsproxy.deadline import NEVER
from tlsproxy.http.h1 import FrontSettings
from tlsproxy.http.h2stream import H2Stream
from tlsproxy.http.headers import ClientInfo

log = Logger()

_DEFAULT_WINDOW = 65535  # RFC 9113 §6.9.2: every window starts here


@dataclass(frozen=True)
class H2Limits:
    """What one HTTP/2 connection may cost; the defaults suit browsers and API clients."""

    max_concurrent_streams: int = 100
    # Per-stream receive window: what a stream whose backend is slow may leave in our memory.
    stream_window: int = 256 * 1024
    # The connection's receive window: large, so that a few held streams do not stall the rest.
    connection_window: int = 16 * 1024 * 1024
    # Counted per ``window_seconds``; a browser leaving a page resets dozens of streams at once.
    max_resets: int = 200
    max_control_frames: int = 1000
    window_seconds: float = 10.0
    max_paused_output: int = 64 * 1024


DEFAULT_LIMITS = H2Limits()


class H2Connection(Protocol):
    """One client connection speaking HTTP/2 over TLS."""

    def __init__(
        self,
        settings: FrontSettings,
        on_close: Callable[[H2Connection], None],
        *,
        limits: H2Limits = DEFAULT_LIMITS,
    ) -> None:
        self.settings = settings
        self.limits = limits
        self._sweeper = settings.sweeper
        self._on_close = on_close
        self.h2 = H2State(
            H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=True)
        )
        self.h2.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_bytes,
                SettingCodes.INITIAL_WINDOW_SIZE: limits.stream_window,
            },
        )
        # h2 applies MAX_HEADER_LIST_SIZE to its decoder only when a change is acknowledged;
        # an initial value never changes, so set the decoder's limit here.
        self.h2.decoder.max_header_list_size = settings.max_header_bytes
        self.streams: dict[int, H2Stream] = {}
        self._to_send: list[H2Stream] = []  # streams with response data for the next flush
        self.client: ClientInfo | None = None
        self.write_paused = False
        self.deadline = NEVER
        self._preface_received = False
        self._goaway_last: int | None = None  # set by close(): streams after it are refused
        self._done = False  # the connection is ending: nothing more is read or started
        self._window_start = 0.0
        self._resets = 0
        self._control_frames = 0
        self._paused_output = 0

    # -- Twisted ---------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        peer, host = transport.getPeer(), transport.getHost()
        self.client = ClientInfo.for_peer(
            getattr(peer, "host", ""), getattr(host, "port", 0), self.settings.trusted_proxies
        )
        if self.settings.client_certificates:  # h2 starts after the handshake: it is known
            self.client = self.client.with_certificate(transport.peer_certificate_der())
        transport.registerProducer(self, True)
        self._sweeper.track(self)
        self._window_start = self._sweeper.now
        self.deadline = self._sweeper.now + self.settings.header_timeout
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(self.limits.connection_window - _DEFAULT_WINDOW)
        self.flush()

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as e:  # h2 has queued the GOAWAY that says why
            log.info(
                "HTTP/2 protocol error from {client}: {error}", client=self._who(), error=str(e)
            )
            self._end(abandon=True)
            return
        if self._header_block_bytes() > self.settings.max_header_bytes:
            self._calm_down("header block larger than --max-header-bytes")
            return
        handlers = _HANDLERS
        for event in events:
            handler = handlers.get(type(event))
            if handler is not None:
                handler(self, event)
            if self._done:
                return
        self.flush()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._done = True
        self._sweeper.untrack(self)
        self._abandon_streams()
        self._on_close(self)

    # IPushProducer, registered on our own transport: the client is slow to read (rule 3).
    def pauseProducing(self) -> None:
        self.write_paused = True
        self._paused_output = 0
        self.deadline = self._sweeper.now + self.settings.idle_timeout
        for stream in list(self.streams.values()):
            stream.update_backpressure()

    def resumeProducing(self) -> None:
        self.write_paused = False
        self._set_idle_deadline()
        for stream in list(self.streams.values()):
            stream.send_pending()
            stream.update_backpressure()
        self.flush()

    def stopProducing(self) -> None:
        pass

    def deadline_passed(self, now: float) -> None:
        self.deadline = NEVER
        if self._done or self.write_paused:  # a client that neither reads nor closes: cut it off
            self._abort_transport()
        elif not self._preface_received:
            log.info("no HTTP/2 preface from {client} within --header-timeout", client=self._who())
            self._abort_transport()
        elif not self.streams:  # idle
            self.close()

    # -- events ----------------------------------------------------------------------------------

    def _request_received(self, event: RequestReceived) -> None:
        stream_id = event.stream_id
        if self._goaway_last is not None and stream_id > self._goaway_last:
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        stream = H2Stream(self, stream_id)
        self.streams[stream_id] = stream
        if not self.write_paused:
            self.deadline = NEVER  # the stream's own deadline takes over
        stream.start(event.headers or [], ended=event.stream_ended is not None)

    def _data_received(self, event: DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        size = event.flow_controlled_length or 0
        if stream is not None:
            stream.data_received(event.data or b"", size)
        elif size:
            self.h2.acknowledge_received_data(size, event.stream_id)

    def _trailers_received(self, event: TrailersReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.trailers_received(event.headers or [])

    def _stream_ended(self, event: StreamEnded) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.request_ended()

    def _stream_reset(self, event: StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.reset_by_client()
        # Count resets the client sent and those it made us send (a frame on a closed stream:
        # "MadeYouReset", CVE-2025-8671): either way a request was started and thrown away.
        if event.remote_reset or stream is not None:
            self._start_window()
            self._resets += 1
            if self._resets > self.limits.max_resets:
                self._calm_down("too many streams reset (rapid reset)")

    def _window_updated(self, event: WindowUpdated) -> None:
        if event.stream_id:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.send_pending()
        else:  # the connection's window: every stream may go on
            for stream in list(self.streams.values()):
                stream.send_pending()

    def _settings_changed(self, event: RemoteSettingsChanged) -> None:
        if not self._preface_received:
            self._preface_received = True
            self._set_idle_deadline()
        if self._control_frame():
            return
        if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            for stream in list(self.streams.values()):
                stream.send_pending()

    def _ping_or_priority(self, event: Event) -> None:
        self._control_frame()

    def _connection_terminated(self, event: ConnectionTerminated) -> None:
        # h2 cannot send anything after the client's GOAWAY: what is unfinished stays so.
        self._end(abandon=True)

    # -- used by the streams ---------------------------------------------------------------------

    def send_soon(self, stream: H2Stream) -> None:
        """Send ``stream``'s response data at the next flush, with whatever else came in the
        same read: a small response's last DATA frame then carries END_STREAM."""
        self._to_send.append(stream)

    def flush(self) -> None:
        """Write every frame ready to go, in one TLS write."""
        to_send = self._to_send
        if to_send:
            self._to_send = []
            for stream in to_send:
                stream.send_pending()
        data = self.h2.data_to_send()
        if not data or self.transport is None:
            return
        if self.write_paused:
            self._paused_output += len(data)
            if self._paused_output > self.limits.max_paused_output:
                log.info(
                    "aborting the HTTP/2 connection of {client}: it sends frames but reads none",
                    client=self._who(),
                )
                self._done = True
                self._abort_transport()
                return
        self.transport.write(data)

    def stream_finished(self, stream: H2Stream) -> None:
        if self.streams.pop(stream.stream_id, None) is None or self.streams:
            return
        if self._goaway_last is not None:
            self._end(abandon=False)
        else:
            self._set_idle_deadline()

    def close(self) -> None:
        """Send GOAWAY; let the open streams finish, then close (rule 5)."""
        if self._done or self._goaway_last is not None:
            return
        self._goaway_last = last = self.h2.highest_inbound_stream_id
        if not self.streams:
            self._end(abandon=False)
            return
        # A GOAWAY through h2 would move its state machine to CLOSED, after which it refuses to
        # send anything on the streams that are still allowed to finish: write the frame here.
        goaway = GoAwayFrame(stream_id=0, last_stream_id=last, error_code=ErrorCodes.NO_ERROR)
        self.flush()
        if self.transport is not None:
            self.transport.write(goaway.serialize())

    # -- internals -------------------------------------------------------------------------------

    def _start_window(self) -> None:
        """Start counting afresh once the current window is over."""
        now = self._sweeper.now
        if now - self._window_start >= self.limits.window_seconds:
            self._window_start = now
            self._resets = 0
            self._control_frames = 0

    def _control_frame(self) -> bool:
        """Count a PING, SETTINGS or PRIORITY frame; True if that was one too many."""
        self._start_window()
        self._control_frames += 1
        if self._control_frames > self.limits.max_control_frames:
            self._calm_down("too many PING, SETTINGS or PRIORITY frames")
            return True
        return False

    def _header_block_bytes(self) -> int:
        # h2 keeps an unfinished header block (HEADERS + CONTINUATION frames) in its frame
        # buffer and caps it only at 64 frames (about 1 MiB); the limit must hold while the
        # block arrives, not only once it is decoded. A test checks that this attribute exists.
        pending = getattr(self.h2.incoming_buffer, "_headers_buffer", ())
        return sum(len(frame.data) for frame in pending) if pending else 0

    def _calm_down(self, why: str) -> None:
        """GOAWAY ENHANCE_YOUR_CALM, then close (rule 2)."""
        log.warn("closing the HTTP/2 connection of {client}: {why}", client=self._who(), why=why)
        with contextlib.suppress(ProtocolError):  # h2 may have closed already
            self.h2.close_connection(
                error_code=ErrorCodes.ENHANCE_YOUR_CALM, additional_data=why.encode()
            )
        self._end(abandon=True)

    def _end(self, *, abandon: bool) -> None:
        """Send what is queued (a final GOAWAY among it), then close the TLS connection."""
        if self._done:
            return
        if not abandon:
            with contextlib.suppress(ProtocolError):
                self.h2.close_connection(
                    error_code=ErrorCodes.NO_ERROR, last_stream_id=self._goaway_last
                )
        self.flush()
        self._done = True
        if abandon:
            self._abandon_streams()
        # A client that neither reads the rest nor answers TLS close_notify is dropped later.
        self.deadline = self._sweeper.now + self.settings.idle_timeout
        transport: Any = self.transport
        if transport is not None:
            transport.unregisterProducer()  # TLS waits for its producer to go before closing
            transport.loseConnection()

    def _abandon_streams(self) -> None:
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.connection_lost()

    def _set_idle_deadline(self) -> None:
        if not self.streams and not self._done:
            self.deadline = self._sweeper.now + self.settings.idle_timeout
        elif not self._done:
            self.deadline = NEVER

    def _abort_transport(self) -> None:
        # Reset the TCP connection under TLS: TLS's own abort sends close_notify first, which
        # would tell the client that a truncated response ended cleanly.
        transport: Any = self.transport
        if transport is not None:
            getattr(transport, "transport", transport).abortConnection()

    def _who(self) -> str:
        return self.client.address.decode() if self.client is not None else "?"


_HANDLERS: dict[type[Event], Callable[[H2Connection, Any], None]] = {
    DataReceived: H2Connection._data_received,
    RequestReceived: H2Connection._request_received,
    StreamEnded: H2Connection._stream_ended,
    WindowUpdated: H2Connection._window_updated,
    StreamReset: H2Connection._stream_reset,
    TrailersReceived: H2Connection._trailers_received,
    RemoteSettingsChanged: H2Connection._settings_changed,
    PingReceived: H2Connection._ping_or_priority,
    PriorityUpdated: H2Connection._ping_or_priority,
    ConnectionTerminated: H2Connection._connection_terminated,
}

"""sd_notify: tells systemd when the proxy is ready, reloading or stopping, and that it is alive.

Rules:
1. The address and the watchdog interval come in as values (read once, in ``config.py``); this
   module never looks at the environment. No address: every call does nothing.
2. One datagram per state change, newline-separated ``KEY=VALUE`` fields, as ``sd_notify(3)``
   writes them. An address starting with ``@`` is in the abstract namespace (a leading NUL).
3. Sending never raises and never blocks the reactor: the socket is non-blocking, and a failed
   send is one log line per run of failures, not one per watchdog tick.
4. ``RELOADING=1`` carries ``MONOTONIC_USEC``: systemd >= 253 ignores it otherwise for
   ``Type=notify-reload``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

#: How often ``STATUS=`` is refreshed (only sent when its text changed), in seconds.
STATUS_INTERVAL = 5.0


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds: the clock systemd compares ``MONOTONIC_USEC`` with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def socket_address(notify_socket: str) -> str | bytes:
    """``NOTIFY_SOCKET`` → what ``sendto`` takes: ``@name`` is abstract (leading NUL byte)."""
    if notify_socket.startswith("@"):
        return b"\0" + notify_socket[1:].encode()
    return notify_socket


def _field(text: str) -> str:
    # One field per line: a newline in a status would start a field systemd would misread.
    return " ".join(text.splitlines())


class SystemdNotifier:
    """Sends service state to systemd's notify socket and pings its watchdog."""

    def __init__(
        self,
        *,
        notify_socket: str | None,
        watchdog_usec: int | None,
        clock: IReactorTime,
        status: Callable[[], str] | None = None,
        monotonic: Callable[[], int] = monotonic_usec,
    ) -> None:
        self.notify_socket = notify_socket
        self._address = socket_address(notify_socket) if notify_socket else None
        self._monotonic = monotonic
        self._status = status
        self._last_status: str | None = None
        self._socket: socket.socket | None = None
        self._failing = False
        self._watchdog = LoopingCall(self.send, "WATCHDOG=1")
        self._watchdog.clock = clock
        # systemd's advice (sd_watchdog_enabled(3)): ping at half the interval.
        self.watchdog_interval = watchdog_usec / 2_000_000 if watchdog_usec else None
        self._status_loop = LoopingCall(self._refresh_status)
        self._status_loop.clock = clock

    @property
    def enabled(self) -> bool:
        """Whether systemd is listening (``NOTIFY_SOCKET`` was set)."""
        return self._address is not None

    def ready(self) -> None:
        """Startup or a reload finished: ``READY=1``; starts the watchdog and status updates."""
        if not self.enabled:
            return
        self._send_with_status("READY=1")
        if self.watchdog_interval is not None and not self._watchdog.running:
            self._watchdog.start(self.watchdog_interval, now=True)
        if self._status is not None and not self._status_loop.running:
            self._status_loop.start(STATUS_INTERVAL, now=False)

    def reloading(self) -> None:
        """A reload began: ``RELOADING=1`` with the monotonic time systemd >= 253 wants."""
        self.send("RELOADING=1", f"MONOTONIC_USEC={self._monotonic()}", "STATUS=reloading")

    def stopping(self) -> None:
        """Shutdown began: ``STOPPING=1``. The watchdog keeps pinging while connections drain."""
        self._status_loop_stop()
        self.send("STOPPING=1", "STATUS=stopping: draining connections")

    def close(self) -> None:
        """Stop pinging and release the socket (the process is about to exit)."""
        self._status_loop_stop()
        if self._watchdog.running:
            self._watchdog.stop()
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def send(self, *fields: str) -> bool:
        """Send one datagram of ``fields``; False (and at most one log line) when it failed."""
        if self._address is None:
            return False
        message = "\n".join(fields).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                # A full receive queue must cost a lost datagram, not a stalled reactor.
                self._socket.setblocking(False)
            self._socket.sendto(message, self._address)
        except OSError as e:
            if not self._failing:
                self._failing = True
                log.warn(
                    "cannot notify systemd at {address}: {why}",
                    address=self.notify_socket,
                    why=e.strerror or str(e),
                )
            return False
        if self._failing:
            self._failing = False
            log.info("notifying systemd at {address} works again", address=self.notify_socket)
        return True

    def _send_with_status(self, state: str) -> None:
        if self._status is None:
            self.send(state)
            return
        self._last_status = _field(self._status())
        self.send(state, f"STATUS={self._last_status}")

    def _refresh_status(self) -> None:
        assert self._status is not None  # the loop runs only with a status source
        text = _field(self._status())
        if text != self._last_status and self.send(f"STATUS={text}"):
            self._last_status = text

    def _status_loop_stop(self) -> None:
        if self._status_loop.running:
            self._status_loop.stop()

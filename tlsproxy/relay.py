"""A byte tunnel between a client and a backend: websockets after ``101``, raw TCP mode later.

Rules:

1. Bytes pass untouched and in order, as soon as they arrive.
2. Back-pressure is the connections' own producer wiring, already in place for HTTP: a side
   that cannot keep up pauses reading on the other. The relay adds nothing per byte.
3. A side that ends ends the other, after what was already written to it has gone out. A
   backend that only stops sending (TCP half-close) leaves the client free to finish sending:
   the client's side is closed when the client is done too.
4. Any traffic, either way, counts as activity for ``--tunnel-idle-timeout``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(eq=False, slots=True)
class Relay:
    """Forwards bytes between two connections and ends both together."""

    write_client: Callable[[bytes], None]
    write_backend: Callable[[bytes], None]
    close_client: Callable[[], None]
    close_backend: Callable[[], None]
    activity: Callable[[], None]
    finish_client: Callable[[], None] | None = None  # end sending only (else close_client)
    client_open: bool = True  # we may still write to the client
    backend_open: bool = True  # we may still write to the backend

    def from_client(self, data: bytes) -> None:
        self.activity()
        if self.backend_open:
            self.write_backend(data)

    def from_backend(self, data: bytes) -> None:
        self.activity()
        if self.client_open:
            self.write_client(data)

    def client_ended(self) -> None:
        """The client's connection is gone: the backend gets what was sent, then its close."""
        self.client_open = False
        if self.backend_open:
            self.backend_open = False
            self.close_backend()

    def backend_ended(self) -> None:
        """The backend's connection is gone: the client gets what was sent, then its close."""
        self.backend_open = False
        if self.client_open:
            self.client_open = False
            self.close_client()

    def backend_finished_sending(self) -> None:
        """The backend half-closed: the client is told (TLS close_notify) and may still send."""
        if self.client_open:
            self.client_open = False
            (self.finish_client or self.close_client)()

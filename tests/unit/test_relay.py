"""tlsproxy.relay on its own: what each side is written and told, event by event."""

from __future__ import annotations

from dataclasses import dataclass, field

from tlsproxy.relay import Relay


@dataclass
class Ends:
    """Records everything the relay does to both connections, in one ordered list."""

    events: list[tuple[str, bytes]] = field(default_factory=list)
    activity: int = 0

    def relay(self) -> Relay:
        return Relay(
            write_client=lambda data: self.events.append(("to client", data)),
            write_backend=lambda data: self.events.append(("to backend", data)),
            close_client=lambda: self.events.append(("close client", b"")),
            close_backend=lambda: self.events.append(("close backend", b"")),
            activity=self._active,
        )

    def _active(self) -> None:
        self.activity += 1

    def sent(self, side: str) -> list[bytes]:
        return [data for what, data in self.events if what == f"to {side}"]

    def closes(self, side: str) -> int:
        return sum(1 for what, _ in self.events if what == f"close {side}")


def test_bytes_pass_both_ways_untouched_and_in_order() -> None:
    """Each chunk reaches the other side as it arrives, byte for byte, in the order sent."""
    ends = Ends()
    relay = ends.relay()
    relay.from_client(b"\x81\x05hello")
    relay.from_backend(b"\x81\x05HELLO")
    relay.from_client(b"\x00\xff\r\n")
    relay.from_backend(b"second")
    assert ends.events == [
        ("to backend", b"\x81\x05hello"),
        ("to client", b"\x81\x05HELLO"),
        ("to backend", b"\x00\xff\r\n"),
        ("to client", b"second"),
    ]


def test_client_ending_closes_the_backend_once() -> None:
    """The client's connection ending closes the backend's exactly once, however often it is
    reported, and the backend's own end afterwards closes nothing more."""
    ends = Ends()
    relay = ends.relay()
    relay.from_client(b"last words")
    relay.client_ended()
    relay.client_ended()
    relay.backend_ended()
    assert ends.events == [("to backend", b"last words"), ("close backend", b"")]


def test_nothing_is_written_to_a_client_that_ended() -> None:
    """Bytes the backend sends after the client left are dropped, not written to a dead side."""
    ends = Ends()
    relay = ends.relay()
    relay.client_ended()
    relay.from_backend(b"too late")
    assert ends.sent("client") == []


def test_backend_ending_closes_the_client_once() -> None:
    """The backend's connection ending closes the client's exactly once, after what the backend
    sent before it; the client's end afterwards closes nothing more."""
    ends = Ends()
    relay = ends.relay()
    relay.from_backend(b"goodbye")
    relay.backend_ended()
    relay.backend_ended()
    relay.client_ended()
    assert ends.events == [("to client", b"goodbye"), ("close client", b"")]


def test_nothing_is_written_to_a_backend_that_ended() -> None:
    """Bytes the client sends after the backend's connection ended are dropped."""
    ends = Ends()
    relay = ends.relay()
    relay.backend_ended()
    relay.from_client(b"too late")
    assert ends.sent("backend") == []


def test_backend_half_close_closes_the_client_but_keeps_forwarding_its_bytes() -> None:
    """After the backend stops sending, the client is closed once, yet what the client still
    sends reaches the backend until the client ends, which then closes the backend."""
    ends = Ends()
    relay = ends.relay()
    relay.backend_finished_sending()
    assert ends.events == [("close client", b"")]
    relay.from_client(b"still talking")
    relay.from_client(b"and more")
    assert ends.sent("backend") == [b"still talking", b"and more"]
    relay.backend_finished_sending()
    assert ends.closes("client") == 1
    relay.client_ended()
    assert ends.events[-1] == ("close backend", b"")
    relay.backend_ended()
    assert (ends.closes("client"), ends.closes("backend")) == (1, 1)


def test_half_close_after_the_client_ended_closes_nothing_more() -> None:
    """A backend half-close reported after the client is gone does not close the client twice."""
    ends = Ends()
    relay = ends.relay()
    relay.client_ended()
    relay.backend_finished_sending()
    assert (ends.closes("client"), ends.closes("backend")) == (0, 1)


def test_every_chunk_either_way_counts_as_activity() -> None:
    """Each chunk, from either side, is one call of the activity callback (the idle timer)."""
    ends = Ends()
    relay = ends.relay()
    relay.from_client(b"a")
    relay.from_backend(b"b")
    relay.from_backend(b"c")
    assert ends.activity == 3
    relay.client_ended()
    assert ends.activity == 3  # an ending is not activity

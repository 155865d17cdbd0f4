"""tlsproxy.workers.channel: what a worker inherits, and the messages it sends, as bytes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tlsproxy.workers.channel import (
    ENVIRONMENT,
    Expiry,
    Inheritance,
    LineBuffer,
    Logged,
    Measured,
    Message,
    Reloaded,
    Started,
    Unreadable,
    decode,
    encode,
    worker_environment,
)


def test_inheritance_numbers_listeners_from_4_and_survives_the_environment() -> None:
    """TLS listeners come first from descriptor 4, then the redirect ones; the environment
    value decodes to the same inheritance, and childFDs map each to the supervisor's socket."""
    inherited = Inheritance.numbered(2, listeners=2, redirect_listeners=1)
    assert inherited == Inheritance(2, (4, 5), (6,))
    assert Inheritance.decode(inherited.encode()) == inherited
    assert inherited.child_fds([11, 12, 17]) == {4: 11, 5: 12, 6: 17}


def test_the_access_log_file_follows_the_listeners() -> None:
    """--access-log FILE: the supervisor's descriptor of it comes after every listener."""
    inherited = Inheritance.numbered(1, listeners=1, redirect_listeners=1, access_log=True)
    assert inherited == Inheritance(1, (4,), (5,), access_log=6)
    assert Inheritance.decode(inherited.encode()) == inherited
    assert inherited.child_fds([11, 12, 9]) == {4: 11, 5: 12, 6: 9}


@pytest.mark.parametrize(
    "text",
    ["", "{}", '{"worker": 1, "listeners": [2], "redirect_listeners": []}', "[1, 2]", "nonsense"],
)
def test_a_bad_inheritance_is_a_value_error(text: str) -> None:
    """Anything but a supervisor's value (descriptors 0-3 included) is refused by name."""
    with pytest.raises(ValueError, match=ENVIRONMENT):
        Inheritance.decode(text)


def test_workers_get_no_systemd_variables() -> None:
    """NOTIFY_SOCKET, the watchdog and socket activation belong to the supervisor; the rest of
    the environment is passed on, with the inheritance added."""
    environ = {
        "PATH": "/usr/bin",
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": "1",
        "LISTEN_FDS": "1",
        "LISTEN_PID": "1",
        "LISTEN_FDNAMES": "https",
    }
    inherited = Inheritance(1, (4,))
    assert worker_environment(environ, inherited) == {
        "PATH": "/usr/bin",
        ENVIRONMENT: inherited.encode(),
    }


EXPIRES = datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    "message",
    [
        Started(),
        Reloaded(ok=True),
        Reloaded(ok=False),
        Logged(level="warn", namespace="tlsproxy.service", text="two\nlines {and braces}"),
        Measured(
            counters={"connections_open": 3, "responses": [0, 0, 5], "duration_sum": 0.25},
            certificates=(Expiry(("localhost", "127.0.0.1"), EXPIRES, "AB:CD"),),
        ),
    ],
)
def test_messages_are_one_line_each_and_decode_to_themselves(message: Message) -> None:
    """Each message is a single line of JSON, whatever its text holds."""
    line = encode(message)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert decode(line[:-1]) == message


@pytest.mark.parametrize(
    "line", [b"not json", b'{"event": "exploded"}', b'{"event": "reloaded"}', b"[]"]
)
def test_an_unreadable_line_is_reported_not_raised(line: bytes) -> None:
    """A line that is no message (a stray print, another version) becomes Unreadable."""
    assert decode(line) == Unreadable(line.decode())


def test_line_buffer_joins_pieces_and_cuts_overlong_lines() -> None:
    """Lines split across reads are joined; a line over the limit is cut there and the rest of
    it dropped; an unterminated last line comes out at the end."""
    lines = LineBuffer(limit=8)
    assert list(lines.feed(b"ab")) == []
    assert list(lines.feed(b"c\nde\nfg")) == [b"abc", b"de"]
    assert list(lines.feed(b"hijklmnopq")) == [b"fghijklm"]
    assert list(lines.feed(b"rest\nok\n")) == [b"ok"]
    assert list(lines.feed(b"tail")) == []
    assert list(lines.end()) == [b"tail"]
    assert list(lines.end()) == []

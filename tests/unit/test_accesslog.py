"""tlsproxy.accesslog: Combined Log Format lines, as Apache and nginx write them."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from zope.interface import implementer

from tests.unit.harness import Proxy, request, response
from tlsproxy.accesslog import BUFFER_LIMIT, WHOLE_WRITE, AccessLog, JsonAccessLog, LineFile
from tlsproxy.http.headers import Header

JUNE_1_NOON = 1_780_315_200.0  # 2026-06-01 12:00:00 UTC


@dataclass
class FakeTime:
    """Stands in for the ``time`` module: only ``time()`` is used."""

    now: float = JUNE_1_NOON

    def time(self) -> float:
        return self.now


def record(
    log: AccessLog,
    *,
    headers: list[Header] | None = None,
    target: bytes = b"/",
    status: int = 200,
    size: int = 5,
) -> None:
    log.record(
        client=b"203.0.113.7",
        method=b"GET",
        target=target,
        version=b"HTTP/1.1",
        status=status,
        size=size,
        headers=headers or [],
    )


def test_line_is_combined_log_format() -> None:
    """host ident user [time] "request" status bytes "referer" "user-agent", one per line."""
    stream = io.StringIO()
    log = AccessLog(stream, clock=FakeTime())
    record(
        log,
        target=b"/a?b=c",
        headers=[(b"User-Agent", b"curl/8.5"), (b"referer", b"https://x.example/")],
    )
    assert stream.getvalue() == (
        '203.0.113.7 - - [01/Jun/2026:12:00:00 +0000] "GET /a?b=c HTTP/1.1" 200 5 '
        '"https://x.example/" "curl/8.5"\n'
    )


def test_missing_values_are_dashes() -> None:
    """No Referer, no User-Agent and an empty body are written as "-"."""
    stream = io.StringIO()
    record(AccessLog(stream, clock=FakeTime()), size=0, status=204)
    assert stream.getvalue().endswith('"GET / HTTP/1.1" 204 - "-" "-"\n')


def test_quotes_and_backslashes_are_escaped() -> None:
    """A quote in a logged value cannot end the field early (log parsers split on them)."""
    stream = io.StringIO()
    record(
        AccessLog(stream, clock=FakeTime()),
        target=b'/"q"',
        headers=[(b"User-Agent", b'evil" 200 1 "x\\')],
    )
    line = stream.getvalue()
    assert '"GET /\\"q\\" HTTP/1.1"' in line
    assert line.endswith('"evil\\" 200 1 \\"x\\\\"\n')


def test_non_ascii_bytes_are_logged_not_refused() -> None:
    """obs-text in a header (bytes 0x80-0xff) is written as Latin-1 instead of failing."""
    stream = io.StringIO()
    record(AccessLog(stream, clock=FakeTime()), headers=[(b"User-Agent", b"caf\xe9")])
    assert stream.getvalue().endswith('"caf\u00e9"\n')


def test_timestamp_follows_the_clock_second_by_second() -> None:
    """The cached timestamp changes when the second does."""
    stream = io.StringIO()
    clock = FakeTime()
    log = AccessLog(stream, clock=clock)
    record(log)
    clock.now += 0.5
    record(log)
    clock.now += 0.5
    record(log)
    stamps = [line.split("[")[1].split("]")[0] for line in stream.getvalue().splitlines()]
    assert stamps == [
        "01/Jun/2026:12:00:00 +0000",
        "01/Jun/2026:12:00:00 +0000",
        "01/Jun/2026:12:00:01 +0000",
    ]


def test_flush_and_close_reach_the_stream() -> None:
    """flush and close are passed to the underlying stream."""

    class Stream(io.StringIO):
        flushed = 0

        def flush(self) -> None:
            self.flushed += 1
            super().flush()

    stream = Stream()
    log = AccessLog(stream, clock=FakeTime())
    log.flush()
    assert stream.flushed == 1
    log.close()
    assert stream.closed


def test_json_line_holds_every_field() -> None:
    """--access-log-format json: one JSON object per line with the named fields, time in UTC."""
    stream = io.StringIO()
    JsonAccessLog(stream, clock=FakeTime()).record(
        client=b"203.0.113.7",
        method=b"GET",
        target=b'/a?"b"',
        version=b"HTTP/1.1",
        status=200,
        size=5,
        headers=[(b"Host", b"x.example"), (b"User-Agent", b"caf\xe9"), (b"Referer", b"r")],
        duration=0.0125,
    )
    line = stream.getvalue()
    assert line.endswith("}\n")
    assert line.count("\n") == 1
    assert json.loads(line) == {
        "time": "2026-06-01T12:00:00Z",
        "client": "203.0.113.7",
        "method": "GET",
        "target": '/a?"b"',
        "protocol": "HTTP/1.1",
        "status": 200,
        "bytes": 5,
        "duration_ms": 12.5,
        "referer": "r",
        "user_agent": "caf\u00e9",
        "host": "x.example",
    }


def test_json_line_of_a_refused_request_has_nulls() -> None:
    """A request refused before its head was understood logs null method, target and duration."""
    stream = io.StringIO()
    JsonAccessLog(stream, clock=FakeTime()).record(
        client=b"::1", method=b"", target=b"", version=b"HTTP/1.1", status=400, size=0, headers=[]
    )
    entry = json.loads(stream.getvalue())
    assert (entry["method"], entry["target"], entry["duration_ms"]) == (None, None, None)
    assert (entry["referer"], entry["user_agent"], entry["host"]) == (None, None, None)


def test_json_lines_from_real_exchanges_carry_their_duration() -> None:
    """The h1 front logs each exchange as valid JSON with the time from head to response end."""
    proxy = Proxy(log_access=True)
    proxy.access_log = JsonAccessLog(proxy.log_stream, clock=FakeTime())
    object.__setattr__(proxy.settings, "access_log", proxy.access_log)
    client = proxy.connect()
    client.send(request(headers=[b"User-Agent: t"]))
    backend = proxy.accept()
    proxy.clock.advance(0.25)
    backend.send(response(body=b"hi"))
    entries = [json.loads(line) for line in proxy.log_lines()]
    assert len(entries) == 1
    assert entries[0]["status"] == 200
    assert entries[0]["bytes"] == 2
    assert entries[0]["host"] == "example.com"
    assert entries[0]["user_agent"] == "t"
    assert entries[0]["duration_ms"] == 250.0


# -- LineFile: whole lines per write, for processes sharing one log (--workers) ------------------


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Each write(2) a LineFile makes, as the bytes it wrote (the fd is not touched)."""
    made: list[bytes] = []

    def write(fd: int, data: bytes) -> int:
        made.append(bytes(data))
        return len(data)

    monkeypatch.setattr("os.write", write)
    return made


def test_line_file_writes_only_whole_lines_in_pieces_a_pipe_keeps_whole(
    writes: list[bytes],
) -> None:
    """Nothing is written before flush; then complete lines go out in writes of at most
    PIPE_BUF bytes, each ending a line; an unfinished line waits for the rest of it."""
    out = LineFile(99, owned=False)
    lines = [f"{i:04d} {'x' * (i % 300)}\n" for i in range(200)]
    for line in lines:
        out.write(line)
    out.write("unfinished")
    assert writes == []
    out.flush()
    assert len(writes) > 1
    assert all(len(w) <= WHOLE_WRITE and w.endswith(b"\n") for w in writes)
    assert b"".join(writes) == "".join(lines).encode()
    writes.clear()
    out.write(" now\n")
    out.flush()
    assert writes == [b"unfinished now\n"]


def test_a_line_longer_than_a_whole_write_goes_alone_and_whole(writes: list[bytes]) -> None:
    """A huge line (a long target) is one write of its own, never cut."""
    out = LineFile(99, owned=False)
    huge = "GET /" + "a" * (3 * WHOLE_WRITE) + "\n"
    out.write("short\n")
    out.write(huge)
    out.write("é after\n")
    out.flush()
    assert writes == [b"short\n", huge.encode(), "é after\n".encode()]


def test_a_full_buffer_is_written_before_the_next_flush(writes: list[bytes]) -> None:
    """The buffer is bounded: past BUFFER_LIMIT, write() writes what it holds."""
    out = LineFile(99, owned=False)
    line = "y" * 99 + "\n"
    for _ in range(BUFFER_LIMIT // len(line) + 1):
        out.write(line)
    assert writes
    assert all(w.endswith(b"\n") for w in writes)


def test_a_failing_log_file_says_so_once_and_again_when_it_recovers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full disk (or a closed pipe) loses lines with one error line, not one per flush."""
    failing = [True]

    def write(fd: int, data: bytes) -> int:
        if failing[0]:
            raise OSError(28, "No space left on device")
        return len(data)

    monkeypatch.setattr("os.write", write)
    out = LineFile(99, owned=False)
    with LogLines() as lines:
        for _ in range(3):
            out.write("a\n")
            out.flush()
        failing[0] = False
        out.write("b\n")
        out.flush()
    assert lines == [
        "cannot write the access log (No space left on device): lines are lost",
        "the access log is written again",
    ]


def test_line_file_appends_to_the_file_and_leaves_stdout_open(tmp_path: Path) -> None:
    """open(path) appends (never truncates); '-' is standard output, which close() keeps."""
    path = tmp_path / "access.log"
    path.write_text("earlier\n")
    out = LineFile.open(str(path))
    out.write("later\n")
    out.close()
    assert path.read_text() == "earlier\nlater\n"
    stdout = LineFile.open("-")
    stdout.close()
    os.fstat(1)  # still open


@implementer(ILogObserver)
class LogLines(list[str]):
    """The text of each log event, while in a with block."""

    def __call__(self, event: LogEvent) -> None:
        self.append(formatEvent(event))

    def __enter__(self) -> LogLines:
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self)

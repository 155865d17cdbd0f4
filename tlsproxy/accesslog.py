"""The access log in Combined Log Format, as Apache and nginx write it, so every log tool reads it;
or as JSON lines (``--access-log-format json``), for log pipelines that want named fields.

The timestamp is formatted once per second, not once per request, and the file is buffered and
flushed once a second by the service: a log must not cost the proxy its speed.

The file (or standard output) is written by :class:`LineFile` in whole lines only: with
``--workers``, several processes append to it, and a line must never be cut by another's.
"""

from __future__ import annotations

import errno
import json
import os
import select
import time
from collections.abc import Iterator, Sequence
from typing import Protocol

from twisted.logger import Logger

from tlsproxy.http.headers import Header

log = Logger()

#: Bytes one write(2) may hold and stay whole: POSIX guarantees it for pipes (PIPE_BUF), and
#: Linux appends each write to a regular file opened with O_APPEND in one piece.
WHOLE_WRITE = select.PIPE_BUF
#: Pending bytes that make a write happen before the service's next flush.
BUFFER_LIMIT = 64 * 1024


class Stream(Protocol):
    """Where an access log writes: a :class:`LineFile`, or any text stream (tests)."""

    def write(self, text: str, /) -> object: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def whole_lines(data: bytes, limit: int = WHOLE_WRITE) -> Iterator[bytes]:
    """``data`` (complete lines) in pieces of whole lines, each at most ``limit`` bytes unless
    a single line is longer (then it is a piece of its own)."""
    start = 0
    while start < len(data):
        if len(data) - start <= limit:
            yield data[start:]
            return
        cut = data.rfind(b"\n", start, start + limit) + 1
        if cut <= start:  # one line longer than the limit
            cut = data.index(b"\n", start) + 1
        yield data[start:cut]
        start = cut


class LineFile:
    """An append-only text file written whole lines at a time, one write(2) per piece.

    Text is kept until :meth:`flush` (or until :data:`BUFFER_LIMIT`); only complete lines are
    written, in pieces of at most :data:`WHOLE_WRITE` bytes. A failed write drops what it held
    and says so once, not once a second: the proxy goes on.
    """

    def __init__(self, fd: int, *, owned: bool = True) -> None:
        self._fd = fd
        self._owned = owned
        self._pending: list[str] = []
        self._size = 0
        self._failing = False

    @classmethod
    def open(cls, path: str) -> LineFile:
        """``path`` opened for appending (created if new, as open() would); ``-``: stdout."""
        if path == "-":
            return cls(1, owned=False)
        return cls(open_for_appending(path))

    def write(self, text: str) -> int:
        self._pending.append(text)
        self._size += len(text)
        if self._size >= BUFFER_LIMIT:
            self.flush()
        return len(text)

    def flush(self) -> None:
        text = "".join(self._pending)
        end = text.rfind("\n") + 1  # an unfinished line waits for its end
        self._pending = [text[end:]] if end < len(text) else []
        self._size = len(text) - end
        for piece in whole_lines(text[:end].encode("utf-8")):
            self._write(piece)

    def _write(self, piece: bytes) -> None:
        while piece:
            try:
                piece = piece[os.write(self._fd, piece) :]
            except InterruptedError:
                continue
            except OSError as e:
                if not self._failing:
                    self._failing = True
                    why = "it is full" if e.errno == errno.EAGAIN else e.strerror or str(e)
                    log.error("cannot write the access log ({why}): lines are lost", why=why)
                return
        if self._failing:
            self._failing = False
            log.info("the access log is written again")

    def close(self) -> None:
        self.flush()
        if self._owned:
            os.close(self._fd)
            self._owned = False


def open_for_appending(path: str) -> int:
    """The descriptor of ``path`` opened as an access log is (a ``--workers`` supervisor opens
    it so, and its workers inherit it)."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)


def _quote(value: bytes) -> str:
    text = value.decode("latin-1")
    return text.replace("\\", "\\\\").replace('"', '\\"')


_LOGGED = frozenset({b"referer", b"user-agent", b"host", b":authority"})


def _logged_headers(headers: Sequence[Header]) -> dict[bytes, bytes]:
    """The request headers a log line shows, by lower-case name (the last one wins)."""
    return {lname: v for n, v in headers if (lname := n.lower()) in _LOGGED}


class AccessLog:
    """Writes one Combined Log Format line per exchange to ``stream``."""

    #: ``time.strftime`` format of the timestamp, recomputed once a second.
    time_format = "%d/%b/%Y:%H:%M:%S +0000"

    def __init__(self, stream: Stream, *, clock: object = time) -> None:
        self._stream = stream
        self._time = clock.time  # type: ignore[attr-defined]
        self._second = -1
        self._stamp = ""

    def _timestamp(self) -> str:
        now = int(self._time())
        if now != self._second:
            self._second = now
            self._stamp = time.strftime(self.time_format, time.gmtime(now))
        return self._stamp

    def record(
        self,
        *,
        client: bytes,
        method: bytes,
        target: bytes,
        version: bytes,
        status: int,
        size: int,
        headers: Sequence[Header],
        duration: float | None = None,
    ) -> None:
        """One exchange; ``duration``: seconds from its complete head to its end, if it had one."""
        found = _logged_headers(headers)
        referer = found.get(b"referer", b"-")
        user_agent = found.get(b"user-agent", b"-")
        # A request refused before its head was understood has no request line to show.
        request = b"%s %s %s" % (method, target, version) if method else b"-"
        self._stream.write(
            f'{client.decode()} - - [{self._timestamp()}] "{_quote(request)}" {status} '
            f'{size or "-"} "{_quote(referer)}" "{_quote(user_agent)}"\n'
        )

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()


class JsonAccessLog(AccessLog):
    """Writes one JSON object per exchange to ``stream``, one per line (JSON Lines).

    Header values and targets are bytes on the wire; they are decoded as latin-1, so every byte
    survives as one character and a line is always valid JSON.
    """

    time_format = "%Y-%m-%dT%H:%M:%SZ"  # ISO 8601, UTC

    def record(
        self,
        *,
        client: bytes,
        method: bytes,
        target: bytes,
        version: bytes,
        status: int,
        size: int,
        headers: Sequence[Header],
        duration: float | None = None,
    ) -> None:
        found = {name: value.decode("latin-1") for name, value in _logged_headers(headers).items()}
        referer, user_agent = found.get(b"referer"), found.get(b"user-agent")
        host = found.get(b"host", found.get(b":authority"))
        entry = {
            "time": self._timestamp(),
            "client": client.decode(),
            "method": method.decode("latin-1") or None,  # refused before its head was understood
            "target": target.decode("latin-1") or None,
            "protocol": version.decode("latin-1"),
            "status": status,
            "bytes": size,
            "duration_ms": None if duration is None else round(duration * 1000, 3),
            "referer": referer,
            "user_agent": user_agent,
            "host": host,
        }
        self._stream.write(json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n")

"""The access log in Combined Log Format, as Apache and nginx write it, so every log tool reads it;
or as JSON lines (``--access-log-format json``), for log pipelines that want named fields.

The timestamp is formatted once per second, not once per request, and the file is buffered and
flushed once a second by the service: a log must not cost the proxy its speed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TextIO

from tlsproxy.http.headers import Header


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

    def __init__(self, stream: TextIO, *, clock: object = time) -> None:
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

"""The access log in Combined Log Format, as Apache and nginx write it, so every log tool reads it.

The timestamp is formatted once per second, not once per request, and the file is buffered and
flushed once a second by the service: a log must not cost the proxy its speed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TextIO

from tlsproxy.http.headers import Header


def _quote(value: bytes) -> str:
    text = value.decode("latin-1")
    return text.replace("\\", "\\\\").replace('"', '\\"')


class AccessLog:
    """Writes one Combined Log Format line per exchange to ``stream``."""

    def __init__(self, stream: TextIO, *, clock: object = time) -> None:
        self._stream = stream
        self._time = clock.time  # type: ignore[attr-defined]
        self._second = -1
        self._stamp = ""

    def _timestamp(self) -> str:
        now = int(self._time())
        if now != self._second:
            self._second = now
            self._stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now))
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
    ) -> None:
        referer = user_agent = b"-"
        for name, value in headers:
            lname = name.lower()
            if lname == b"referer":
                referer = value
            elif lname == b"user-agent":
                user_agent = value
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

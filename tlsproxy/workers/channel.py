"""What passes between the supervisor and a worker: inherited descriptors, and messages.

Rules:

1. A worker is started as ``python -m tlsproxy.workers ARGS`` with the user's own tlsproxy
   arguments, so it validates and loads exactly what the supervisor did. What it inherits is
   named in one environment variable (:data:`ENVIRONMENT`, JSON): its number and the
   descriptors of the listening sockets the supervisor opened (TLS ones, then --redirect-http
   ones), and of the ``--access-log`` file it opened. No command-line option exists for it.
2. Descriptors: 0 is the control pipe from the supervisor (end of file: the supervisor is gone,
   so the worker drains and exits); 1 is the supervisor's own standard output (``--access-log
   -`` writes there); 2 is piped to the supervisor, line by line; 3 carries the worker's
   messages; the listening sockets follow from 4, then the access log file.
3. Messages are JSON objects, one per line, each with an ``event`` name (past tense: something
   happened in the worker). An unreadable line is reported, never fatal.
4. A worker gets no systemd variables: only the supervisor talks to ``NOTIFY_SOCKET``, and the
   sockets systemd passed reach workers through rule 1 like every other listener.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

ENVIRONMENT = "TLSPROXY_WORKER"
CONTROL_FD = 0
OUTPUT_FD = 1
ERRORS_FD = 2
MESSAGES_FD = 3
FIRST_LISTENER_FD = 4

#: Set by systemd for the process it started, which is the supervisor, never a worker.
SYSTEMD_VARIABLES = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
)

#: Longest line kept from a worker; the rest of a longer one is dropped (and said so).
MAX_LINE = 64 * 1024


@dataclass(frozen=True)
class Inheritance:
    """What one worker inherits: its number and its descriptors, by kind."""

    worker: int
    listeners: tuple[int, ...]  # TLS, in the order the supervisor opened them
    redirect_listeners: tuple[int, ...] = ()  # --redirect-http
    access_log: int | None = None  # --access-log FILE; None: none, or standard output

    @classmethod
    def numbered(
        cls, worker: int, *, listeners: int, redirect_listeners: int, access_log: bool = False
    ) -> Inheritance:
        """Descriptors from :data:`FIRST_LISTENER_FD` on: TLS listeners first, then redirects,
        then the access log."""
        end = FIRST_LISTENER_FD + listeners + redirect_listeners
        fds = range(FIRST_LISTENER_FD, end)
        return cls(
            worker, tuple(fds[:listeners]), tuple(fds[listeners:]), end if access_log else None
        )

    def child_fds(self, parent_fds: Sequence[int]) -> dict[int, int]:
        """``childFDs`` for spawnProcess: each descriptor in the worker → the supervisor's (the
        listeners', then the access log's)."""
        mine = (*self.listeners, *self.redirect_listeners)
        if self.access_log is not None:
            mine += (self.access_log,)
        return dict(zip(mine, parent_fds, strict=True))

    def encode(self) -> str:
        return json.dumps(
            {
                "worker": self.worker,
                "listeners": list(self.listeners),
                "redirect_listeners": list(self.redirect_listeners),
                "access_log": self.access_log,
            }
        )

    @classmethod
    def decode(cls, text: str) -> Inheritance:
        """The value of :data:`ENVIRONMENT`; ValueError if it is not one."""
        try:
            value = json.loads(text)
            return cls(
                worker=int(value["worker"]),
                listeners=tuple(_fd(fd) for fd in value["listeners"]),
                redirect_listeners=tuple(_fd(fd) for fd in value["redirect_listeners"]),
                access_log=None if value.get("access_log") is None else _fd(value["access_log"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"${ENVIRONMENT} is not a worker's inheritance: {e}") from None


def _fd(value: object) -> int:
    if not isinstance(value, int) or value < FIRST_LISTENER_FD:
        raise ValueError(f"{value!r} is not an inherited descriptor")
    return value


def worker_environment(environ: Mapping[str, str], inherited: Inheritance) -> dict[str, str]:
    """The supervisor's environment without systemd's variables, plus the inheritance (rule 4)."""
    environment = {k: v for k, v in environ.items() if k not in SYSTEMD_VARIABLES}
    environment[ENVIRONMENT] = inherited.encode()
    return environment


# -- messages (rule 3) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    """The worker adopted every listener and accepts connections."""


@dataclass(frozen=True)
class Reloaded:
    """A reload (SIGHUP) ended; ``ok``: the new certificates serve new handshakes."""

    ok: bool


@dataclass(frozen=True)
class Logged:
    """One log event of the worker, already formatted."""

    level: str
    namespace: str
    text: str


@dataclass(frozen=True)
class Expiry:
    """A certificate the worker serves, as the metrics page shows it."""

    names: tuple[str, ...]
    not_after: datetime
    fingerprint_sha256: str


@dataclass(frozen=True)
class Measured:
    """The worker's counters now (:func:`tlsproxy.metrics.snapshot`) and its certificates."""

    counters: Mapping[str, Any]
    certificates: tuple[Expiry, ...]


Message = Started | Reloaded | Logged | Measured


@dataclass(frozen=True)
class Unreadable:
    """A line from the worker that is not a message; ``line`` says what it was."""

    line: str


def encode(message: Message) -> bytes:
    """One message as its line."""
    body: dict[str, Any]
    if isinstance(message, Started):
        body = {"event": "started"}
    elif isinstance(message, Reloaded):
        body = {"event": "reloaded", "ok": message.ok}
    elif isinstance(message, Logged):
        body = {
            "event": "logged",
            "level": message.level,
            "namespace": message.namespace,
            "text": message.text,
        }
    else:
        body = {
            "event": "measured",
            "counters": dict(message.counters),
            "certificates": [
                [list(c.names), c.not_after.timestamp(), c.fingerprint_sha256]
                for c in message.certificates
            ],
        }
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> Message | Unreadable:
    """One line as its message."""
    try:
        body = json.loads(line)
        event = body["event"]
        if event == "started":
            return Started()
        if event == "reloaded":
            return Reloaded(ok=bool(body["ok"]))
        if event == "logged":
            return Logged(
                level=str(body["level"]), namespace=str(body["namespace"]), text=str(body["text"])
            )
        if event == "measured":
            counters = body["counters"]
            if not isinstance(counters, dict):
                raise TypeError("counters is not an object")
            return Measured(
                counters=counters,
                certificates=tuple(
                    Expiry(
                        tuple(str(n) for n in names),
                        datetime.fromtimestamp(when, UTC),
                        str(fingerprint),
                    )
                    for names, when, fingerprint in body["certificates"]
                ),
            )
    except (KeyError, TypeError, ValueError, OverflowError):
        pass
    return Unreadable(line[:200].decode("utf-8", "replace"))


class LineBuffer:
    """Bytes from a pipe → complete lines; a line longer than ``limit`` is cut there."""

    def __init__(self, limit: int = MAX_LINE) -> None:
        self._limit = limit
        self._partial = b""
        self._skipping = False  # inside the dropped rest of an overlong line

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The lines ``data`` completes, without their newline."""
        data = self._partial + data
        start = 0
        while (end := data.find(b"\n", start)) != -1:
            line = data[start:end]
            start = end + 1
            if self._skipping:
                self._skipping = False
                continue
            yield line
        rest = data[start:]
        if len(rest) > self._limit:
            if not self._skipping:
                yield rest[: self._limit]
            self._skipping = True
            rest = b""
        self._partial = rest

    def end(self) -> Iterator[bytes]:
        """What is left when the pipe closes: an unterminated last line."""
        rest, self._partial = self._partial, b""
        if rest and not self._skipping:
            yield rest
        self._skipping = False

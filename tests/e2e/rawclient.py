"""A byte-exact HTTP/1.1 client over one TLS socket, for cases an HTTP library would tidy away.

It writes exactly the bytes a test gives it and parses responses just enough to frame them
(status line, header fields, Content-Length / chunked / until-close bodies, 1xx, HEAD, 204, 304).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from dataclasses import dataclass

# How the server ended the connection, as the client saw it.
CLEAN_CLOSE = "clean close"  # TLS close_notify (or TCP FIN on a plain socket)
ABORTED = "aborted"  # TCP reset, or TCP FIN without close_notify
STILL_OPEN = "still open"


@dataclass
class RawResponse:
    """One response: the raw head, its parts, and the (de-chunked) body."""

    head: bytes
    version: bytes
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    complete: bool = True

    @property
    def status_line(self) -> bytes:
        """The status line without its CRLF."""
        return self.head.split(b"\r\n", 1)[0]

    def header(self, name: str) -> list[bytes]:
        """Every value of ``name`` (case-insensitive), in order."""
        wanted = name.lower().encode("ascii")
        return [value for key, value in self.headers if key.lower() == wanted]


class RawClient:
    """A TLS (or plain) socket with a read buffer and HTTP/1.1 response framing."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()
        self.eof = False
        self.how_closed: str | None = None

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket without ceremony."""
        with contextlib.suppress(OSError):
            self.sock.close()

    def send(self, data: bytes) -> None:
        """Write all of ``data``."""
        self.sock.sendall(data)

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            data = self.sock.recv(262144)
        except (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError):
            self.eof = True
            self.how_closed = ABORTED
            return False
        except ssl.SSLError as error:
            if "UNEXPECTED_EOF" in str(error) or "EOF" in str(error):
                self.eof = True
                self.how_closed = ABORTED
                return False
            raise
        if not data:
            self.eof = True
            self.how_closed = CLEAN_CLOSE
            return False
        self._buffer += data
        return True

    def recv_some(self) -> bytes:
        """The next available bytes (buffered first); b"" once the connection has ended."""
        if not self._buffer:
            self._fill()
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def read_head(self) -> bytes:
        """The next response head including CRLF CRLF; ConnectionError if the stream ends."""
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self._buffer[: end + 4])
                del self._buffer[: end + 4]
                return head
            if not self._fill():
                raise ConnectionError(
                    f"connection ended ({self.how_closed}) before a response head; "
                    f"got {bytes(self._buffer)!r}"
                )

    def read_response(self, method: bytes = b"GET", *, skip_1xx: bool = True) -> RawResponse:
        """The next response; interim 1xx responses are skipped unless ``skip_1xx`` is False."""
        while True:
            head = self.read_head()
            lines = head[:-4].split(b"\r\n")
            version, _, rest = lines[0].partition(b" ")
            status_text, _, reason = rest.partition(b" ")
            headers = []
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers.append((name, value.strip(b" \t")))
            result = RawResponse(head, version, int(status_text), reason, headers)
            if 100 <= result.status < 200:
                if skip_1xx and result.status != 101:
                    continue
                return result
            self._read_body(result, method)
            return result

    def _read_body(self, result: RawResponse, method: bytes) -> None:
        if method == b"HEAD" or result.status in (204, 304):
            return
        codings = b",".join(result.header("Transfer-Encoding")).lower()
        if codings.rsplit(b",", 1)[-1].strip() == b"chunked":
            body = bytearray()
            while True:
                line = self._read_line()
                if line is None:
                    result.complete = False
                    break
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while True:
                        trailer = self._read_line()
                        if trailer is None:
                            result.complete = False
                            break
                        if trailer == b"\r\n":
                            break
                    break
                data = self._read_exact(size + 2)
                body += data[:size]
                if len(data) < size + 2:
                    result.complete = False
                    break
            result.body = bytes(body)
        elif result.header("Content-Length"):
            size = int(result.header("Content-Length")[0])
            result.body = self._read_exact(size)
            result.complete = len(result.body) == size
        else:
            while self._fill():
                pass
            result.body = bytes(self._buffer)
            self._buffer.clear()

    def _read_line(self) -> bytes | None:
        while True:
            end = self._buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buffer[: end + 2])
                del self._buffer[: end + 2]
                return line
            if not self._fill():
                return None

    def _read_exact(self, size: int) -> bytes:
        """Up to ``size`` bytes: fewer only if the connection ends first."""
        while len(self._buffer) < size and self._fill():
            pass
        data = bytes(self._buffer[:size])
        del self._buffer[: len(data)]
        return data

    def wait_closed(self, timeout: float = 5.0) -> str:
        """Read and discard until the server ends the connection; how it ended.

        Returns ``CLEAN_CLOSE``, ``ABORTED`` or ``STILL_OPEN`` (nothing ended within ``timeout``).
        """
        deadline = time.monotonic() + timeout
        while not self.eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return STILL_OPEN
            self.sock.settimeout(remaining)
            try:
                self._fill()
            except TimeoutError:
                return STILL_OPEN
            self._buffer.clear()
        assert self.how_closed is not None
        return self.how_closed

    def poll(self, seconds: float) -> bytes:
        """Bytes that arrive within ``seconds`` (b"" if none, or if the connection ended)."""
        if self._buffer:
            return self.recv_some()
        self.sock.settimeout(seconds)
        try:
            self._fill()
        except TimeoutError:
            return b""
        finally:
            self.sock.settimeout(10.0)
        return self.recv_some()

    def is_open_after(self, seconds: float) -> bool:
        """Whether the server has not closed the connection within ``seconds``."""
        return self.wait_closed(seconds) == STILL_OPEN


def request_bytes(
    method: str = "GET",
    target: str = "/",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    host: str | None = "localhost",
    version: str = "HTTP/1.1",
) -> bytes:
    """A raw request: request line, Host (unless None), ``headers`` as given, blank line, body."""
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{name}: {value}" for name, value in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

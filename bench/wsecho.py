"""The websocket echo backend of the ws-echo scenarios: plain HTTP, one asyncio process.

    python bench/wsecho.py PORT

It answers a websocket upgrade (any path) with ``101`` and ``Sec-WebSocket-Accept``, then
echoes every data frame: it unmasks the client's payload (RFC 6455 §5.3: a server must not send
masked frames) and sends it back in an unmasked frame with the same FIN bit and opcode. Pings are
answered with pongs, a close frame with a close frame and the end of the connection. No
extensions (no ``permessage-deflate``): the bytes a proxy carries are the bytes sent.

It is built for speed, because it shares the load CPU with the clients: an ``asyncio.Protocol``
(no coroutine per message), unmasking with the C ``apply_mask`` of the ``websockets`` package
when it is importable (a big-integer XOR otherwise), and back-pressure (it stops reading while
its send buffer is above 256 KiB). The ``websockets`` server itself, with compression off, echoed
64 KiB messages at about half this server's rate on the same core (see docs/benchmarks.md).
A plain GET is answered ``200``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import socket
import sys
from collections.abc import Callable

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD = 16384


def accept_value(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` answer to a ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.strip() + GUID, usedforsecurity=False).digest())


def _xor_mask(data: bytes | bytearray, key: bytes | bytearray) -> bytes:
    n = len(data)
    pad = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(pad, "little")).to_bytes(n, "little")


Mask = Callable[[bytes | bytearray, bytes | bytearray], bytes]

apply_mask: Mask = _xor_mask
with contextlib.suppress(ImportError):  # the websockets package's C version: ~10x faster
    from websockets.speedups import apply_mask  # type: ignore[import-not-found,no-redef,unused-ignore]


def frame_header(first: int, length: int, mask: bytes = b"") -> bytes:
    """A frame header: first byte (FIN, opcode), payload length, and the mask key if any."""
    bit = 0x80 if mask else 0
    if length < 126:
        return bytes((first, bit | length)) + mask
    if length < 65536:
        return bytes((first, bit | 126)) + length.to_bytes(2, "big") + mask
    return bytes((first, bit | 127)) + length.to_bytes(8, "big") + mask


class Echo(asyncio.Protocol):
    """One connection: HTTP head until the upgrade, then websocket frames."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=256 * 1024)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def pause_writing(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded and not self._head():
            return
        self._frames()

    def _head(self) -> bool:
        assert self.transport is not None
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                self.transport.close()
            return False
        head = bytes(self.buf[:end]).split(b"\r\n")
        del self.buf[: end + 4]
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        key = headers.get(b"sec-websocket-key")
        if key is None or headers.get(b"upgrade", b"").lower() != b"websocket":
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
            return False
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept_value(key) + b"\r\n\r\n"
        )
        self.upgraded = True
        return True

    def _frames(self) -> None:
        transport, buf = self.transport, self.buf
        assert transport is not None
        out: list[bytes | bytearray] = []
        while len(buf) >= 2:
            first, second = buf[0], buf[1]
            length, start = second & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    break
                length, start = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    break
                length, start = int.from_bytes(buf[2:10], "big"), 10
            masked = second & 0x80
            end = start + (4 if masked else 0) + length
            if len(buf) < end:
                break
            payload = bytes(buf[end - length : end])
            if masked:
                payload = apply_mask(payload, buf[start : start + 4])
            del buf[:end]
            opcode = first & 0x0F
            if opcode == 0x9:  # ping -> pong
                out += (frame_header(0x8A, length), payload)
            elif opcode == 0xA:  # pong: nothing to do
                continue
            elif opcode == 0x8:  # close: answer with the same code, then end the connection
                out += (frame_header(0x88, length), payload)
                transport.write(b"".join(out))
                transport.close()
                return
            else:
                out += (frame_header(first, length), payload)
        if out:
            transport.write(b"".join(out))


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", port, backlog=1024, reuse_address=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    asyncio.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()

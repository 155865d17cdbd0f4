"""Send on ``write`` when a TCP transport's buffer is empty, instead of on the next reactor turn.

Twisted's ``FileDescriptor.write`` always buffers and registers for writability; the bytes leave
on the next reactor iteration, after two ``epoll_ctl`` calls (start and stop writing) and one
more pass through the reactor. A proxy writes at least twice per request (to the backend and
to the client), so that is four system calls and two reactor passes per request that do nothing.
When nothing is queued we try ``send`` at once and hand only what the kernel did not take to the
normal path; ordering, back-pressure and error handling stay Twisted's.

This relies on ``twisted.internet.abstract.FileDescriptor`` keeping its buffer in
``dataBuffer``/``offset``/``_tempDataLen``; :func:`install` checks for them and leaves the
transport alone otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

_REQUIRED = ("socket", "dataBuffer", "offset", "_tempDataLen", "connected", "_writeDisconnected")


def install(transport: Any) -> bool:
    """Give a connected ``tcp.Connection`` an eager ``write``; False if it is not one."""
    if not all(hasattr(transport, name) for name in _REQUIRED):
        return False
    buffered_write = transport.write
    send = transport.socket.send

    def write(data: bytes) -> None:
        if (
            not transport._tempDataLen
            and transport.offset == len(transport.dataBuffer)
            and transport.connected
            and not transport._writeDisconnected
        ):
            try:
                sent = send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # the normal path meets the same error and closes properly
            if sent == len(data):
                return
            data = data[sent:]
        buffered_write(data)

    def write_sequence(parts: Iterable[bytes]) -> None:
        write(b"".join(parts))

    transport.write = write
    transport.writeSequence = write_sequence
    return True

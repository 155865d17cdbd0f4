"""The backend checks' network side: resolve, connect, look at a socket file, send the request,
read the head (TLS to an https backend is ``tlsproxy.doctor.tlschannel``).

Rules:

1. Every step is bounded (``tlsproxy.doctor.backend``, rule 2); one that runs out raises
   ``TimeoutError`` saying what did not happen in time.
2. Nothing here judges: it returns facts (None or why not, the bytes of a head, a
   ``SocketFile``) for the decision modules.
"""

from __future__ import annotations

import contextlib
import grp
import os
import posixpath
import pwd
import socket
import stat
import threading
import time

from tlsproxy.doctor.backend import (
    CONNECT_TIMEOUT,
    READ_TIMEOUT,
    RESOLVE_TIMEOUT,
    head_complete,
)
from tlsproxy.doctor.socketfile import DENIED, REFUSED, Owner, SocketFile

MAX_HEAD_BYTES = 64 * 1024
_READ_SIZE = 16384


# --- addresses ---------------------------------------------------------------------------------


def resolve(host: str, port: int, timeout: float = RESOLVE_TIMEOUT) -> list[str]:
    """The addresses of ``host``, in resolver order; OSError when it fails or takes too long."""
    # getaddrinfo has no timeout of its own: run it aside and stop waiting (rule 1).
    found: list[str] = []
    failure: list[OSError] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found.extend(str(info[4][0]) for info in infos)
        except OSError as exc:
            failure.append(exc)

    worker = threading.Thread(target=lookup, name="doctor-resolve", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise OSError(f"no answer from the resolver within {timeout:g} s")
    if failure:
        raise failure[0]
    return found


def probe(address: str, port: int, timeout: float = CONNECT_TIMEOUT) -> str | None:
    """None when a TCP connection to ``address``:``port`` opens, else why not, in words."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return None
    except ConnectionRefusedError:
        return "connection refused"
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)


# --- connections -------------------------------------------------------------------------------


class Channel:
    """A connected stream socket (TCP or unix) whose every wait ends by a deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, data: bytes, deadline: float) -> None:
        """Send all of ``data``; TimeoutError at ``deadline`` (a ``time.monotonic()``)."""
        self.sock.settimeout(_left(deadline))
        self.sock.sendall(data)

    def receive(self, deadline: float) -> bytes:
        """The next bytes, or b"" at the end of the stream; TimeoutError at ``deadline``."""
        self.sock.settimeout(_left(deadline))
        return self.sock.recv(_READ_SIZE)

    def close(self) -> None:
        self.sock.close()


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:  # settimeout(0) would make the socket non-blocking, not time out
        raise TimeoutError
    return left


def connect_tcp(address: str, port: int, timeout: float = CONNECT_TIMEOUT) -> Channel:
    """A TCP connection to ``address``:``port``, opened within ``timeout``."""
    return Channel(socket.create_connection((address, port), timeout=timeout))


def connect_unix(path: str, timeout: float = CONNECT_TIMEOUT) -> Channel:
    """A connection to the unix socket at ``path``, opened within ``timeout``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return Channel(sock)


def fetch_head(channel: Channel, request: bytes, *, read_timeout: float = READ_TIMEOUT) -> bytes:
    """Send ``request`` and read until the end of a final response head, within the timeout."""
    deadline = time.monotonic() + read_timeout
    data = b""
    try:
        channel.send(request, deadline)
        while len(data) < MAX_HEAD_BYTES:
            chunk = channel.receive(deadline)
            if not chunk:
                break
            data += chunk
            if head_complete(data):
                break
    except TimeoutError:
        raise TimeoutError(f"no complete response head within {read_timeout:g} s") from None
    return data


# --- unix sockets ------------------------------------------------------------------------------


def inspect_socket(path: str, *, timeout: float = CONNECT_TIMEOUT) -> SocketFile:
    """What is at ``path``, and whether a connection to it opens (``doctor.socketfile``)."""
    user = _user(os.geteuid())
    try:
        info = os.stat(path)
    except PermissionError:
        blocked = _blocked_directory(path)
        return SocketFile(path, user, blocked=blocked, blocked_owner=_owner(blocked))
    except OSError:  # nothing there (or a file where a directory should be)
        directory = posixpath.dirname(path)
        return SocketFile(
            path,
            user,
            missing_directory=_missing_directory(path),
            sockets_nearby=_sockets_in(directory),
        )
    owner = _owner(path)
    if not stat.S_ISSOCK(info.st_mode):
        return SocketFile(path, user, kind=_kind(info.st_mode), owner=owner)
    return SocketFile(path, user, kind="socket", owner=owner, connect=_connect(path, timeout))


def _connect(path: str, timeout: float) -> str | None:
    try:
        connect_unix(path, timeout).close()
    except ConnectionRefusedError:
        return REFUSED
    except PermissionError:
        return DENIED
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _ancestors(path: str) -> list[str]:
    """The directories above ``path``, from the root down."""
    found: list[str] = []
    directory = posixpath.dirname(path)
    while directory not in found:
        found.append(directory)
        directory = posixpath.dirname(directory)
    return found[::-1]


def _blocked_directory(path: str) -> str:
    """The first directory above ``path`` that this user may not search (its parent if none)."""
    for directory in _ancestors(path):
        if not os.access(directory, os.X_OK, effective_ids=os.access in os.supports_effective_ids):
            return directory
    return posixpath.dirname(path)


def _missing_directory(path: str) -> str | None:
    """The first directory above ``path`` that is not there, or None if they all are."""
    return next((d for d in _ancestors(path) if not posixpath.isdir(d)), None)


def _sockets_in(directory: str, limit: int = 5) -> tuple[str, ...]:
    """Up to ``limit`` socket files in ``directory``: the path the user may have meant."""
    found: list[str] = []
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode):
                    found.append(entry.path)
    return tuple(sorted(found)[:limit])


def _owner(path: str) -> Owner | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return Owner(stat.filemode(info.st_mode), _user(info.st_uid), _group(info.st_gid))


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISREG, "regular file"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "named pipe (FIFO)"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    )
    return next((name for test, name in kinds if test(mode)), "special file")


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"

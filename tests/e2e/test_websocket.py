"""WebSockets end to end: a real websocket client, a real twistd tlsproxy, a real websocket server.

The backend is the ``websockets`` library's asyncio server on its own event loop in a thread;
the client is its asyncio client over TLS trusting the development CA, so both ends check the
handshake (Sec-WebSocket-Accept, extensions) and the framing of every byte relayed.

The client is the asyncio one, not ``websockets.sync.client``: the sync client reads its
``ssl.SSLSocket`` in a background thread while the caller writes to it, and CPython's ``ssl``
is not safe for that (python-engineio#461, cpython#137583). Against a server that sends no TLS 1.3
session tickets, as tlsproxy, about one connection in 250 then never sends its request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import random
import socket
import threading
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, TypeVar

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidStatus
from websockets.http11 import Request, Response

from .backend import Backend
from .proxyprocess import ProxyFactory, ProxyProcess
from .rawclient import CLEAN_CLOSE, RawClient, request_bytes

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
WAIT = 5.0  # how long "within a few seconds" is


@dataclass(frozen=True)
class Ended:
    """A websocket the backend saw end: its path, the close code it got, and when."""

    path: str
    code: int | None
    at: float


@dataclass
class WebSocketBackend:
    """A ``websockets`` server on 127.0.0.1:0 in a thread with its own event loop.

    Paths: ``/refuse`` answers 403, ``/plain`` a plain 200 page, ``/close`` closes with 1000
    after one message, ``/burst`` answers a message "N" with N binary messages of 1 MiB,
    anything else echoes every message. Each websocket opened and ended is recorded.
    """

    port: int = 0
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="ws-backend", daemon=True)
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._changed = threading.Condition()
        self._opened: list[tuple[str, dict[str, str]]] = []
        self._ended: list[Ended] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> WebSocketBackend:
        self._thread.start()
        assert self._ready.wait(WAIT), "the websocket backend did not start"
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(WAIT)

    def reset(self) -> None:
        with self._changed:
            self._opened.clear()
            self._ended.clear()

    def opened_paths(self) -> list[str]:
        with self._changed:
            return [path for path, _ in self._opened]

    def headers_of(self, path: str) -> dict[str, str]:
        """The request headers of the first websocket opened on ``path``."""
        with self._changed:
            return next(headers for opened, headers in self._opened if opened == path)

    def next_end(self, path: str, timeout: float = WAIT) -> Ended:
        """How the first websocket on ``path`` ended, waiting up to ``timeout`` seconds.

        By path, because a websocket of the previous test may still be ending.
        """
        with self._changed:
            found = self._changed.wait_for(
                lambda: [e for e in self._ended if e.path == path], timeout
            )
        assert found, f"the backend's websocket on {path} did not end within {timeout}s"
        return found[0]

    def _record(self, opened: tuple[str, dict[str, str]] | None, ended: Ended | None) -> None:
        with self._changed:
            if opened is not None:
                self._opened.append(opened)
            if ended is not None:
                self._ended.append(ended)
            self._changed.notify_all()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server: Server
        async with serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            max_size=None,
            ping_interval=None,
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    @staticmethod
    def _process_request(connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/refuse":
            return connection.respond(HTTPStatus.FORBIDDEN, "no websockets here\n")
        if request.path == "/plain":
            return connection.respond(HTTPStatus.OK, "plain http\n")
        return None

    async def _handle(self, websocket: ServerConnection) -> None:
        path = websocket.request.path if websocket.request else "?"
        headers = dict(websocket.request.headers.raw_items()) if websocket.request else {}
        self._record((path, headers), None)
        try:
            if path == "/close":
                await websocket.recv()
                await websocket.close(1000, "done here")
            elif path == "/burst":
                async for message in websocket:
                    for _ in range(int(message)):
                        await websocket.send(bytes(MiB))
            else:
                async for message in websocket:
                    await websocket.send(message)
        except ConnectionClosed:
            pass  # the client went away: what ``ended`` records
        except Exception as e:  # reported by the fixture, not lost in this thread
            self.errors.append(repr(e))
        finally:
            self._record(None, Ended(path, websocket.close_code, time.monotonic()))


@pytest.fixture(scope="module")
def ws_server() -> Iterator[WebSocketBackend]:
    server = WebSocketBackend().start()
    yield server
    server.stop()


@pytest.fixture
def ws_backend(ws_server: WebSocketBackend) -> Iterator[WebSocketBackend]:
    """The module's websocket backend, its records emptied; fails the test on handler errors."""
    ws_server.reset()
    yield ws_server
    errors, ws_server.errors[:] = list(ws_server.errors), []
    assert not errors, "websocket handler failed: " + ", ".join(errors)


@pytest.fixture(scope="module")
def ws_proxy(
    backend_server: Backend,
    ws_server: WebSocketBackend,
    tmp_path_factory: pytest.TempPathFactory,
    shared_certs_dir: Path,
) -> Iterator[ProxyProcess]:
    """One tlsproxy (default options) in front of the websocket backend, for the module."""
    factory = ProxyFactory(
        backend=backend_server,
        workdir=tmp_path_factory.mktemp("ws-proxy"),
        certs_dir=shared_certs_dir,
    )
    yield factory("--backend", ws_server.url)
    problems = factory.stop_all()
    assert not problems, "\n".join(problems)


@pytest.fixture
def proxy(ws_proxy: ProxyProcess, ws_backend: WebSocketBackend) -> Iterator[ProxyProcess]:
    """The module's proxy, checked alive before and traceback-free after the test."""
    assert ws_proxy.process.poll() is None, "tlsproxy died:\n" + ws_proxy.output()
    start = len(ws_proxy.output())
    yield ws_proxy
    during = ws_proxy.output()[start:]
    assert "Traceback" not in during, "tlsproxy printed a traceback:\n" + during


def ws_connect(proxy: ProxyProcess, path: str = "/", **options: Any) -> connect:
    """A websocket to ``wss://localhost:PORT/path`` through ``proxy``, trusting its CA
    (``async with`` it)."""
    settings: dict[str, Any] = {
        "ssl": proxy.ssl_context(),
        "max_size": None,
        "proxy": None,  # never an HTTPS_PROXY from the environment
        "open_timeout": WAIT,
        "close_timeout": WAIT,
        **options,
    }
    return connect(f"wss://localhost:{proxy.port}{path}", **settings)


T = TypeVar("T")


def run(scenario: Awaitable[T], timeout: float = 60.0) -> T:
    """Run a client scenario on a fresh event loop, bounded by ``timeout`` seconds."""

    async def bounded() -> T:
        return await asyncio.wait_for(scenario, timeout)

    return asyncio.run(bounded())


async def recv(websocket: ClientConnection, timeout: float = WAIT) -> str | bytes:
    """The next message, waiting at most ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        return await websocket.recv()


def upgrade_request(path: str) -> bytes:
    """A websocket opening request in wire form, for a raw TLS client."""
    key = base64.b64encode(os.urandom(16)).decode()
    return request_bytes(
        "GET",
        path,
        headers=[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", "13"),
        ],
    )


def open_sockets(pid: int) -> int:
    """How many sockets process ``pid`` has open."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


def settled_sockets(pid: int) -> int:
    """How many sockets ``pid`` has open, once that count holds still for 0.2 s (at most 5 s)."""
    count = open_sockets(pid)
    for _ in range(25):
        time.sleep(0.2)
        count, previous = open_sockets(pid), count
        if count == previous:
            break
    return count


def wait_for(condition: object, timeout: float = WAIT) -> bool:
    """Poll ``condition()`` until it is true or ``timeout`` passes; its last value."""
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --- messages ---------------------------------------------------------------------------------


def test_thousand_text_messages_echo_in_order(
    proxy: ProxyProcess, ws_backend: WebSocketBackend
) -> None:
    """1,000 text messages sent back to back come back, each intact, in the order sent; the
    backend saw the request as forwarded HTTPS and negotiated permessage-deflate through us."""
    messages = [f"message {i} " + "é" * (i % 50) for i in range(1000)]

    async def scenario() -> tuple[list[str | bytes], str]:
        async with ws_connect(proxy, "/echo") as websocket:
            for message in messages:
                await websocket.send(message)
            echoed = [await recv(websocket) for _ in messages]
            assert websocket.response is not None
            return echoed, websocket.response.headers.get("Sec-WebSocket-Extensions", "")

    echoed, extensions = run(scenario())
    assert echoed == messages
    assert "permessage-deflate" in extensions
    headers = ws_backend.headers_of("/echo")
    assert headers["X-Forwarded-Proto"] == "https"
    assert headers["X-Forwarded-For"] == "127.0.0.1"


def test_binary_messages_of_every_framing_size_echo_intact(proxy: ProxyProcess) -> None:
    """Binary messages at each websocket length boundary (7-bit, 16-bit, 64-bit lengths) come
    back byte for byte."""
    rng = random.Random(6455)
    payloads = [rng.randbytes(size) for size in (0, 1, 125, 126, 127, 65535, 65536, MiB + 3)]

    async def scenario() -> list[str | bytes]:
        async with ws_connect(proxy, "/echo", compression=None) as websocket:
            echoed = []
            for payload in payloads:
                await websocket.send(payload)
                echoed.append(await recv(websocket))
            return echoed

    echoed = run(scenario())
    assert [len(e) for e in echoed] == [len(p) for p in payloads]
    assert echoed == payloads


def test_16_mib_binary_message_echoes_intact(proxy: ProxyProcess) -> None:
    """One 16 MiB binary message goes through and back unchanged (SHA-256), and the websocket
    still works after it."""
    payload = random.Random(16).randbytes(16 * MiB)

    async def scenario() -> tuple[str | bytes, str | bytes]:
        async with ws_connect(proxy, "/echo", compression=None) as websocket:
            await websocket.send(payload)
            echoed = await recv(websocket, timeout=30)
            await websocket.send("after")
            return echoed, await recv(websocket)

    echoed, after = run(scenario())
    assert isinstance(echoed, bytes)
    assert len(echoed) == len(payload)
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
    assert after == "after"


def test_ping_is_answered_with_pong(proxy: ProxyProcess) -> None:
    """A client ping crosses the proxy and the backend's pong comes back for it."""

    async def scenario() -> tuple[float, str | bytes]:
        async with ws_connect(proxy, "/echo") as websocket:
            pong = await websocket.ping(b"are you there")
            async with asyncio.timeout(WAIT):
                latency = await pong
            await websocket.send("still echoing")
            return latency, await recv(websocket)

    latency, echoed = run(scenario())
    assert 0 <= latency < WAIT
    assert echoed == "still echoing"


# --- endings ----------------------------------------------------------------------------------


def test_client_close_is_clean_on_both_sides(
    proxy: ProxyProcess, ws_backend: WebSocketBackend
) -> None:
    """A client that closes with 1000 completes the closing handshake: both sides see 1000."""

    async def scenario() -> int | None:
        async with ws_connect(proxy, "/client-closes") as websocket:
            await websocket.send("bye")
            assert await recv(websocket) == "bye"
            await websocket.close(1000, "finished")
            return websocket.close_code

    assert run(scenario()) == 1000
    assert ws_backend.next_end("/client-closes").code == 1000


def test_backend_close_is_clean_on_both_sides(
    proxy: ProxyProcess, ws_backend: WebSocketBackend
) -> None:
    """A backend that closes with 1000 has the client see 1000 and its reason, cleanly."""

    async def scenario() -> ConnectionClosedOK:
        async with ws_connect(proxy, "/close") as websocket:
            await websocket.send("close now")
            with pytest.raises(ConnectionClosedOK) as closed:
                await recv(websocket)
            return closed.value

    closed = run(scenario())
    assert closed.rcvd is not None
    assert (closed.rcvd.code, closed.rcvd.reason) == (1000, "done here")
    assert ws_backend.next_end("/close").code == 1000


def test_raw_tunnel_close_is_clean(proxy: ProxyProcess) -> None:
    """When the backend ends its websocket, a raw client sees the close frame and then a TLS
    close_notify, not a reset."""
    with RawClient(proxy.connect()) as raw:
        raw.send(upgrade_request("/close"))
        assert raw.read_response().status == 101
        raw.send(b"\x81\x82\x00\x00\x00\x00hi")  # a masked text frame "hi" (mask of zeros)
        raw.send(b"\x88\x82\x00\x00\x00\x00\x03\xe8")  # then our own close, code 1000
        assert raw.wait_closed(WAIT) == CLEAN_CLOSE


def test_client_vanishing_mid_tunnel_frees_both_sides(
    proxy: ProxyProcess, ws_backend: WebSocketBackend
) -> None:
    """A client whose socket closes without a close frame has the backend's websocket end
    within seconds (abnormally, 1006), and the proxy holds no socket for it afterwards."""
    before = settled_sockets(proxy.pid)
    raw = RawClient(proxy.connect())
    raw.send(upgrade_request("/vanish"))
    assert raw.read_response().status == 101
    assert open_sockets(proxy.pid) == before + 2  # the client's and the backend's
    raw.sock.close()  # no close frame, no close_notify
    ended = ws_backend.next_end("/vanish")
    assert ended.code == 1006
    assert wait_for(lambda: open_sockets(proxy.pid) == before), "the proxy kept a socket open"


def test_refused_upgrade_reaches_the_client_and_https_keeps_working(
    proxy: ProxyProcess, ws_backend: WebSocketBackend
) -> None:
    """A backend that refuses the upgrade with 403 has the websocket client see that 403; the
    same connection then serves a plain request, and so do new ones."""

    async def scenario() -> InvalidStatus:
        with pytest.raises(InvalidStatus) as refused:
            async with ws_connect(proxy, "/refuse"):
                pass
        return refused.value

    refused = run(scenario())
    assert refused.response.status_code == 403
    assert refused.response.body == b"no websockets here\n"

    with RawClient(proxy.connect()) as raw:
        raw.send(upgrade_request("/refuse"))
        assert raw.read_response().status == 403
        raw.send(request_bytes("GET", "/plain"))
        again = raw.read_response()
        assert (again.status, again.body) == (200, b"plain http\n")

    with proxy.client() as client:
        plain = client.get("/plain")
    assert (plain.status_code, plain.text) == (200, "plain http\n")
    assert "/refuse" not in ws_backend.opened_paths()


def test_fifty_concurrent_websockets_each_echo_their_own(proxy: ProxyProcess) -> None:
    """50 websockets open at the same time, each exchanging 20 messages, get only their own
    echoes."""
    count = 50

    async def scenario() -> list[list[str | bytes]]:
        all_open = asyncio.Event()
        opened = 0

        async def chat(index: int) -> list[str | bytes]:
            nonlocal opened
            async with ws_connect(proxy, f"/chat/{index}") as websocket:
                opened += 1
                if opened == count:
                    all_open.set()
                await all_open.wait()
                echoed = []
                for n in range(20):
                    await websocket.send(f"{index}:{n}")
                    echoed.append(await recv(websocket))
                return echoed

        return list(await asyncio.gather(*(chat(index) for index in range(count))))

    results = run(scenario())
    assert results == [[f"{index}:{n}" for n in range(20)] for index in range(count)]


def test_back_pressure_does_not_arm_backend_timeout_on_a_tunnel(
    proxy_factory: ProxyFactory, ws_backend: WebSocketBackend
) -> None:
    """A websocket whose client fell behind reading (so the proxy paused the backend, then
    resumed it) and that then stays silent past --backend-timeout is still open: that timeout
    is for HTTP exchanges, not tunnels."""
    proxy = proxy_factory("--backend", ws_backend.url, "--backend-timeout", "1")

    async def scenario() -> str | bytes:
        # max_queue=1: the client stops reading its socket while a message waits to be taken.
        options = {"compression": None, "max_queue": 1, "ping_interval": None}
        async with ws_connect(proxy, "/burst", **options) as websocket:
            await websocket.send("32")
            await asyncio.sleep(1.0)  # not reading: the proxy's writes back up and it pauses
            burst = [await recv(websocket) for _ in range(32)]
            assert burst == [bytes(MiB)] * 32
            await asyncio.sleep(2.5)
            await websocket.send("1")
            return await recv(websocket)

    assert run(scenario()) == bytes(MiB)


# --- --tunnel-idle-timeout --------------------------------------------------------------------


def test_tunnel_idle_timeout_closes_a_silent_websocket(
    proxy_factory: ProxyFactory, ws_backend: WebSocketBackend
) -> None:
    """With --tunnel-idle-timeout 1, a websocket silent both ways is closed within seconds, and
    the backend's side ends too."""
    proxy = proxy_factory("--backend", ws_backend.url, "--tunnel-idle-timeout", "1")

    async def scenario() -> float:
        async with ws_connect(proxy, "/silent", ping_interval=None) as websocket:
            await websocket.send("one")
            assert await recv(websocket) == "one"
            started = time.monotonic()
            with pytest.raises(ConnectionClosed):
                await recv(websocket)
            return time.monotonic() - started

    assert run(scenario()) < 3
    ws_backend.next_end("/silent")


def test_tunnel_idle_timeout_spares_a_talking_websocket(
    proxy_factory: ProxyFactory, ws_backend: WebSocketBackend
) -> None:
    """With --tunnel-idle-timeout 1, a websocket that exchanges a message every 0.3 s stays
    open well past one second."""
    proxy = proxy_factory("--backend", ws_backend.url, "--tunnel-idle-timeout", "1")

    async def scenario() -> list[str | bytes]:
        async with ws_connect(proxy, "/talking", ping_interval=None) as websocket:
            echoed = []
            for n in range(8):
                await websocket.send(f"tick {n}")
                echoed.append(await recv(websocket))
                await asyncio.sleep(0.3)
            return echoed

    assert run(scenario()) == [f"tick {n}" for n in range(8)]


# --- half-close -------------------------------------------------------------------------------


def test_backend_half_close_lets_the_client_finish_sending(proxy_factory: ProxyFactory) -> None:
    """A backend that switches protocols, sends its last bytes and shuts its sending side
    (TCP FIN) still receives what the client sends after that: the client sees the bytes, then
    close_notify, and the tunnel carries its reply to the backend until the client closes."""
    received: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))

    def half_closing_backend() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.settimeout(WAIT)
            head = b""
            while b"\r\n\r\n" not in head:
                head += connection.recv(4096)
            connection.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                b"Upgrade: x-test\r\n\r\nlast words"
            )
            connection.shutdown(socket.SHUT_WR)
            while chunk := connection.recv(4096):
                received.append(chunk)

    thread = threading.Thread(target=half_closing_backend, daemon=True)
    thread.start()
    backend_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    proxy = proxy_factory("--backend", backend_url)
    try:
        with RawClient(proxy.connect()) as raw:
            raw.send(request_bytes("GET", "/", [("Connection", "Upgrade"), ("Upgrade", "x-test")]))
            assert raw.read_response().status == 101
            tail = b""
            while chunk := raw.recv_some():
                tail += chunk
            assert tail == b"last words"
            assert raw.how_closed == CLEAN_CLOSE  # close_notify, not a reset
            raw.sock.sendall(b"the client's reply")
        thread.join(WAIT)
    finally:
        listener.close()
    assert b"".join(received) == b"the client's reply"

"""A real browser trusts tlsproxy once `trust` has run: headless Chromium, a real app (issue 3).

The CA is installed by ``python -m tlsproxy trust`` into a fresh NSS database in a throw-away
``$HOME``, the only place Chromium on Linux looks for local CAs; Chromium runs without
``--ignore-certificate-errors``. The backend is an aiohttp app that serves the page, answers its
``fetch()`` POST and echoes its websocket; the page writes its verdict to ``<body data-result>``.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path

import pytest
from aiohttp import WSMsgType, web

from .backend import Backend
from .browser import Chromium
from .proxyprocess import ProxyFactory, ProxyProcess, free_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        shutil.which("chromium") is None or shutil.which("certutil") is None,
        reason="chromium or certutil not installed "
        "(apt-get install chromium libnss3-tools; .ci/run does it)",
    ),
]

REPO = Path(__file__).resolve().parents[2]
PAGE = Path(__file__).with_name("browser_page.html")

# The protocol the page must be served over. False: whatever tlsproxy's ALPN picks when offered
# h2 and http/1.1 (http/1.1 until HTTP/2 is served, h2 from then on, so the test keeps up on its
# own). True: h2, strictly, whatever ALPN says.
REQUIRE_H2 = False


class EchoApp:
    """The backend: GET / is the page, POST /echo reverses the body, /ws echoes messages.

    It runs on 127.0.0.1:0 in a thread with its own event loop, and records what it served.
    """

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.forwarded_protos: list[str] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(self._app())
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._page)
        app.router.add_post("/echo", self._echo)
        app.router.add_get("/ws", self._websocket)
        return app

    def _record(self, request: web.Request, what: str) -> None:
        self.seen.append(what)
        self.forwarded_protos.append(request.headers.get("X-Forwarded-Proto", ""))

    async def _page(self, request: web.Request) -> web.Response:
        self._record(request, "GET /")
        return web.Response(text=PAGE.read_text(), content_type="text/html")

    async def _echo(self, request: web.Request) -> web.Response:
        body = await request.text()
        self._record(request, f"POST /echo {body}")
        proto = request.headers.get("X-Forwarded-Proto", "")
        return web.json_response({"reversed": body[::-1], "forwarded_proto": proto})

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        websocket = web.WebSocketResponse()
        await websocket.prepare(request)
        self._record(request, "WS /ws")
        async for message in websocket:
            if message.type is WSMsgType.TEXT:
                self.seen.append(f"WS message {message.data}")
                await websocket.send_str(f"echo: {message.data}")
        return websocket

    def _run(self, coroutine: Coroutine[object, object, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _listen(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])

    def start(self) -> EchoApp:
        """Serve on 127.0.0.1:0; ``port`` is set on return."""
        self._thread.start()
        self._run(self._listen())
        return self

    def stop(self) -> None:
        """Close every connection and end the loop's thread."""
        self._run(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@pytest.fixture(scope="module")
def echo_app() -> Iterator[EchoApp]:
    """The aiohttp backend of this module."""
    app = EchoApp().start()
    yield app
    app.stop()


def loopback_listen_args() -> list[str]:
    """``--interface`` for 127.0.0.1 and ::1 (where this host has it) and a port free on both."""
    for _ in range(20):
        port = free_port("127.0.0.1")
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
                probe.bind(("::1", port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                continue
            return ["--interface", "127.0.0.1", "--port", str(port)]  # no IPv6 loopback here
        return ["--interface", "127.0.0.1", "--interface", "::1", "--port", str(port)]
    raise AssertionError("no port free on both loopbacks")


@pytest.fixture(scope="module")
def site(
    echo_app: EchoApp, backend_server: Backend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    """tlsproxy in front of the app on both loopbacks, as users run it, with its own CA."""
    factory = ProxyFactory(
        backend=backend_server,  # unused: --backend names the app
        workdir=tmp_path_factory.mktemp("browser-proxy"),
        certs_dir=tmp_path_factory.mktemp("browser-certs"),
    )
    # Chromium resolves localhost to ::1 and 127.0.0.1; like tlsproxy's default, answer on both.
    yield factory("--backend", f"http://127.0.0.1:{echo_app.port}", *loopback_listen_args())
    problems = factory.stop_all()
    assert not problems, "\n".join(problems)


@pytest.fixture
def app(echo_app: EchoApp, site: ProxyProcess) -> Iterator[EchoApp]:
    """The app, with nothing recorded yet; fails the test if the proxy printed a traceback."""
    echo_app.seen.clear()
    echo_app.forwarded_protos.clear()
    start = len(site.output())
    yield echo_app
    during = site.output()[start:]
    assert "Traceback" not in during, "tlsproxy printed a traceback:\n" + during


def alpn_choice(proxy: ProxyProcess) -> str:
    """The protocol tlsproxy selects for a client offering h2 and http/1.1, as Chromium does."""
    context = ssl.create_default_context(cafile=str(proxy.ca_path))
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        proxy.connect_tcp() as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return tls.selected_alpn_protocol() or "http/1.1"


def url(proxy: ProxyProcess) -> str:
    """The URL a user types: ``https://localhost:PORT/``."""
    return f"https://localhost:{proxy.port}/"


def test_trusted_page_posts_and_opens_a_websocket_in_chromium(
    site: ProxyProcess, app: EchoApp, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """With the CA from `trust` in its NSS database, Chromium loads the page, POSTs, and echoes.

    The page comes over the protocol tlsproxy's ALPN chooses (h2 once offered), and its
    websocket works on an h2 page too: Chromium opens it on an HTTP/1.1 connection of its own.
    """
    home = tmp_path / "home"
    home.mkdir()
    assert site.ca_path is not None
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tlsproxy",
            "trust",
            "--certs-dir",
            str(site.ca_path.parent),
            "--no-system",
            "--nss-db",
            str(home / ".pki" / "nssdb"),
        ],
        env=dict(os.environ, HOME=str(home), PYTHONPATH=str(REPO)),
        cwd=home,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "installed: as tlsproxy-dev-ca-" in done.stdout, done.stdout
    expected = "h2" if REQUIRE_H2 else alpn_choice(site)

    with Chromium(home=home, profile=tmp_path / "profile") as browser:
        error = browser.navigate(url(site))
        assert error is None, f"{error}\n{browser.log()}"
        result = browser.wait_for(
            "document.body && document.body.dataset.result !== 'pending' "
            "&& document.body.dataset.result"
        )
        protocol = browser.evaluate("document.body.dataset.protocol")
        shot = browser.screenshot(tmp_path / "trusted.png")

    record_property("nextHopProtocol", protocol)
    record_property("screenshot", str(shot))
    print(f"nextHopProtocol={protocol!r} (expected {expected!r}); screenshot {shot}")
    assert result == "ok", f"page says {result!r}; screenshot {shot}"
    if protocol or REQUIRE_H2:  # an empty nextHopProtocol means the browser did not say
        assert protocol == expected, f"page served over {protocol!r}, expected {expected!r}"
    posted = [s.removeprefix("POST /echo ") for s in app.seen if s.startswith("POST /echo ")]
    assert len(posted) == 1, app.seen
    assert app.seen == ["GET /", f"POST /echo {posted[0]}", "WS /ws", f"WS message {posted[0]}"]
    assert app.forwarded_protos == ["https", "https", "https"]


def test_untrusted_ca_fails_in_chromium(site: ProxyProcess, app: EchoApp, tmp_path: Path) -> None:
    """With a fresh NSS database that lacks the CA, Chromium refuses the page: nothing is sent."""
    home = tmp_path / "home"
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True)
    subprocess.run(
        ["certutil", "-N", "-d", f"sql:{db}", "--empty-password"], check=True, timeout=30
    )

    with Chromium(home=home, profile=tmp_path / "profile") as browser:
        error = browser.navigate(url(site))
        result = browser.evaluate("document.body && document.body.dataset.result")
        shot = browser.screenshot(tmp_path / "untrusted.png")

    assert error == "net::ERR_CERT_AUTHORITY_INVALID", f"{error!r}; screenshot {shot}"
    assert result != "ok"
    assert app.seen == []

"""Headless Chromium, driven over the DevTools protocol: navigate, read the page, screenshot.

Rules:
1. Chromium is the distribution's ``chromium``, started with a fresh profile and the given
   ``$HOME``: on Linux its only store of local CAs is ``$HOME/.pki/nssdb``. Certificate errors are
   never ignored (no ``--ignore-certificate-errors``); a page it distrusts fails to load.
2. DevTools listens on an ephemeral 127.0.0.1 port, read from the profile's
   ``DevToolsActivePort`` file; commands go over one websocket to the first page target.
3. Every wait is bounded (``WAIT`` seconds at most). Chromium runs in its own session, so
   ``close()`` ends exactly the process group it started (browser, zygote, renderers): SIGTERM,
   then SIGKILL if the browser is still there after 5 seconds. (The crash handler leaves the
   group, and exits with the browser.)
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from websockets.sync.client import ClientConnection, connect

# The longest any single wait here may take.
WAIT = 20.0

FLAGS = (
    "--headless",
    "--no-sandbox",  # tests run as root in CI containers, where the sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1000,700",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


class CDPError(Exception):
    """Chromium answered a DevTools command with an error."""


class Chromium:
    """One headless Chromium process and a DevTools session on its first page."""

    def __init__(self, *, home: Path, profile: Path) -> None:
        program = shutil.which("chromium")
        assert program is not None, "chromium is not installed"
        self.profile = profile
        self.log_path = profile.parent / f"{profile.name}.log"
        profile.mkdir(parents=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [program, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                env=dict(os.environ, HOME=str(home)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._ids = itertools.count(1)
        self._closing = contextlib.ExitStack()
        self._session: ClientConnection | None = None
        try:
            self._session = self._closing.enter_context(
                connect(self._page_websocket(), max_size=None, open_timeout=WAIT)
            )
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Chromium:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def log(self) -> str:
        """What Chromium printed so far (for failure messages)."""
        return self.log_path.read_text(errors="replace")

    def _page_websocket(self) -> str:
        """The DevTools websocket URL of the first page, once Chromium has published its port."""
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + WAIT
        while not active.exists() or not active.read_text().strip():
            if self.process.poll() is not None:
                raise AssertionError(
                    f"chromium exited with {self.process.returncode}:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"chromium published no DevTools port in {WAIT}s:\n{self.log()}"
                )
            time.sleep(0.05)
        port = int(active.read_text().split()[0])
        url = f"http://127.0.0.1:{port}/json/list"
        with urllib.request.urlopen(url, timeout=WAIT) as answer:
            targets = json.load(answer)
        pages = [t for t in targets if t["type"] == "page"]
        assert pages, f"chromium has no page target: {targets!r}"
        return str(pages[0]["webSocketDebuggerUrl"])

    def call(self, method: str, timeout: float = WAIT, **params: object) -> dict[str, Any]:
        """Send one DevTools command and return its result (events in between are dropped)."""
        assert self._session is not None
        ident = next(self._ids)
        self._session.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer to {method} within {timeout}s")
            message = json.loads(self._session.recv(timeout=remaining))
            if message.get("id") != ident:
                continue
            if "error" in message:
                raise CDPError(f"{method}: {message['error']}")
            result: dict[str, Any] = message["result"]
            return result

    def navigate(self, url: str) -> str | None:
        """Load ``url`` in the page; Chromium's network error (``net::ERR_...``) or None."""
        result = self.call("Page.navigate", url=url)
        error = result.get("errorText")
        return str(error) if error else None

    def evaluate(self, expression: str) -> object:
        """The value of a JavaScript expression in the page (JSON-serialisable values only)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise CDPError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = WAIT) -> object:
        """Poll ``expression`` until it is truthy; its value, or the last falsy one at timeout."""
        deadline = time.monotonic() + min(timeout, WAIT)
        while True:
            value = self.evaluate(expression)
            if value or time.monotonic() >= deadline:
                return value
            time.sleep(0.1)

    def screenshot(self, path: Path) -> Path:
        """Save a PNG of the page as it is rendered now."""
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        """Close the DevTools session and end the process group this object started."""
        self._session = None
        with contextlib.suppress(Exception):  # a dead browser cannot answer the closing handshake
            self._closing.close()
        if self.process.poll() is not None:
            return
        # start_new_session made Chromium the leader of its own group, whose id is our child's
        # PID: the group holds exactly what we started (browser, zygote, renderers).
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

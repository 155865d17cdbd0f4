"""systemd: socket activation and sd_notify, with tlsproxy run by ``systemd-socket-activate``.

``systemd-socket-activate`` (Debian package ``systemd``) binds the port, waits for the first
connection, then execs tlsproxy in its own process with the socket as fd 3 and ``LISTEN_FDS``,
``LISTEN_PID`` and ``LISTEN_FDNAMES`` set, as systemd does for a ``.socket`` unit. The test plays
systemd's notify socket itself: a unix datagram socket it binds and reads.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tlsproxy.tls.devca import ensure_dev_certificates

from .backend import Backend
from .proxyprocess import (
    LISTENING,
    STOP_GRACE,
    TWISTD,
    free_port,
    stop_process,
    trusting_context,
)

pytestmark = pytest.mark.e2e

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")
FDNAME = "https"


class ActivatedProxy:
    """tlsproxy under ``systemd-socket-activate`` on 127.0.0.1:``port``, output captured."""

    def __init__(self, args: list[str], *, port: int, notify_socket: Path, cwd: Path) -> None:
        assert SOCKET_ACTIVATE is not None
        self.port = port
        self._output = bytearray()
        self._lock = threading.Lock()
        # systemd-socket-activate passes only the variables named with -E (plus PATH, HOME,
        # TERM and the LISTEN_* ones); systemd itself always sets LISTEN_FDNAMES.
        self.process = subprocess.Popen(
            [
                SOCKET_ACTIVATE,
                f"--listen=127.0.0.1:{port}",
                f"--fdname={FDNAME}",
                f"--setenv=NOTIFY_SOCKET={notify_socket}",
                "--setenv=PYTHONUNBUFFERED=1",
                *TWISTD,
                *args,
            ],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._reader = threading.Thread(target=self._read, name="activated-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in iter(self.process.stdout.readline, b""):
            with self._lock:
                self._output += line

    def output(self) -> str:
        """Everything systemd-socket-activate and then tlsproxy wrote so far."""
        with self._lock:
            return self._output.decode("utf-8", "replace")

    def wait_for_output(self, text: str, timeout: float = 10.0) -> bool:
        """Whether ``text`` appeared in the output within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if time.monotonic() >= deadline or self.process.poll() is not None:
                return text in self.output()
            time.sleep(0.02)
        return True

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; only this PID."""
        stop_process(self.process, self._reader)


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[tuple[Path, socket.socket]]:
    """systemd's notify socket, played by the test: (its path, the bound datagram socket)."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    yield path, sock
    sock.close()


def next_message(sock: socket.socket, timeout: float = 20.0) -> dict[str, str]:
    """The next sd_notify datagram, as its fields; fails after ``timeout`` seconds."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(4096)
    except TimeoutError:
        pytest.fail(f"no sd_notify datagram within {timeout}s")
    return dict(line.split("=", 1) for line in data.decode().split("\n"))


def message_with(sock: socket.socket, key: str) -> dict[str, str]:
    """The next datagram that sets ``key``, skipping STATUS refreshes sent meanwhile."""
    while True:
        message = next_message(sock)
        if key in message:
            return message
        assert set(message) == {"STATUS"}, f"unexpected datagram before {key}: {message}"


@pytest.mark.skipif(
    SOCKET_ACTIVATE is None,
    reason="systemd-socket-activate not found: apt-get install -y systemd",
)
@pytest.mark.parametrize(
    "listen", ["systemd:domain=INET:index=0", f"systemd:domain=INET:name={FDNAME}"]
)
def test_socket_activation_and_notify(
    listen: str,
    backend: Backend,
    notify: tuple[Path, socket.socket],
    workdir: Path,
    shared_certs_dir: Path,
) -> None:
    """An inherited socket serves HTTPS; systemd hears READY, RELOADING/READY and STOPPING.

    The first request is sent before tlsproxy exists: it waits in the inherited socket's
    backlog, starts tlsproxy, and is answered through the adopted socket.
    """
    notify_path, notify_sock = notify
    # The client must trust the CA before tlsproxy runs (the first request starts it): make it
    # now, with the code tlsproxy uses; tlsproxy then reuses it.
    ca_path = ensure_dev_certificates(shared_certs_dir, [], now=datetime.now(UTC)).ca_cert_path
    port = free_port()
    proxy = ActivatedProxy(
        ["--backend", backend.url, "--listen", listen, "--certs-dir", str(shared_certs_dir)],
        port=port,
        notify_socket=notify_path,
        cwd=workdir,
    )
    try:
        assert proxy.wait_for_output(f"Listening on 127.0.0.1:{port}"), proxy.output()
        notify_sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            notify_sock.recv(4096)  # nothing is running yet, so nothing is ready

        context = trusting_context(ca_path)
        with httpx.Client(verify=context, timeout=30.0) as client:
            response = client.get(f"https://localhost:{port}/activated?x=1")
        assert response.status_code == 200, proxy.output()
        assert backend.wait_for_requests(1)[0].target == b"/activated?x=1"

        ready = next_message(notify_sock)
        assert ready.get("READY") == "1", ready
        assert ready["STATUS"].startswith(f"serving https://127.0.0.1:{port}/;"), ready
        # READY=1 is sent after the banner that names the adopted socket.
        found = LISTENING.findall(proxy.output())
        assert found == [("127.0.0.1", str(port))], proxy.output()
        # tlsproxy replaced systemd-socket-activate in the same process (exec, no fork).
        assert "tlsproxy" in Path(f"/proc/{proxy.process.pid}/cmdline").read_text()

        proxy.process.send_signal(signal.SIGHUP)
        reloading = message_with(notify_sock, "RELOADING")
        assert reloading["RELOADING"] == "1"
        assert int(reloading["MONOTONIC_USEC"]) > 0
        assert message_with(notify_sock, "READY")["READY"] == "1"

        proxy.process.send_signal(signal.SIGTERM)
        assert message_with(notify_sock, "STOPPING")["STOPPING"] == "1"
        assert proxy.process.wait(STOP_GRACE) == 0, proxy.output()
        assert "Traceback" not in proxy.output(), proxy.output()
    finally:
        proxy.stop()
        with contextlib.suppress(OSError):
            notify_sock.close()

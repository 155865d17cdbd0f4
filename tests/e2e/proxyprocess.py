"""The tlsproxy under test: a real ``twistd -n tlsproxy`` subprocess and clients that trust it.

Rules:
1. The proxy is started exactly as a user would start it (``twistd -n --pidfile= tlsproxy ...``)
   from a temporary working directory, with stdout and stderr captured by a reader thread.
2. It is ready when it has printed one ``listening on https://HOST:PORT/`` line per listener;
   the port comes from that line (tests listen on port 0). Waiting is bounded.
3. Stopping is SIGTERM, then SIGKILL after 5 seconds, and only ever for the PID started here.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from .backend import Backend

TWISTD = [
    sys.executable,
    "-c",
    "from twisted.scripts.twistd import run; run()",
    "-n",
    "--pidfile=",
    "tlsproxy",
]

LISTENING = re.compile(r"listening on https://(\[[0-9A-Fa-f:.]+\]|[^/\s:\[\]]+):(\d+)/")

READY_TIMEOUT = 20.0
STOP_GRACE = 5.0


def expected_listeners(args: tuple[str, ...] | list[str]) -> int:
    """How many ``listening on`` lines the given arguments should produce."""
    listens = sum(1 for arg in args if arg == "--listen" or arg.startswith("--listen="))
    if listens:
        return listens
    interfaces = sum(1 for arg in args if arg == "--interface" or arg.startswith("--interface="))
    return interfaces or 2


def trusting_context(ca_path: Path | None, *, alpn: bool = True) -> ssl.SSLContext:
    """A client TLS context that trusts ``ca_path`` (or nothing, when None) and offers http/1.1."""
    if ca_path is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=str(ca_path))
    if alpn:
        context.set_alpn_protocols(["http/1.1"])
    return context


class ProxyProcess:
    """One running tlsproxy and the output it has produced so far."""

    def __init__(self, args: list[str], *, cwd: Path, ca_path: Path | None) -> None:
        self.args = args
        self.cwd = cwd
        self.ca_path = ca_path
        self.listeners: list[tuple[str, int]] = []
        self._output = bytearray()
        self._lock = threading.Lock()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [*TWISTD, *args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, name="proxy-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in iter(self.process.stdout.readline, b""):
            with self._lock:
                self._output += line

    @property
    def pid(self) -> int:
        """The process id of the twistd subprocess."""
        return self.process.pid

    def output(self) -> str:
        """Everything the proxy wrote to stdout and stderr so far."""
        with self._lock:
            return self._output.decode("utf-8", "replace")

    def wait_ready(self, count: int, timeout: float = READY_TIMEOUT) -> None:
        """Wait for ``count`` listening lines; fail with the output if they do not come."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = LISTENING.findall(self.output())
            if len(found) >= count:
                self.listeners = [(host.strip("[]"), int(port)) for host, port in found]
                return
            if self.process.poll() is not None:
                time.sleep(0.1)  # let the reader drain the last lines
                raise AssertionError(
                    f"tlsproxy exited with status {self.process.returncode} before listening:\n"
                    + self.output()
                )
            time.sleep(0.02)
        raise AssertionError(
            f"tlsproxy printed {len(LISTENING.findall(self.output()))} of {count} "
            f"'listening on https://' lines within {timeout}s:\n" + self.output()
        )

    def wait_for_output(self, pattern: str, timeout: float = 15.0) -> re.Match[str] | None:
        """Wait until the output matches ``pattern`` (a regex); the match or None."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.output())
            if match or time.monotonic() >= deadline:
                return match
            time.sleep(0.05)

    @property
    def host(self) -> str:
        """The address of the first listener."""
        return self.listeners[0][0]

    @property
    def port(self) -> int:
        """The port of the first listener."""
        return self.listeners[0][1]

    @property
    def url(self) -> str:
        """``https://HOST:PORT`` of the first listener, without a trailing slash."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    def ssl_context(self, *, alpn: bool = True) -> ssl.SSLContext:
        """A client context trusting this proxy's CA."""
        return trusting_context(self.ca_path, alpn=alpn)

    def client(self, *, timeout: float = 10.0) -> httpx.Client:
        """An HTTP/1.1 httpx client for this proxy (base_url set, CA trusted)."""
        return httpx.Client(
            base_url=self.url, verify=self.ssl_context(), http1=True, http2=False, timeout=timeout
        )

    def connect_tcp(self, timeout: float = 10.0) -> socket.socket:
        """A plain TCP connection to the first listener."""
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def refuses_connections(self, timeout: float) -> bool:
        """Whether new TCP connections are refused within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.connect_tcp(1).close()
            except ConnectionRefusedError:
                return True
            time.sleep(0.05)
        return False

    def connect(
        self, *, timeout: float = 10.0, server_hostname: str = "localhost"
    ) -> ssl.SSLSocket:
        """A TLS connection to the first listener, handshake done."""
        sock = self.connect_tcp(timeout)
        try:
            # Ragged EOFs must raise, so that an abort is told apart from a clean close_notify.
            return self.ssl_context().wrap_socket(
                sock, server_hostname=server_hostname, suppress_ragged_eofs=False
            )
        except BaseException:
            sock.close()
            raise

    def rss_bytes(self) -> int:
        """The resident set size of the proxy process."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc status")

    def stop(self) -> str:
        """SIGTERM, then SIGKILL after a grace period; the complete output."""
        stop_process(self.process, self._reader)
        return self.output()


@dataclass(frozen=True)
class Finished:
    """The result of a tlsproxy run that was expected to exit by itself."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """stdout and stderr together."""
        return self.stdout + self.stderr

    def error_lines(self) -> list[str]:
        """The non-empty lines of stderr."""
        return [line for line in self.stderr.splitlines() if line.strip()]


def run_to_exit(args: list[str], *, cwd: Path, timeout: float = READY_TIMEOUT) -> Finished:
    """Run tlsproxy expecting it to exit on its own (bad flags); fail if it starts serving."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [*TWISTD, *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = process.communicate(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        raise AssertionError(
            f"tlsproxy {args!r} kept running instead of exiting:\n"
            + (stdout + stderr).decode("utf-8", "replace")
        ) from None
    return Finished(
        process.returncode, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace")
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for flags that need a fixed port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# Listen on an ephemeral loopback port unless a test chooses its own listeners.
DEFAULT_LISTEN = ("--listen", "tcp:0:interface=127.0.0.1")


def _has_flag(args: tuple[str, ...], *flags: str) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for arg in args for flag in flags)


def _flag_value(args: tuple[str, ...], flag: str) -> str | None:
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


class ProxyFactory:
    """Starts tlsproxy subprocesses for one test and stops them all at teardown."""

    def __init__(self, *, backend: Backend, workdir: Path, certs_dir: Path) -> None:
        self.backend = backend
        self.workdir = workdir
        self.certs_dir = certs_dir
        self.started: list[ProxyProcess] = []

    def __call__(
        self,
        *args: str,
        with_backend: bool = True,
        trust: Path | None = None,
        default_certs_dir: bool = False,
        wait: bool = True,
    ) -> ProxyProcess:
        """Start ``twistd -n tlsproxy`` with ``args`` and wait until every listener is up.

        Unless given in ``args``: ``--backend`` is this test's backend, ``--listen`` is one
        ephemeral 127.0.0.1 port, and ``--certs-dir`` is the shared development CA directory
        (or nothing, with ``default_certs_dir``, so that ./certs in the working directory is used).
        Clients trust ``trust`` when ``--cert`` is given (nothing is verified when it is None),
        else the development CA in the certs directory.
        """
        argv = list(args)
        if with_backend and not _has_flag(args, "--backend"):
            argv += ["--backend", self.backend.url]
        if not _has_flag(args, "--listen", "--port", "--interface"):
            argv += DEFAULT_LISTEN
        ca_path: Path | None = trust
        if not _has_flag(args, "--cert"):
            certs_dir = _flag_value(args, "--certs-dir")
            if default_certs_dir:
                ca_path = self.workdir / "certs" / "ca.pem"
            elif certs_dir is None:
                argv += ["--certs-dir", str(self.certs_dir)]
                ca_path = self.certs_dir / "ca.pem"
            else:
                ca_path = self.workdir / certs_dir / "ca.pem"
        proxy = ProxyProcess(argv, cwd=self.workdir, ca_path=ca_path)
        self.started.append(proxy)
        if wait:
            proxy.wait_ready(expected_listeners(tuple(argv)))
        return proxy

    def stop_all(self) -> list[str]:
        """Stop every proxy started; the problems found in their output."""
        problems = []
        for proxy in self.started:
            output = proxy.stop()
            if "Traceback" in output:
                problems.append(f"tlsproxy {proxy.args!r} printed a traceback:\n{output}")
        return problems


def stop_process(process: subprocess.Popen[bytes], reader: threading.Thread) -> None:
    """SIGTERM ``process`` (only that PID), SIGKILL after a grace period; end its output reader."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_GRACE)
    reader.join(STOP_GRACE)
    with contextlib.suppress(OSError):
        if process.stdout is not None:
            process.stdout.close()

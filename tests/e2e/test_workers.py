"""--workers: a real twistd supervisor and its worker processes, seen from outside.

Which worker holds a connection is read from /proc (the socket inodes of each process), never
from responses: a worker's identity is not something clients are told.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from tlsproxy.tls.devca import ensure_dev_certificates

from .backend import (
    Backend,
    slow_backend,
)
from .pki import issue, write_pair
from .proxyprocess import (
    STOP_GRACE,
    TWISTD,
    ProxyFactory,
    ProxyProcess,
    free_port,
    run_to_exit,
    trusting_context,
)
from .rawclient import CLEAN_CLOSE, RawClient, request_bytes
from .test_systemd import FDNAME, SOCKET_ACTIVATE, ActivatedProxy, message_with, next_message

pytestmark = pytest.mark.e2e

SHARED = re.compile(r"(\d+) worker processes share these listeners \(pids ([\d, ]+)\)")
CLF = re.compile(r'^127\.0\.0\.1 - - \[[^\]]+\] "GET /(a+)\?n=(\d+) HTTP/1\.1" 200 \d+ "-" "-"$')


def worker_pids(output: str) -> list[int]:
    """The workers' pids, by worker number, from the banner."""
    match = SHARED.search(output)
    assert match is not None, output
    return [int(pid) for pid in match.group(2).split(", ")]


def started_worker_pids(proxy: ProxyProcess) -> list[int]:
    """:func:`worker_pids`, once the banner's line has arrived (it follows the listeners')."""
    assert proxy.wait_for_output(SHARED.pattern), proxy.output()
    return worker_pids(proxy.output())


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited and been reaped (or is a zombie waiting for it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def _sockets(pid: int) -> set[str]:
    """The inodes of the sockets ``pid`` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _tcp(port: int, state: str) -> set[str]:
    """Inodes of IPv4 TCP sockets on local ``port`` in ``state`` (01 established, 0A listen)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port:
            inodes.add(fields[9])
    return inodes


def established(port: int, pids: list[int]) -> list[int]:
    """How many client connections to ``port`` each of ``pids`` holds."""
    connections = _tcp(port, "01")
    return [len(_sockets(pid) & connections) for pid in pids]


def listening(port: int, pid: int) -> set[str]:
    """The listening sockets on ``port`` that ``pid`` holds."""
    return _sockets(pid) & _tcp(port, "0A")


def served_der(proxy: ProxyProcess) -> bytes:
    with proxy.connect() as sock:
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_two_workers_share_connections_one_access_log_and_one_metrics_page(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    """Both workers (children of twistd) serve: each has its own listening socket and holds
    some of 20 keep-alive connections; 100 requests with long targets give 100 whole lines in
    the shared access log, and the supervisor's metrics page counts all of them."""
    access_log = tmp_path / "access.log"
    proxy = proxy_factory(
        "--workers",
        "2",
        "--access-log",
        str(access_log),
        "--metrics-listen",
        "tcp:0:interface=127.0.0.1",
    )
    pids = started_worker_pids(proxy)
    assert len(set(pids)) == 2
    assert [parent_of(pid) for pid in pids] == [proxy.pid, proxy.pid]
    sockets = [listening(proxy.port, pid) for pid in pids]
    assert all(sockets)
    assert not sockets[0] & sockets[1]  # SO_REUSEPORT: one socket each, not a shared one

    padding = "a" * 3000  # lines of ~3 kB: several per flush, so a cut line would show
    clients = [RawClient(proxy.connect()) for _ in range(20)]
    try:
        for round_ in range(5):
            for index, client in enumerate(clients):
                client.send(request_bytes(target=f"/{padding}?n={round_ * 20 + index}"))
            for client in clients:
                assert client.read_response().status == 200
        held = established(proxy.port, pids)
        assert sum(held) == 20
        assert min(held) > 0, f"connections per worker: {held}"
    finally:
        for client in clients:
            client.close()

    match = proxy.wait_for_output(r"metrics on (http://127\.0\.0\.1:\d+/metrics)")
    assert match is not None, proxy.output()
    deadline = time.monotonic() + 10
    while True:
        with urllib.request.urlopen(match.group(1), timeout=10) as answer:  # noqa: S310
            page = answer.read().decode()
        counted = re.search(r'^tlsproxy_requests_total\{status_class="2xx"\} (\d+)$', page, re.M)
        accepted = re.search(r"^tlsproxy_connections_accepted_total (\d+)$", page, re.M)
        if counted and accepted and (counted.group(1), accepted.group(1)) == ("100", "20"):
            break
        assert time.monotonic() < deadline, page
        time.sleep(0.2)

    deadline = time.monotonic() + 10
    while len(lines := access_log.read_text().splitlines()) < 100:
        assert time.monotonic() < deadline, f"{len(lines)} of 100 lines logged"
        time.sleep(0.2)
    numbers = []
    for line in lines:
        found = CLF.match(line)
        assert found is not None, line[:200]
        assert found.group(1) == padding, line[:200]
        numbers.append(int(found.group(2)))
    assert sorted(numbers) == list(range(100))


def test_sighup_reaches_every_worker(
    proxy_factory: ProxyFactory, backend: Backend, tmp_path: Path
) -> None:
    """After SIGHUP to the supervisor, each worker logs its reload, and many fresh handshakes
    (spread over both workers' sockets) all get the new certificate."""
    ca = issue("tlsproxy workers test CA", ca=True)
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(ca.cert_pem())
    cert, key = write_pair(tmp_path, issue("first.test", issuer=ca))
    proxy = proxy_factory("--workers", "2", "--cert", str(cert), "--key", str(key), trust=ca_path)
    first = served_der(proxy)
    second = issue("second.test", issuer=ca)
    write_pair(tmp_path, second)
    os.kill(proxy.pid, signal.SIGHUP)
    for number in (1, 2):
        found = proxy.wait_for_output(rf"worker {number}: reloaded certificates: ", timeout=10)
        assert found is not None, proxy.output()
    new = second.cert.public_bytes(serialization.Encoding.DER)
    seen = {served_der(proxy) for _ in range(30)}
    assert seen == {new} != {first}
    assert proxy.output().count("reloaded certificates: ") == 2


def test_sigterm_drains_every_worker_then_everything_exits_0(
    proxy_factory: ProxyFactory, backend: Backend
) -> None:
    """SIGTERM to the supervisor: new connections are refused, an idle one closes, a slow
    in-flight response completes; then the supervisor exits 0 and no worker is left."""
    go_on = slow_backend(backend)
    proxy = proxy_factory("--workers", "2")
    pids = started_worker_pids(proxy)
    try:
        with RawClient(proxy.connect()) as idle, RawClient(proxy.connect()) as busy:
            idle.send(request_bytes(target="/first"))
            assert idle.read_response().status == 200
            busy.send(request_bytes(target="/slow"))
            backend.wait_for_requests(2)
            proxy.process.send_signal(signal.SIGTERM)
            assert idle.wait_closed(3) == CLEAN_CLOSE
            assert proxy.refuses_connections(3.0), "still accepting after SIGTERM"
            assert proxy.process.poll() is None  # the slow exchange is still draining
            go_on.set()
            answer = busy.read_response()
            assert (answer.status, answer.body) == (200, b"slow but complete")
            assert answer.header("Connection") == [b"close"]
    finally:
        go_on.set()
    assert proxy.process.wait(10) == 0, proxy.output()
    assert all(gone(pid) for pid in pids)
    # Whichever worker(s) held the idle and the busy connection drained them.
    drained = re.findall(r"worker \d: draining (\d+) connection", proxy.output())
    assert sum(int(n) for n in drained) == 2, proxy.output()


@pytest.mark.parametrize("holder", ["plain", "reuseport"])
def test_a_busy_port_fails_once_with_the_usual_line(
    holder: str, workdir: Path, shared_certs_dir: Path
) -> None:
    """A port taken (even by a program that would share it with SO_REUSEPORT) stops startup
    with the one line a single process prints, status 2, before any worker starts."""
    with socket.socket() as taken:
        if holder == "reuseport":
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_to_exit(
            [
                "--backend",
                "http://127.0.0.1:9",
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                "--workers",
                "2",
                "--certs-dir",
                str(shared_certs_dir),
            ],
            cwd=workdir,
        )
    assert done.returncode == 2, done.output
    assert done.error_lines() == [
        f"tlsproxy: error: cannot listen on tcp:{port}:interface=127.0.0.1: address already "
        "in use; pick another --port or stop the program using it"
    ]
    assert "worker" not in done.output


def test_a_listener_that_cannot_open_fails_once_with_the_usual_line(
    workdir: Path, shared_certs_dir: Path
) -> None:
    """--listen systemd: outside systemd is the single-process error, status 2, no worker."""
    done = run_to_exit(
        [
            "--backend",
            "http://127.0.0.1:9",
            "--listen",
            "systemd:domain=INET:index=0",
            "--workers",
            "2",
            "--certs-dir",
            str(shared_certs_dir),
        ],
        cwd=workdir,
    )
    assert done.returncode == 2, done.output
    [line] = done.error_lines()
    assert line.startswith("tlsproxy: error: --listen 'systemd:domain=INET:index=0': systemd ")
    assert "worker" not in done.output


def test_a_unix_listener_is_shared_and_removed_once_at_exit(
    proxy_factory: ProxyFactory, backend: Backend, tmp_path: Path
) -> None:
    """--listen unix: is one socket both workers adopt; it serves, and at SIGTERM its file is
    removed once (by the supervisor), without an error from the workers."""
    path = tmp_path / "tls.sock"
    proxy = proxy_factory("--workers", "2", "--listen", f"unix:{path}", wait=False)
    assert proxy.wait_for_output(SHARED.pattern, timeout=20) is not None, proxy.output()
    assert f"listening on unix:{path}" in proxy.output()
    for index in range(4):
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(10)
        sock.connect(str(path))
        with RawClient(proxy.ssl_context().wrap_socket(sock, server_hostname="localhost")) as c:
            c.send(request_bytes(target=f"/u{index}"))
            assert c.read_response().body == f"GET /u{index}\n".encode()
    proxy.process.send_signal(signal.SIGTERM)
    assert proxy.process.wait(10) == 0, proxy.output()
    assert not path.exists()
    assert "Unhandled Error" not in proxy.output()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[tuple[Path, socket.socket]]:
    """systemd's notify socket, played by the test: (its path, the bound datagram socket)."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    yield path, sock
    sock.close()


@pytest.mark.skipif(
    SOCKET_ACTIVATE is None,
    reason="systemd-socket-activate not found: apt-get install -y systemd",
)
def test_socket_activation_and_notify_speak_for_every_worker(
    backend: Backend, notify: tuple[Path, socket.socket], workdir: Path, shared_certs_dir: Path
) -> None:
    """Under systemd-socket-activate, the inherited socket is shared by 2 workers; only the
    supervisor notifies (workers see neither NOTIFY_SOCKET nor LISTEN_FDS): READY=1 with the
    worker count once both serve, RELOADING=1/READY=1 around SIGHUP, STOPPING=1, exit 0."""
    notify_path, notify_sock = notify
    ca_path = ensure_dev_certificates(shared_certs_dir, [], now=datetime.now(UTC)).ca_cert_path
    port = free_port()
    proxy = ActivatedProxy(
        [
            "--backend",
            backend.url,
            "--listen",
            f"systemd:domain=INET:name={FDNAME}",
            "--workers",
            "2",
            "--certs-dir",
            str(shared_certs_dir),
        ],
        port=port,
        notify_socket=notify_path,
        cwd=workdir,
    )
    try:
        assert proxy.wait_for_output(f"Listening on 127.0.0.1:{port}"), proxy.output()
        with httpx.Client(verify=trusting_context(ca_path), timeout=30.0) as client:
            assert client.get(f"https://localhost:{port}/activated").status_code == 200
        ready = next_message(notify_sock)
        assert ready.get("READY") == "1", ready
        assert ready["STATUS"].startswith(f"serving https://127.0.0.1:{port}/; 2 of 2 workers, "), (
            ready
        )
        # READY=1 is a datagram; the banner comes through a pipe and may still be on its way.
        assert proxy.wait_for_output("worker processes share these listeners"), proxy.output()
        for pid in worker_pids(proxy.output()):
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            names = {entry.split(b"=", 1)[0] for entry in environ}
            assert not names & {b"NOTIFY_SOCKET", b"LISTEN_FDS", b"LISTEN_PID"}, names

        proxy.process.send_signal(signal.SIGHUP)
        assert message_with(notify_sock, "RELOADING")["RELOADING"] == "1"
        assert message_with(notify_sock, "READY")["READY"] == "1"
        deadline = time.monotonic() + 5  # the log reaches the pipe about when READY=1 is sent
        while proxy.output().count("reloaded certificates: ") < 2:
            assert time.monotonic() < deadline, proxy.output()
            time.sleep(0.05)

        proxy.process.send_signal(signal.SIGTERM)
        assert message_with(notify_sock, "STOPPING")["STOPPING"] == "1"
        assert proxy.process.wait(STOP_GRACE + 5) == 0, proxy.output()
        assert "Traceback" not in proxy.output(), proxy.output()
    finally:
        proxy.stop()


def test_the_worker_entry_point_refuses_to_run_by_hand(workdir: Path) -> None:
    """python -m tlsproxy.workers outside a supervisor says what it is and exits 2."""
    result = subprocess.run(
        [TWISTD[0], "-m", "tlsproxy.workers", "--backend", "http://127.0.0.1:9"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "TLSPROXY_WORKER"},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "tlsproxy: error: python -m tlsproxy.workers is started by twistd tlsproxy "
        "--workers N, not by hand"
    ]

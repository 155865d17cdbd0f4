"""--workers when a worker dies or cannot start, and what only the supervisor may do: a real
twistd supervisor and its worker processes, seen from outside (helpers in test_workers.py)."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tlsproxy.tls.certstore import load_certificate

from . import proxyprocess
from .backend import Backend
from .pki import der_certificate, issue, write_pair
from .proxyprocess import TWISTD, ProxyFactory
from .test_workers import (
    SHARED,
    established,
    gone,
    parent_of,
    served_der,
    started_worker_pids,
)

pytestmark = pytest.mark.e2e


def test_a_killed_worker_is_replaced_and_requests_keep_succeeding(
    proxy_factory: ProxyFactory, backend: Backend
) -> None:
    """kill -9 of worker 1: the supervisor logs it and starts another under the same number;
    new connections meanwhile are answered (by worker 2, or by the replacement once its socket
    joins), except the few queued on the dead worker's socket as it closed: those are reset,
    never left hanging."""
    proxy = proxy_factory("--workers", "2")
    first, second = started_worker_pids(proxy)
    os.kill(first, signal.SIGKILL)
    served = re.compile(r"worker 1 is serving \(pid (\d+)\)")
    answered, after, resets = 0, 0, 0
    deadline = time.monotonic() + 20
    with proxy.client() as client:
        while after < 10:
            assert time.monotonic() < deadline, proxy.output()
            try:
                answer = client.get(f"/n{answered}", headers={"Connection": "close"})
            except httpx.TimeoutException:
                raise
            except httpx.TransportError:
                resets += 1
                continue
            assert answer.status_code == 200
            answered += 1
            after += served.search(proxy.output()) is not None
    assert resets <= 5, f"{resets} connections reset"
    assert f"worker 1 (pid {first}) killed by signal 9 (SIGKILL); starting another in 0.5s" in (
        proxy.output()
    )
    match = served.search(proxy.output())
    assert match is not None
    replacement = int(match.group(1))
    assert replacement not in (first, second)
    assert parent_of(replacement) == proxy.pid
    assert gone(first)
    assert not gone(second)


def test_a_module_in_the_working_directory_does_not_run_in_the_workers(
    proxy_factory: ProxyFactory, backend: Backend, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """twistd started from a folder holding a json.py: the workers (python -m) would import it
    first, as the worker user, if the current directory led their sys.path. twistd itself is
    started as its console script is (the script's folder on sys.path, not the current one)."""
    marker = workdir / "json-imported"
    (workdir / "json.py").write_text(
        f"import os\nopen({str(marker)!r}, 'w').write(str(os.getpid()))\n"
    )
    twistd = [sys.executable, "-P", *TWISTD[1:]]  # -c would put the current directory first
    monkeypatch.setattr(proxyprocess, "TWISTD", twistd)
    proxy = proxy_factory("--workers", "2", wait=False)
    found = proxy.wait_for_output(f"{SHARED.pattern}|tlsproxy cannot start", timeout=20)
    assert not marker.exists(), f"json.py ran in pid {marker.read_text()}:\n{proxy.output()}"
    assert found is not None, proxy.output()
    assert SHARED.search(proxy.output()), proxy.output()


def test_a_worker_that_cannot_start_takes_no_connections_until_a_reload(
    proxy_factory: ProxyFactory, backend: Backend, tmp_path: Path
) -> None:
    """Worker 1 killed while its certificate file is broken: each replacement exits at startup.
    Meanwhile its socket is out of the SO_REUSEPORT group, so every new connection is served by
    worker 2 (none hangs in a socket nobody accepts from). Fixing the file and SIGHUP starts
    worker 1 at once, without waiting out the backoff."""
    ca = issue("tlsproxy workers test CA", ca=True)
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(ca.cert_pem())
    leaf = issue("crash.test", issuer=ca)
    cert, key = write_pair(tmp_path, leaf)
    proxy = proxy_factory("--workers", "2", "--cert", str(cert), "--key", str(key), trust=ca_path)
    first, second = started_worker_pids(proxy)
    cert.write_text("not a certificate\n")
    os.kill(first, signal.SIGKILL)
    waiting = proxy.wait_for_output(r"worker 1 .*4 quick deaths in a row: starting another in 4s")
    assert waiting is not None, proxy.output()
    for _ in range(12):  # within the 4 s wait; half would hang if worker 1's socket listened
        with proxy.connect(timeout=2) as sock:
            assert sock.version() is not None
    assert established(proxy.port, [second]) == [0]  # each closed: none left waiting
    write_pair(tmp_path, leaf)
    os.kill(proxy.pid, signal.SIGHUP)
    started = time.monotonic()
    served = proxy.wait_for_output(r"worker 1 is serving \(pid (\d+)\)", timeout=10)
    assert served is not None, proxy.output()
    assert time.monotonic() - started < 4, proxy.output()
    assert "reload: starting worker 1 now instead of after its backoff" in proxy.output()
    assert proxy.wait_for_output("reloaded in 1 of 1 workers") is not None, proxy.output()
    assert not gone(second)


def test_only_the_supervisor_writes_the_development_certificate(
    proxy_factory: ProxyFactory, backend: Backend, tmp_path: Path
) -> None:
    """4 workers in development-certificate mode, its leaf deleted before each of 3 SIGHUPs:
    the supervisor makes a new one before it forwards the reload, so no worker's reload fails,
    the key on disk matches the certificate, and every worker serves that same leaf."""
    certs = tmp_path / "certs"
    proxy = proxy_factory("--workers", "4", "--certs-dir", str(certs))
    first = served_der(proxy)
    for round_ in range(1, 4):
        (certs / "localhost.pem").unlink()
        (certs / "localhost-key.pem").unlink()
        os.kill(proxy.pid, signal.SIGHUP)
        deadline = time.monotonic() + 15
        while proxy.output().count("reloaded in 4 of 4 workers") < round_:
            assert "reload failed" not in proxy.output(), proxy.output()
            assert time.monotonic() < deadline, proxy.output()
            time.sleep(0.05)
    assert "reload failed" not in proxy.output(), proxy.output()
    load_certificate(certs / "localhost.pem", certs / "localhost-key.pem", now=datetime.now(UTC))
    on_disk = der_certificate(certs / "localhost.pem")
    assert on_disk != first
    assert {served_der(proxy) for _ in range(40)} == {on_disk}

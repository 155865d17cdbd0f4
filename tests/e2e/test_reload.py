"""SIGHUP reloads the certificates of a real twistd process without dropping anything."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from .backend import Backend, BackendConnection, ReceivedRequest, chunk, echo_responder
from .pki import Issued, issue, write_pair
from .proxyprocess import ProxyFactory, ProxyProcess
from .rawclient import RawClient, request_bytes

RELOADED = r"reloaded certificates: [^\n]*sha256 "
FAILED = r"reload failed, still serving the previous certificate: [^\n]*"


def _pki(directory: Path) -> tuple[Issued, Path]:
    ca = issue("tlsproxy reload test CA", ca=True)
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca.cert_pem())
    return ca, ca_path


def _der_seen(proxy: ProxyProcess) -> bytes:
    """The DER certificate a new handshake is given."""
    with proxy.connect() as sock:
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return der


def _der(issued: Issued) -> bytes:
    return issued.cert.public_bytes(serialization.Encoding.DER)


def _hup(proxy: ProxyProcess, pattern: str, count: int) -> str:
    """Send SIGHUP and wait until ``pattern`` has been logged ``count`` times; the last line."""
    os.kill(proxy.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = re.findall(pattern, proxy.output())
        if len(found) >= count:
            return str(found[-1])
        time.sleep(0.02)
    raise AssertionError(f"no {pattern!r} #{count} after SIGHUP:\n{proxy.output()}")


def _start(proxy_factory: ProxyFactory, directory: Path) -> tuple[Issued, Path, Path, ProxyProcess]:
    ca, ca_path = _pki(directory)
    cert, key = write_pair(directory, issue("first.test", issuer=ca))
    proxy = proxy_factory("--cert", str(cert), "--key", str(key), trust=ca_path)
    return ca, cert, key, proxy


def test_sighup_serves_new_certificate_and_keeps_open_connections(
    proxy_factory: ProxyFactory, backend: Backend, tmp_path: Path
) -> None:
    """After SIGHUP with a new valid pair, new handshakes get the new certificate, while a
    keep-alive connection and a streaming response opened before keep working on the old one."""
    ca, _cert, _key, proxy = _start(proxy_factory, tmp_path)
    first = _der_seen(proxy)
    go_on = threading.Event()

    def responder(conn: BackendConnection, request: ReceivedRequest) -> None:
        if request.target != b"/stream":
            echo_responder(conn, request)
            return
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(b"before "))
        go_on.wait(10)
        conn.send(chunk(b"after") + chunk(b""))

    backend.respond_with(responder)
    with RawClient(proxy.connect()) as kept, RawClient(proxy.connect()) as streaming:
        kept.send(request_bytes(target="/one"))
        assert kept.read_response().status == 200
        streaming.send(request_bytes(target="/stream"))
        assert b"before" in streaming.poll(5)

        second = issue("second.test", issuer=ca)
        write_pair(tmp_path, second)
        line = _hup(proxy, RELOADED, 1)
        assert "localhost" in line
        assert "expires" in line
        assert _der_seen(proxy) == _der(second) != first

        kept.send(request_bytes(target="/two"))
        answer = kept.read_response()
        assert (answer.status, answer.body) == (200, b"GET /two\n")
        assert isinstance(kept.sock, ssl.SSLSocket)
        assert kept.sock.getpeercert(binary_form=True) == first
        go_on.set()
        rest = b""
        for _ in range(50):
            rest += streaming.poll(0.2)
            if rest.endswith(b"0\r\n\r\n"):
                break
        assert b"after" in rest
        assert rest.endswith(b"0\r\n\r\n")


def test_sighup_with_broken_files_keeps_the_old_certificate(
    proxy_factory: ProxyFactory, backend: Backend, tmp_path: Path
) -> None:
    """SIGHUP with a garbage certificate, then with a key that does not match, logs one line
    naming the file each time, keeps serving the old certificate, and the process lives on."""
    ca, cert, key, proxy = _start(proxy_factory, tmp_path)
    first = _der_seen(proxy)
    good_key = key.read_bytes()

    cert_pem = cert.read_bytes()
    cert.write_bytes(b"this is not a certificate\n")
    line = _hup(proxy, FAILED, 1)
    assert str(cert) in line
    assert _der_seen(proxy) == first

    cert.write_bytes(cert_pem)
    key.write_bytes(issue("other.test", issuer=ca).key_pem())
    line = _hup(proxy, FAILED, 2)
    assert str(key) in line or str(cert) in line
    assert _der_seen(proxy) == first
    assert proxy.process.poll() is None

    key.write_bytes(good_key)  # fixed: the next reload succeeds again
    _hup(proxy, RELOADED, 1)
    assert _der_seen(proxy) == first
    with proxy.client() as client:
        assert client.get("/alive").status_code == 200


def test_reloads_under_load_fail_no_request(
    proxy_factory: ProxyFactory, backend: Backend, tmp_path: Path
) -> None:
    """20 clients (keep-alive and new connections) hammer the proxy while 10 reloads happen,
    half of them with broken files: no request fails, and new handshakes then see the newest
    good certificate."""
    ca, cert, _key, proxy = _start(proxy_factory, tmp_path)
    stop = threading.Event()
    failures: list[str] = []
    done = [0] * 20
    hard_stop = time.monotonic() + 30

    def hammer(index: int) -> None:
        keep_alive = index % 2 == 0
        client = proxy.client(timeout=10) if keep_alive else None
        try:
            while not stop.is_set() and time.monotonic() < hard_stop:
                try:
                    if client is not None:
                        status = client.get(f"/k{index}").status_code
                    else:
                        with proxy.client(timeout=10) as fresh:
                            status = fresh.get(f"/n{index}").status_code
                    if status != 200:
                        failures.append(f"client {index}: status {status}")
                    done[index] += 1
                except Exception as e:  # every failure is what this test counts
                    failures.append(f"client {index}: {e!r}")
        finally:
            if client is not None:
                client.close()

    threads = [threading.Thread(target=hammer, args=(i,), daemon=True) for i in range(20)]
    for thread in threads:
        thread.start()
    newest = b""
    good = failed = 0
    for round_ in range(10):
        time.sleep(0.3)
        if round_ % 2:
            cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
            failed += 1
            _hup(proxy, FAILED, failed)
        else:
            issued = issue(f"round{round_}.test", issuer=ca)
            write_pair(tmp_path, issued)
            good += 1
            _hup(proxy, RELOADED, good)
            newest = _der(issued)
            assert _der_seen(proxy) == newest
    time.sleep(0.3)
    stop.set()
    for thread in threads:
        thread.join(15)
    assert not failures, failures[:5]
    assert all(count > 0 for count in done), done
    assert proxy.process.poll() is None
    assert _der_seen(proxy) == newest  # the broken files of the last rounds changed nothing
    with socket.create_connection((proxy.host, proxy.port), timeout=5):
        pass


def test_watch_certs_reloads_when_the_files_change(
    proxy_factory: ProxyFactory, backend: Backend, tmp_path: Path
) -> None:
    """With --watch-certs, replacing the files (as certbot does) is enough: new handshakes get
    the new certificate within a few seconds, and a broken replacement keeps the last good one."""
    ca, ca_path = _pki(tmp_path)
    cert, key = write_pair(tmp_path, issue("first.test", issuer=ca))
    proxy = proxy_factory("--cert", str(cert), "--key", str(key), "--watch-certs", trust=ca_path)
    first = _der_seen(proxy)
    renewed = issue("renewed.test", issuer=ca)
    staging = tmp_path / "staging"
    staging.mkdir()
    new_cert, new_key = write_pair(staging, renewed)
    os.replace(new_key, key)
    os.replace(new_cert, cert)
    deadline = time.monotonic() + 15
    while _der_seen(proxy) == first and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _der_seen(proxy) == _der(renewed)
    assert re.search(RELOADED, proxy.output())

    cert.write_bytes(b"half-written renewal\n")
    deadline = time.monotonic() + 15
    while not re.search(FAILED, proxy.output()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert str(cert) in re.findall(FAILED, proxy.output())[-1]
    assert _der_seen(proxy) == _der(renewed)

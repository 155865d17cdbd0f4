"""Reload under load: what ten SIGHUPs (half with broken files) cost clients, measured.

Usage (as root, from the repository root, with the project's venv):

    python bench/reload.py                  # 2 rounds of 10 s quiet + 10 s with reloads
    python bench/reload.py --duration 20 --rounds 3

One tlsproxy (pinned to CPU 1) in front of an nginx backend (CPU 0). Two wrk clients run at once
on CPU 0: 10 keep-alive connections, and 10 connections that each make one request
(``Connection: close``: a new TCP connection and TLS handshake each time). Each round measures a
quiet period, then the same period with ten reloads spread over it, alternately a new good
certificate and a broken certificate file. After every good reload a fresh handshake must see the
new certificate; after every broken one, the last good certificate. Reported: requests/s of both
clients in both periods (the ratio is the reloads' cost), errors (wrk's socket errors and
non-2xx answers: the target is zero), and the reload outcomes the log shows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench import fixtures, loads, nginx
from bench.process import Service, free_port
from bench.tools import ensure_tools

REPO = Path(__file__).resolve().parent.parent
LOAD_CPU, PROXY_CPU = 0, 1
TLSPROXY_BOOT = "from twisted.scripts.twistd import run; run()"
RELOADS = 10
BROKEN = b"-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n"


def write_certificate(cert_path: Path, key_path: Path, round_: int) -> bytes:
    """A new self-signed P-256 pair for 127.0.0.1, written atomically; its DER."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"reload round {round_}")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    for path, data, mode in (
        (key_path, key_pem, 0o600),
        (cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644),
    ):
        staged = path.with_suffix(".new")
        staged.write_bytes(data)
        staged.chmod(mode)
        os.replace(staged, path)
    return cert.public_bytes(serialization.Encoding.DER)


def served_certificate(port: int) -> bytes:
    """The DER certificate a fresh handshake gets."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def wait_for_log(log: Path, text: str, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.read_text(errors="replace").count(text) >= count:
            return
        time.sleep(0.02)
    raise RuntimeError(f"{text!r} was not logged {count} times within {timeout:.0f}s")


def reload_ten_times(
    proxy: Service, cert: Path, key: Path, seconds: float, counts: dict[str, int]
) -> list[str]:
    """Ten SIGHUPs spread over ``seconds``, alternately good and broken; the problems seen."""
    problems = []
    newest = served_certificate(proxy.port)
    for round_ in range(RELOADS):
        time.sleep(seconds / (RELOADS + 1))
        if round_ % 2 == 0:
            newest = write_certificate(cert, key, round_)
            counts["good"] += 1
            os.kill(proxy.pid, signal.SIGHUP)
            wait_for_log(proxy.log, "reloaded certificates:", counts["good"])
        else:
            cert.write_bytes(BROKEN)
            counts["broken"] += 1
            os.kill(proxy.pid, signal.SIGHUP)
            wait_for_log(proxy.log, "reload failed, still serving", counts["broken"])
        if served_certificate(proxy.port) != newest:
            problems.append(f"reload {round_ + 1}: a new handshake did not get the newest good one")
    return problems


def measure(
    wrk: str, port: int, seconds: float, script_dir: Path, during: Any = None
) -> tuple[loads.LoadResult, loads.LoadResult, Any]:
    """Both wrk clients for ``seconds``, with ``during()`` running alongside if given."""
    url = f"https://127.0.0.1:{port}/small"
    with ThreadPoolExecutor(3) as pool:
        keep = pool.submit(
            loads.run_wrk, wrk, url, connections=10, duration=seconds, script_dir=script_dir
        )
        fresh = pool.submit(
            loads.run_wrk, wrk, url, connections=10, duration=seconds, script_dir=script_dir,
            close=True,
        )  # fmt: skip
        side = pool.submit(during) if during is not None else None
        return keep.result(), fresh.result(), side.result() if side is not None else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per period")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--no-install", action="store_true")
    args = parser.parse_args(argv)
    tools = ensure_tools(install=not args.no_install)
    os.sched_setaffinity(0, {LOAD_CPU})
    root = Path(tempfile.mkdtemp(prefix="tlsproxy-reload-bench-"))
    fx = fixtures.make_fixtures(root, openssl=shutil.which("openssl") or "openssl", stream_bytes=0)
    backend_port, proxy_port = free_port(), free_port()
    conf = root / "backend.conf"
    conf.write_text(nginx.backend_conf(fx, port=backend_port, modules=tools.nginx_modules))
    backend = Service(
        name="backend", argv=[tools.nginx, "-c", str(conf), "-p", str(root)],
        port=backend_port, log=root / "backend.log", cwd=root, worker_is_child=True,
    )  # fmt: skip
    proxy = Service(
        name="tlsproxy",
        argv=[
            args.python, "-c", TLSPROXY_BOOT, "-n", "--pidfile=", "tlsproxy",
            "--backend", f"http://127.0.0.1:{backend_port}",
            "--listen", f"tcp:{proxy_port}:interface=127.0.0.1",
            "--cert", str(fx.cert), "--key", str(fx.key),
        ],
        port=proxy_port, log=root / "tlsproxy.log", cwd=root, worker_is_child=False,
    )  # fmt: skip
    rows: list[dict[str, Any]] = []
    counts = {"good": 0, "broken": 0}
    problems: list[str] = []
    try:
        backend.start(taskset=tools.taskset, cpu=LOAD_CPU)
        backend.wait_ready(30)
        proxy.start(taskset=tools.taskset, cpu=PROXY_CPU)
        proxy.wait_ready(60)
        for round_ in range(args.rounds):
            quiet = measure(tools.wrk, proxy_port, args.duration, root)
            busy = measure(
                tools.wrk, proxy_port, args.duration, root,
                during=lambda: reload_ten_times(proxy, fx.cert, fx.key, args.duration, counts),
            )  # fmt: skip
            problems += busy[2]
            for period, (keep, fresh, _) in (("quiet", quiet), ("reloading", busy)):
                rows.append({
                    "round": round_ + 1, "period": period,
                    "keepalive_rps": keep.requests_per_s, "keepalive_errors": keep.errors,
                    "new_connection_rps": fresh.requests_per_s,
                    "new_connection_errors": fresh.errors,
                    "notes": " ".join(n for n in (keep.note, fresh.note) if n),
                })  # fmt: skip
        alive = proxy.alive()
    finally:
        proxy.stop()
        backend.stop()
    print(f"{'round':>5} {'period':<10} {'keep-alive req/s':>17} {'errors':>6} "
          f"{'new-conn req/s':>15} {'errors':>6}")  # fmt: skip
    for row in rows:
        print(f"{row['round']:>5} {row['period']:<10} {row['keepalive_rps']:>17,.0f} "
              f"{row['keepalive_errors']:>6} {row['new_connection_rps']:>15,.0f} "
              f"{row['new_connection_errors']:>6} {row['notes']}")  # fmt: skip
    quiet_rows = [r for r in rows if r["period"] == "quiet"]
    busy_rows = [r for r in rows if r["period"] == "reloading"]

    def total(rows_: list[dict[str, Any]], key: str) -> float:
        return float(sum(r[key] for r in rows_))

    summary = {
        "reloads_good": counts["good"],
        "reloads_broken": counts["broken"],
        "errors": total(rows, "keepalive_errors") + total(rows, "new_connection_errors"),
        "keepalive_ratio": total(busy_rows, "keepalive_rps") / total(quiet_rows, "keepalive_rps"),
        "new_connection_ratio": (
            total(busy_rows, "new_connection_rps") / total(quiet_rows, "new_connection_rps")
        ),
        "problems": problems,
        "proxy_alive_at_end": alive,
    }
    print(
        f"reloads: {counts['good']} good, {counts['broken']} broken; errors: "
        f"{summary['errors']:.0f}; req/s while reloading vs quiet: keep-alive "
        f"{summary['keepalive_ratio']:.2f}, new connections {summary['new_connection_ratio']:.2f};"
        f" new certificate seen after every reload: {problems or 'yes'}"
    )
    out = REPO / "bench" / "results" / f"{dt.datetime.now():%Y%m%d-%H%M%S}-reload.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    print(f"results: {out}")
    shutil.rmtree(root, ignore_errors=True)
    ok = not problems and summary["errors"] == 0 and alive
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark tlsproxy against nginx as TLS proxies in front of the same backend.

Usage (as root, from the repository root, with the project's venv):

    python bench/run.py                   # every scenario, ~6 minutes
    python bench/run.py --quick           # smoke run, ~1 minute
    python bench/run.py --scenario keepalive --scenario handshakes
    python bench/run.py --candidate nginx # harness check: nginx vs nginx

Both proxies run pinned to CPU 1; this process, its clients (wrk, curl, Python) and the
backends (nginx; the websocket echo server of the ws scenarios) are pinned to CPU 0. Each
scenario alternates nginx, candidate, nginx, ... for --rounds rounds and keeps the median.
The workers scenario compares tlsproxy --workers 1 with --workers 2 instead, both allowed on
CPUs 0 and 1 (sharing CPU 0 with the clients and backend).
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as `python bench/run.py`: make the repository root importable for `bench.*`.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import fixtures, loads, nginx, wsecho
from bench.fixtures import GIB, MIB
from bench.process import Service, free_port
from bench.scenarios import SCENARIOS, Sample, Scenario, Settings
from bench.tools import Tools, ensure_tools, version_of

REPO = Path(__file__).resolve().parent.parent
LOAD_CPU, PROXY_CPU = 0, 1
TLSPROXY_BOOT = "from twisted.scripts.twistd import run; run()"


@dataclass
class Row:
    """One line of the result table: both proxies' medians and the verdict."""

    scenario: str
    title: str
    unit: str
    nginx: float
    candidate: float
    ratio: float | None
    target: str
    verdict: str
    nginx_cpu: float | None
    candidate_cpu: float | None
    per_cpu_ratio: float | None
    errors: int
    samples: dict[str, list[dict[str, Any]]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--scenario",
        action="append",
        choices=["all", *SCENARIOS],
        help="scenario to run (repeatable; default: all)",
    )
    p.add_argument(
        "--duration", type=float, default=10.0, help="seconds of load per measurement (default 10)"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternating rounds per rate scenario; the median is kept (default 3)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 3 s per measurement, 1 round, 256 MiB streams",
    )
    p.add_argument(
        "--candidate",
        choices=["tlsproxy", "nginx"],
        default="tlsproxy",
        help="what to compare with nginx; 'nginx' checks the harness (ratios ~1.0)",
    )
    p.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter that has tlsproxy installed (default: this one)",
    )
    p.add_argument("--idle-connections", type=int, default=1000)
    p.add_argument(
        "--stream-mib",
        type=int,
        default=2048,
        help="size of each streamed transfer in MiB (default 2048 = 2 GiB)",
    )
    p.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    p.add_argument(
        "--no-install", action="store_true", help="never run apt-get; just say what is missing"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 3.0)
        args.rounds = 1
        args.stream_mib = min(args.stream_mib, 256)
    if not args.scenario or "all" in args.scenario:
        args.scenario = list(SCENARIOS)
    return args


def pin_and_raise_limits() -> None:
    """Pin this process (and so every client it forks) to the load CPU; allow many fds."""
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("bench: needs 2 CPUs (one for the proxies, one for clients+backend)")
    os.sched_setaffinity(0, {LOAD_CPU})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(want, 65536)), hard))


class Bench:
    """The run's services: backends, reference nginx proxies and the candidate proxies.

    Proxies come in pairs (reference, candidate), one pair per backend: "http" in front of the
    backend nginx, and, when a ws scenario is selected, "ws" in front of the websocket echo
    server (tlsproxy has one --backend, so that pair is a second nginx and a second tlsproxy,
    with the same configuration and command line as the first but another backend port).
    """

    def __init__(self, args: argparse.Namespace, tools: Tools, fx: fixtures.Fixtures) -> None:
        self.args, self.tools, self.fx = args, tools, fx
        self.backend = self._nginx("backend", lambda port: nginx.backend_conf(
            fx, port=port, modules=tools.nginx_modules))  # fmt: skip
        self.backends = [self.backend]
        self.pairs = {"http": self._pair("", self.backend)}
        if any(SCENARIOS[name].backend == "ws" for name in args.scenario):
            port = free_port()
            ws_backend = Service(
                name="wsecho", argv=[sys.executable, str(REPO / "bench" / "wsecho.py"), str(port)],
                port=port, log=fx.root / "wsecho.log", cwd=fx.root, worker_is_child=False,
            )  # fmt: skip
            self.backends.append(ws_backend)
            self.pairs["ws"] = self._pair("-ws", ws_backend)
        if any(SCENARIOS[name].backend == "workers" for name in args.scenario):
            self.pairs["workers"] = (self._tlsproxy("-w1", self.backend, name="1 worker",
                                                    workers=1),
                                     self._tlsproxy("-w2", self.backend, name="2 workers",
                                                    workers=2))  # fmt: skip
        self.reference, self.candidate = self.pairs["http"]

    def _pair(self, suffix: str, backend: Service) -> tuple[Service, Service]:
        reference = self._nginx(f"nginx{suffix}", self._proxy_conf(f"nginx{suffix}", backend),
                                label="nginx")  # fmt: skip
        if self.args.candidate == "nginx":
            return reference, self._nginx(
                f"candidate{suffix}", self._proxy_conf(f"candidate{suffix}", backend),
                label="candidate",
            )  # fmt: skip
        return reference, self._tlsproxy(suffix, backend)

    def _tlsproxy(
        self, suffix: str, backend: Service, *, name: str = "tlsproxy", workers: int = 0
    ) -> Service:
        """tlsproxy in front of ``backend``; with ``workers``, ``--workers N`` on CPUs 0 and 1."""
        port, fx = free_port(), self.fx
        extra = ["--workers", str(workers)] if workers else []
        return Service(
            name=name,
            argv=[
                self.args.python, "-c", TLSPROXY_BOOT, "-n", "--pidfile=", "tlsproxy",
                "--backend", f"http://127.0.0.1:{backend.port}",
                "--listen", f"tcp:{port}:interface=127.0.0.1",
                "--cert", str(fx.cert), "--key", str(fx.key), *extra,
            ],
            port=port, log=fx.root / f"tlsproxy{suffix}.log", cwd=fx.root,
            worker_is_child=False, cpus=f"{LOAD_CPU},{PROXY_CPU}" if workers else None,
            children_serve=workers > 1,
        )  # fmt: skip

    def _proxy_conf(self, name: str, backend: Service) -> Any:
        return lambda port: nginx.proxy_conf(
            self.fx, name=name, port=port, backend_port=backend.port,
            modules=self.tools.nginx_modules,
        )  # fmt: skip

    def _nginx(self, name: str, conf: Any, *, label: str | None = None) -> Service:
        """An nginx whose files are named ``name``; ``label`` names it in the table."""
        port = free_port()
        path = self.fx.root / f"{name}.conf"
        path.write_text(conf(port))
        return Service(
            name=label or name,
            argv=[self.tools.nginx, "-c", str(path), "-p", str(self.fx.root)],
            port=port, log=self.fx.root / f"{name}.log", cwd=self.fx.root, worker_is_child=True,
        )  # fmt: skip

    @property
    def proxies(self) -> list[Service]:
        return [proxy for pair in self.pairs.values() for proxy in pair]

    def start_backend(self) -> None:
        for backend in self.backends:
            backend.start(taskset=self.tools.taskset, cpu=LOAD_CPU)
        for backend in self.backends:
            backend.wait_ready(30)

    def start_proxies(self) -> None:
        for proxy in self.proxies:
            proxy.start(taskset=self.tools.taskset, cpu=PROXY_CPU)
        for proxy in self.proxies:
            proxy.wait_ready(60)

    def restart_proxies(self) -> None:
        for proxy in self.proxies:
            proxy.stop()
        for proxy in self.proxies:
            # The same port is reused; a new Popen replaces the old one.
            proxy.popen = None
        self.start_proxies()

    def stop(self) -> None:
        for service in (*self.proxies, *self.backends):
            service.stop()


def check_proxy(proxy: Service) -> str:
    """Prove the path works (GET and POST through the proxy) before measuring anything."""
    held = loads.open_idle(proxy.port, 1, timeout=30)
    try:
        tls = held[0]
        if (status := loads.request_each(held, "/small")) != 1:
            raise RuntimeError(f"{proxy.name}: GET /small did not answer 200 ({status})")
        body = b"y" * 100_000
        tls.sendall(
            b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        if (status := loads.read_response(tls)) != 200:
            raise RuntimeError(f"{proxy.name}: POST /upload answered {status}")
    finally:
        loads.close_all(held)
    return tls_parameters(proxy)


def check_ws(proxy: Service) -> str:
    """Prove the websocket path works: upgrade, 64 KiB and 64 B echoes checked, close."""
    for size in (64 * 1024, 64):
        got = loads.run_ws_echo(proxy.port, connections=1, in_flight=2, message_bytes=size,
                                duration=0.2)  # fmt: skip
        if got.errors or not got.requests:
            raise RuntimeError(f"{proxy.name} (ws): websocket echo of {size} B failed: "
                               f"{got.note or 'no message echoed'}")  # fmt: skip
    return tls_parameters(proxy)


def tls_parameters(proxy: Service) -> str:
    """What a default client negotiates with this proxy, as openssl s_client reports it."""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{proxy.port}", "-brief"],
        input="", capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    keep = ("Protocol version", "Ciphersuite", "Peer Temp Key", "Negotiated", "Signature type")
    found = [line.strip() for line in (done.stdout + done.stderr).splitlines()
             if line.strip().startswith(keep)]  # fmt: skip
    return "; ".join(found) or "unknown"


def run_scenario(bench: Bench, scenario: Scenario, settings: Settings, rounds: int) -> Row:
    """Alternate nginx and the candidate for ``rounds`` rounds; keep the median."""
    if scenario.fresh:
        bench.restart_proxies()
    reference, candidate = bench.pairs[scenario.backend]
    per: dict[str, list[Sample]] = {p.name: [] for p in (reference, candidate)}
    for r in range(rounds):
        for proxy in (reference, candidate):
            if not proxy.alive():
                raise RuntimeError(f"{proxy.name} died; log {proxy.log}:\n{proxy.log_tail()}")
            sample = scenario.measure(settings, proxy)
            per[proxy.name].append(sample)
            cpu = f" cpu {sample.cpu:.0%}" if sample.cpu is not None else ""
            err = f" errors {sample.errors}" if sample.errors else ""
            load = ""
            if (busy := sample.detail.get("load_cpu_busy")) is not None:
                backend = sample.detail.get("backend_cpu")
                load = f" (cpu {LOAD_CPU} {busy:.0%}" + (
                    f", backend {backend:.0%})" if backend is not None else ")"
                )
            if (split := sample.detail.get("connections_per_worker")) and len(split) > 1:
                load += f" connections per worker {split}"
            print(f"  {scenario.name:<13} round {r + 1}/{rounds} {proxy.name:<9}"
                  f" {sample.value:>10.1f} {scenario.unit}{cpu}{err}{load}",
                  flush=True)  # fmt: skip

    def median(name: str) -> tuple[float, float | None]:
        samples = per[name]
        cpus = [s.cpu for s in samples if s.cpu is not None]
        return (statistics.median(s.value for s in samples),
                statistics.median(cpus) if cpus else None)  # fmt: skip

    ref_value, ref_cpu = median(reference.name)
    cand_value, cand_cpu = median(candidate.name)
    ratio = cand_value / ref_value if ref_value else None
    per_cpu = None
    if scenario.higher_is_better and ref_cpu and cand_cpu:
        per_cpu = (cand_value / cand_cpu) / (ref_value / ref_cpu)
    errors = sum(s.errors for s in per[candidate.name])
    if scenario.kind == "ratio":
        target = f">= {scenario.target:.2f}x"
        ok = ratio is not None and ratio >= scenario.target
    elif scenario.kind == "figure":
        target, ok = "none yet", True
    else:
        target = f"<= {scenario.target:g} {scenario.unit}"
        ok = cand_value <= scenario.target
    verdict = ("-" if scenario.kind == "figure" else "PASS") if ok and not errors else "MISS"
    if errors:
        verdict += " (errors)"
    return Row(
        scenario=scenario.name, title=scenario.title, unit=scenario.unit,
        nginx=ref_value, candidate=cand_value, ratio=ratio, target=target, verdict=verdict,
        nginx_cpu=ref_cpu, candidate_cpu=cand_cpu, per_cpu_ratio=per_cpu, errors=errors,
        samples={name: [asdict(s) for s in samples] for name, samples in per.items()},
    )  # fmt: skip


def _pct(v: float | None) -> str:
    return f"{v:.0%}" if v is not None else "-"


def print_table(rows: list[Row], candidate: str) -> None:
    head = (f"{'scenario':<30} {'unit':<9} {'nginx':>9} {candidate:>9} {'ratio':>6} "
            f"{'target':>15}  {'verdict':<7} {'cpu n/c':>9} {'per-cpu':>7}")  # fmt: skip
    print()
    print(head)
    print("-" * len(head))
    for row in rows:
        per_cpu = f"{row.per_cpu_ratio:.2f}" if row.per_cpu_ratio is not None else "-"
        ratio = f"{row.ratio:.2f}" if row.ratio is not None else "-"
        print(f"{row.title:<30} {row.unit:<9} {row.nginx:>9.1f} {row.candidate:>9.1f} "
              f"{ratio:>6} {row.target:>15}  {row.verdict:<7} "
              f"{_pct(row.nginx_cpu) + '/' + _pct(row.candidate_cpu):>9} {per_cpu:>7}")  # fmt: skip
    print()
    print("cpu n/c: each proxy's CPU use during the load (100% = its whole core).")
    print("per-cpu: the ratio per proxy-CPU-second; trust it over 'ratio' when nginx's cpu is")
    print("well under 100% (then the clients on CPU 0, not nginx, set nginx's figure).")
    for note in notes(rows, candidate):
        print(f"note: {note}")


def notes(rows: list[Row], candidate: str) -> list[str]:
    """What a reader should not miss in the table, found from the figures themselves."""
    found: list[str] = []
    for row in rows:
        if row.scenario == "workers":
            found.append(_workers_note(row))
            continue
        if row.per_cpu_ratio is not None and row.nginx_cpu is not None and row.nginx_cpu < 0.85:
            found.append(
                f"{row.scenario}: nginx used {row.nginx_cpu:.0%} of its core, so the clients"
                " limited it; the ratio overstates the candidate (per-cpu is closer)."
            )
        cand_cpu = row.candidate_cpu
        slow = row.verdict.startswith("MISS")
        if row.per_cpu_ratio is not None and cand_cpu is not None and cand_cpu < 0.5 and slow:
            found.append(
                f"{row.scenario}: {candidate} used only {cand_cpu:.0%} of its core:"
                " it is waiting, not computing (latency: Nagle/delayed ACK, flow control,"
                " a pool?); per-cpu means little here."
            )
        if row.scenario.startswith("ws-echo") and row.nginx_cpu and row.candidate_cpu:
            found.append(f"{row.scenario}: proxy CPU {_cost(row, candidate)}.")
        if row.scenario == "idle-rss":
            detail = row.samples[candidate][0]["detail"]
            found.append(
                f"idle-rss: {candidate} {detail['per_connection_after_handshake_kib']} KiB/conn"
                f" after the handshake, {detail['per_connection_after_request_kib']} KiB/conn"
                f" after one request; {detail['answered']}/{detail['connections']} answered."
            )
    return found


def _workers_note(row: Row) -> str:
    """The workers row compares tlsproxy with itself: say so, and where each process ran."""
    ratio = f"{row.ratio:.2f}" if row.ratio is not None else "-"
    return (
        f"workers: here the 'nginx' column is tlsproxy --workers 1 ({row.nginx:.0f} req/s, "
        f"cpu {_pct(row.nginx_cpu)}) and the other --workers 2 ({row.candidate:.0f} req/s, cpu "
        f"{_pct(row.candidate_cpu)}, all workers): {ratio}x. Both may run on CPUs {LOAD_CPU} "
        f"and {PROXY_CPU}; wrk and the backend stay on CPU {LOAD_CPU}, so a second worker "
        "competes with them for that core."
    )


def _cost(row: Row, candidate: str) -> str:
    """Proxy CPU per unit of work: ms per MiB echoed, or µs per message echoed."""
    per_mib = row.unit == "MiB/s"
    scale, unit = (1e3, "ms per MiB echoed") if per_mib else (1e6, "µs per message")
    costs = []
    for name, value, cpu in (("nginx", row.nginx, row.nginx_cpu),
                             (candidate, row.candidate, row.candidate_cpu)):  # fmt: skip
        costs.append(f"{name} {cpu / value * scale:.2f}" if value and cpu else f"{name} -")
    return f"{unit}: {', '.join(costs)} (each byte crosses the proxy twice, in and out)"


def environment(args: argparse.Namespace, tools: Tools) -> dict[str, Any]:
    def git(*cmd: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO), *cmd], capture_output=True, text=True,
                              timeout=10, check=False)  # fmt: skip
        return done.stdout.strip()

    return {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
        "cpu_model": next((line.split(":", 1)[1].strip() for line in
                           Path("/proc/cpuinfo").read_text().splitlines()
                           if line.startswith("model name")), "unknown"),
        "python": sys.version.split()[0], "tlsproxy_python": args.python,
        "nginx": version_of([tools.nginx, "-v"]), "wrk": version_of([tools.wrk, "-v"]),
        "openssl": version_of([tools.openssl, "version"]),
        "curl": version_of([tools.curl, "--version"]),
        # nginx links the system OpenSSL; tlsproxy uses the one in the cryptography wheel.
        "tlsproxy_openssl": version_of([args.python, "-c", (
            "from cryptography.hazmat.backends.openssl import backend;"
            "print(backend.openssl_version_text())")]),
        "pinning": {"proxies": PROXY_CPU, "clients_and_backend": LOAD_CPU,
                    "workers_scenario_proxies": f"{LOAD_CPU},{PROXY_CPU}"},
        "wsecho_unmask": "websockets C apply_mask" if wsecho.apply_mask is not
        wsecho._xor_mask else "Python int XOR",
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools = ensure_tools(install=not args.no_install)
    pin_and_raise_limits()
    root = Path(tempfile.mkdtemp(prefix="tlsproxy-bench-"))
    stream_bytes = args.stream_mib * MIB
    fx = fixtures.make_fixtures(root, openssl=tools.openssl, stream_bytes=stream_bytes)
    bench = Bench(args, tools, fx)
    ws_backend = bench.backends[1] if len(bench.backends) > 1 else None
    settings = Settings(
        tools=tools, duration=args.duration, work_dir=root,
        idle_connections=args.idle_connections, stream_bytes=stream_bytes,
        upload_file=fx.upload_file, ws_backend=ws_backend, load_cpu=LOAD_CPU,
    )  # fmt: skip
    rows: list[Row] = []
    status = 1
    try:
        bench.start_backend()
        bench.start_proxies()
        tls = {p.name: check_proxy(p) for p in bench.pairs["http"]}
        for name, params in tls.items():
            print(f"{name:<9} TLS: {params}")
        for proxy in bench.pairs.get("ws", ()):
            check_ws(proxy)
        for proxy in bench.pairs.get("workers", ()):
            check_proxy(proxy)
        print(f"temp dir {root}; proxies on CPU {PROXY_CPU}, clients+backend on CPU {LOAD_CPU}")
        for name in args.scenario:
            scenario = SCENARIOS[name]
            if name == "stream-rss":
                size = (f"{stream_bytes / GIB:g} GiB" if stream_bytes >= GIB
                        else f"{args.stream_mib} MiB")  # fmt: skip
                scenario = Scenario(**{**vars(scenario), "title": f"RSS growth, {size} up+down"})
            rounds = args.rounds if scenario.kind in ("ratio", "figure") else 1
            rows.append(run_scenario(bench, scenario, settings, rounds))
        status = 0
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        print(f"\nbench: {type(e).__name__}: {e}", file=sys.stderr)
    finally:
        bench.stop()
    if rows:
        print_table(rows, bench.candidate.name)
        args.results_dir.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = args.results_dir / f"{stamp}-{bench.candidate.name}.json"
        out.write_text(json.dumps({
            "environment": environment(args, tools),
            "settings": {"duration": args.duration, "rounds": args.rounds,
                         "quick": args.quick, "idle_connections": args.idle_connections,
                         "stream_bytes": stream_bytes, "candidate": bench.candidate.name},
            "complete": status == 0,
            "rows": [asdict(r) for r in rows],
        }, indent=2, default=str) + "\n")  # fmt: skip
        print(f"results: {out}")
    if args.keep_tmp or status:
        print(f"temp dir kept: {root}")
    else:
        with contextlib.suppress(OSError):
            shutil.rmtree(root)
    return status


if __name__ == "__main__":
    sys.exit(main())

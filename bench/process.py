"""Processes the bench starts: pinned to a core, waited for on their port, measured via /proc."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (needs CONFIG_PROC_CHILDREN, as on every common kernel)."""
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            kids += [int(k) for k in text.split()]
    return kids


def established(port: int, pids: list[int]) -> list[int]:
    """How many TCP connections on local ``port`` each of ``pids`` holds (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()  # local address, state 01 = established, inode
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    counts = []
    for pid in pids:
        held = 0
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    held += os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] in inodes
        counts.append(held)
    return counts


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time consumed so far by ``pid``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_busy_seconds(cpu: int) -> float:
    """Seconds CPU ``cpu`` spent on anything but idle and iowait, from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            ticks = [int(v) for v in line.split()[1:]]
            return (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLOCK_TICKS
    raise RuntimeError(f"no cpu{cpu} in /proc/stat")


@dataclass
class Service:
    """One running server: its argv, log, port, and which pid does the work."""

    name: str
    argv: list[str]
    port: int
    log: Path
    cwd: Path
    worker_is_child: bool  # nginx: the worker (child of the master) serves and is measured
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    cpus: str | None = None  # overrides ``cpu`` at start, e.g. "0,1" (the --workers scenario)
    children_serve: bool = False  # tlsproxy --workers: the children serve; CPU is summed

    def start(self, *, taskset: str, cpu: int) -> None:
        """Start pinned to ``cpu`` (taskset execs, so the pid is the server's own)."""
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(
                [taskset, "-c", self.cpus or str(cpu), *self.argv],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.cwd, start_new_session=True,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def measured_pid(self) -> int:
        """The process whose CPU and memory are the proxy's cost."""
        if not self.worker_is_child:
            return self.pid
        kids = children(self.pid)
        if len(kids) != 1:
            raise RuntimeError(f"{self.name}: expected one worker, found {kids}")
        return kids[0]

    def cpu_seconds(self) -> float:
        """CPU used so far by the process(es) doing the work (every worker, with --workers)."""
        if not self.children_serve:
            return cpu_seconds(self.measured_pid())
        return sum(cpu_seconds(pid) for pid in [self.pid, *children(self.pid)])

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float) -> None:
        """Wait until the port accepts connections; fail with the log if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} exited (status {self.popen.returncode if self.popen else '?'})"
                    f" before listening on {self.port}; its log {self.log}:\n{self.log_tail()}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                if not (self.worker_is_child or self.children_serve) or children(self.pid):
                    return
            time.sleep(0.1)
        raise RuntimeError(
            f"{self.name} not listening on {self.port} after {timeout:.0f}s; log {self.log}:\n"
            + self.log_tail()
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``: only this service's own process group."""
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait(5)

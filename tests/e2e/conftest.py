"""End-to-end fixtures: a scriptable plain-HTTP backend and real tlsproxy processes."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from .backend import Backend, BackendStarter
from .proxyprocess import ProxyFactory, ProxyProcess


@pytest.fixture(scope="module")
def backend_server() -> Iterator[Backend]:
    """The plain-HTTP backend of one test module, on 127.0.0.1:0."""
    server = Backend().start()
    yield server
    server.stop()


@pytest.fixture
def backend(backend_server: Backend) -> Iterator[Backend]:
    """The module's backend, reset: no connections, no records, ``METHOD target`` answers."""
    backend_server.reset()
    yield backend_server
    errors = list(backend_server.errors)
    assert not errors, "backend handler failed:\n" + "\n".join(errors)


@pytest.fixture
def backend_factory() -> Iterator[BackendStarter]:
    """Start extra backends (e.g. ``backend_factory(host="::1", family=socket.AF_INET6)``)."""
    started: list[Backend] = []

    def start(*, host: str, family: socket.AddressFamily) -> Backend:
        server = Backend(family=family, host=host).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
    errors = [error for server in started for error in server.errors]
    assert not errors, "backend handler failed:\n" + "\n".join(errors)


@pytest.fixture(scope="session")
def shared_certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One development-CA directory reused by every proxy that does not ask for its own."""
    return tmp_path_factory.mktemp("shared-certs")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The working directory tlsproxy runs in (where ``./certs`` would go)."""
    path = tmp_path / "run"
    path.mkdir()
    return path


@pytest.fixture
def proxy_factory(
    backend: Backend, workdir: Path, shared_certs_dir: Path
) -> Iterator[ProxyFactory]:
    """Start tlsproxy processes; at teardown stop them and fail if any printed a traceback."""
    factory = ProxyFactory(backend=backend, workdir=workdir, certs_dir=shared_certs_dir)
    yield factory
    problems = factory.stop_all()
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def shared_proxy(
    backend_server: Backend, tmp_path_factory: pytest.TempPathFactory, shared_certs_dir: Path
) -> Iterator[ProxyProcess]:
    """One default tlsproxy per test module (starting one per test would double the run time)."""
    factory = ProxyFactory(
        backend=backend_server,
        workdir=tmp_path_factory.mktemp("shared-proxy"),
        certs_dir=shared_certs_dir,
    )
    yield factory()
    problems = factory.stop_all()
    assert not problems, "\n".join(problems)


@pytest.fixture
def proxy(shared_proxy: ProxyProcess, backend: Backend) -> Iterator[ProxyProcess]:
    """The module's tlsproxy (default options, development CA) in front of ``backend``.

    Fails the test if the proxy has died, or if it prints a traceback during the test.
    """
    assert shared_proxy.process.poll() is None, "tlsproxy died:\n" + shared_proxy.output()
    start = len(shared_proxy.output())
    yield shared_proxy
    during = shared_proxy.output()[start:]
    assert "Traceback" not in during, "tlsproxy printed a traceback:\n" + during

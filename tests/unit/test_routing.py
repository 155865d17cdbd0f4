"""tlsproxy.routing: the pool for each request, and 421 for a misdirected one."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from tests.certfactory import NOW, make_leaf, write_pair
from tlsproxy.backendpool import BackendPool
from tlsproxy.routing import Router
from tlsproxy.tls.certset import CertificateSet, certificate_set
from tlsproxy.tls.certstore import load_certificate


def pool(name: str) -> BackendPool:
    return cast(BackendPool, name)  # the router only compares and returns pools


DEFAULT, APP, SHARED = pool("default"), pool("app"), pool("shared")


def certificates(tmp_path: Path, *names: tuple[str, ...]) -> CertificateSet:
    loaded = []
    for index, covered in enumerate(names):
        cert, key = write_pair(
            tmp_path, make_leaf(names=covered), cert_name=f"{index}.pem", key_name=f"{index}.key"
        )
        loaded.append(load_certificate(cert, key, now=NOW))
    return certificate_set(loaded)


@pytest.fixture
def router(tmp_path: Path) -> Router:
    served = certificates(tmp_path, ("default.test",), ("app.test",), ("*.shared.test",))
    return Router(DEFAULT, [("app.test", APP), ("*.shared.test", SHARED)], served)


@pytest.mark.parametrize(
    ("host", "sni", "expected"),
    [
        (b"app.test", "app.test", APP),
        (b"App.Test:8443", "app.test", APP),
        (b"app.test", None, APP),  # no SNI: never misdirected
        (None, "app.test", APP),  # no Host: the SNI name routes
        (None, None, DEFAULT),
        (b"x.shared.test", "y.shared.test", SHARED),  # same certificate, same backend
        (b"other.test", "nobody.test", DEFAULT),  # both unknown: default cert, default pool
        (b"[::1]:8443", None, DEFAULT),
    ],
)
def test_pick(router: Router, host: bytes | None, sni: str | None, expected: Any) -> None:
    assert router.pick(host, sni) is expected


@pytest.mark.parametrize(
    ("host", "sni"),
    [
        (b"app.test", "default.test"),  # another certificate and backend
        (b"default.test", "app.test"),
        (b"default.test", "x.shared.test"),
        (b"nobody.test", "x.shared.test"),  # an unknown Host on a wildcard's connection
    ],
)
def test_misdirected(router: Router, host: bytes, sni: str) -> None:
    assert router.pick(host, sni) is None


def test_one_certificate_and_no_route_needs_no_choice(tmp_path: Path) -> None:
    router = Router(DEFAULT, (), certificates(tmp_path, ("a.test",)))
    assert router.only is DEFAULT
    router.use_certificates(certificates(tmp_path, ("a.test",), ("b.test",)))
    assert router.only is None
    assert router.pick(b"b.test", "a.test") is None
    assert Router(DEFAULT).only is DEFAULT
    assert Router(DEFAULT, [("a.test", APP)]).only is None


def test_same_certificate_other_backend_is_misdirected(tmp_path: Path) -> None:
    router = Router(DEFAULT, [("app.test", APP)], certificates(tmp_path, ("*.test",)))
    assert router.pick(b"app.test", "web.test") is None
    assert router.pick(b"web.test", "www.test") is DEFAULT


def test_pools_lists_each_once_default_first(router: Router) -> None:
    extra = Router(DEFAULT, [("a.test", APP), ("b.test", APP), ("c.test", DEFAULT)])
    assert extra.pools() == [DEFAULT, APP]
    assert router.pools() == [DEFAULT, APP, SHARED]

"""check-config says whether a command line would start, with startup's own messages."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

from tlsproxy.check import run

NOW = datetime(2026, 11, 28, tzinfo=UTC)


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(list(argv), out=out, err=err, now=NOW)
    return code, out.getvalue(), err.getvalue()


def test_a_good_command_line_is_ok(tmp_path: Path) -> None:
    """Valid options exit 0 and list the backend, listeners and certificate names."""
    code, out, err = _run(
        "--backend", "http://127.0.0.1:8000", "--certs-dir", str(tmp_path / "certs")
    )
    assert (code, err) == (0, "")
    assert "configuration OK" in out
    assert "backend: http://127.0.0.1:8000" in out
    assert "tcp:8443:interface=127.0.0.1" in out
    assert "names: localhost, 127.0.0.1, ::1" in out


def test_a_bad_value_is_the_startup_message(tmp_path: Path) -> None:
    """A bad flag value exits 2 with the same one line startup prints."""
    code, out, err = _run("--backend", "ftp://x", "--certs-dir", str(tmp_path))
    assert code == 2
    assert out == ""
    assert err.startswith("tlsproxy: error: --backend 'ftp://x'")
    assert len(err.strip().splitlines()) == 1


def test_an_unknown_flag_is_named(tmp_path: Path) -> None:
    """A misspelt flag exits 2 and names it."""
    code, _, err = _run("--bakend", "http://127.0.0.1:8000")
    assert code == 2
    assert "--bakend" in err


def test_a_missing_certificate_is_found(tmp_path: Path) -> None:
    """Certificates are loaded as at startup: a missing --cert file fails the check."""
    code, _, err = _run(
        "--backend", "http://127.0.0.1:8000", "--cert", str(tmp_path / "missing.pem")
    )
    assert code == 2
    assert "missing.pem" in err


def test_routes_are_listed_and_checked(tmp_path: Path) -> None:
    """Each --route is shown; a bad one is startup's one-line refusal."""
    certs = ("--certs-dir", str(tmp_path / "certs"))
    code, out, _ = _run(
        "--backend", "http://127.0.0.1:8000", "--route", "app.test=unix:/run/app.sock", *certs
    )
    assert code == 0
    assert "route: app.test → unix:/run/app.sock" in out
    assert "workers" not in out
    _, out, _ = _run("--backend", "http://127.0.0.1:8000", "--workers", "3", *certs)
    assert "workers: 3 processes" in out
    code, _, err = _run(
        "--backend", "http://127.0.0.1:8000", "--route", "app.test=http://x:0", *certs
    )
    assert code == 2
    assert err.startswith("tlsproxy: error: --route 'app.test=http://x:0': port 0 is not a port")

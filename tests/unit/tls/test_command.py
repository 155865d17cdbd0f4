"""tlsproxy.tls.command: `tlsproxy certs`, making development certificates or explaining a pair."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import pytest

from tests.certfactory import NOW, key_pem, make_ca, make_leaf, rsa_key, write_pair, write_pem
from tlsproxy.tls.command import run


def certs(*argv: str) -> tuple[int, str, str]:
    """Run `tlsproxy certs ARGV` at NOW: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = run(list(argv), out=out, err=err, now=NOW)
    return code, out.getvalue(), err.getvalue()


# --- development certificates ----------------------------------------------------------------


def test_makes_development_certificates_and_says_so(tmp_path: Path) -> None:
    """With no --cert, the CA and leaf are made and every part of the report is printed."""
    certs_dir = tmp_path / "certs"

    code, out, err = certs("--certs-dir", str(certs_dir))

    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"created development CA {certs_dir / 'ca.pem'}"
    assert lines[1].startswith(f"issued leaf {certs_dir / 'localhost.pem'} for localhost, ")
    assert f"  {certs_dir / 'ca-key.pem'}  the CA key (owner-only; never share it)" in lines
    assert f"  {certs_dir / 'localhost-key.pem'}  the leaf key (owner-only)" in lines
    assert "  names: localhost, 127.0.0.1, ::1" in lines
    assert any(line.startswith("  sha256 fingerprint: ") for line in lines)
    assert "to trust the CA:" in lines
    assert any("--cacert" in line and str(certs_dir / "ca.pem") in line for line in lines)
    assert (certs_dir / "ca.pem").exists()


def test_second_run_reports_reuse(tmp_path: Path) -> None:
    """Running twice reuses the CA and leaf, and says so."""
    certs("--certs-dir", str(tmp_path))

    code, out, _ = certs("--certs-dir", str(tmp_path))

    assert code == 0
    assert out.splitlines()[0].startswith("reused development CA")
    assert out.splitlines()[1].startswith("reused leaf")


def test_hostnames_are_added(tmp_path: Path) -> None:
    """--hostname (repeatable) adds names to the leaf."""
    code, out, _ = certs(
        "--certs-dir", str(tmp_path), "--hostname", "app.test", "--hostname", "10.0.0.5"
    )

    assert code == 0
    assert "  names: localhost, app.test, 127.0.0.1, ::1, 10.0.0.5" in out.splitlines()


def test_hostname_outside_the_ca_is_a_one_line_error(tmp_path: Path) -> None:
    """A name the existing CA may not sign exits 1 with the one-line explanation."""
    certs("--certs-dir", str(tmp_path))

    code, out, err = certs("--certs-dir", str(tmp_path), "--hostname", "example.com")

    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("tlsproxy certs: error: example.com is outside the names")


# --- explaining a given pair -----------------------------------------------------------------


def test_good_pair_is_explained(tmp_path: Path) -> None:
    """--cert/--key of a good pair prints the description and "ok", exit 0."""
    cert_path, key_path = write_pair(tmp_path, make_leaf(make_ca("Some CA")))

    code, out, err = certs("--cert", str(cert_path), "--key", str(key_path))

    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"certificate {cert_path}, key {key_path}"
    assert "names: localhost, 127.0.0.1, ::1" in lines
    assert lines[-1] == "ok: tlsproxy can serve this certificate"
    assert not any(line.startswith("warning:") for line in lines)


def test_warnings_are_printed_and_still_exit_0(tmp_path: Path) -> None:
    """A usable pair with problems (no SAN, self-signed) prints warnings and exits 0."""
    cert_path, key_path = write_pair(tmp_path, make_leaf(san=False))

    code, out, _ = certs("--cert", str(cert_path), "--key", str(key_path))

    assert code == 0
    warnings = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2
    assert "subjectAltName" in warnings[0]
    assert "self-signed" in warnings[1]


def test_hostname_not_covered_is_a_warning(tmp_path: Path) -> None:
    """With --cert, --hostname names the certificate does not cover are warned about."""
    cert_path, key_path = write_pair(tmp_path, make_leaf(make_ca()))

    code, out, _ = certs(
        "--cert",
        str(cert_path),
        "--key",
        str(key_path),
        "--hostname",
        "localhost",
        "--hostname",
        "app.test",
    )

    assert code == 0
    assert "warning: the certificate does not cover app.test" in out.splitlines()


def test_unusable_pair_exits_1_with_one_line(tmp_path: Path) -> None:
    """A weak key exits 1 with the same single line startup would print."""
    cert_path, key_path = write_pair(tmp_path, make_leaf(key=rsa_key(1024)))

    code, out, err = certs("--cert", str(cert_path), "--key", str(key_path))

    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("tlsproxy certs: error: the RSA key in ")
    assert "openssl genrsa -out key.pem 2048" in err


def test_key_in_the_certificate_file(tmp_path: Path) -> None:
    """--cert alone works when the key is in the same file."""
    leaf = make_leaf(make_ca())
    both = write_pem(tmp_path / "both.pem", leaf.cert, leaf.key)

    code, out, _ = certs("--cert", str(both))

    assert code == 0
    assert out.splitlines()[0] == f"certificate {both}"


def test_passphrase_file_decrypts_the_key(tmp_path: Path) -> None:
    """--key-passphrase-file is read, one trailing newline dropped, and decrypts the key."""
    leaf = make_leaf(make_ca())
    cert_path = write_pem(tmp_path / "cert.pem", leaf.cert)
    key_path = write_pem(tmp_path / "key.pem", key_pem(leaf.key, passphrase=b"open sesame"))
    (tmp_path / "pass").write_bytes(b"open sesame\n")

    code, _, err = certs(
        "--cert",
        str(cert_path),
        "--key",
        str(key_path),
        "--key-passphrase-file",
        str(tmp_path / "pass"),
    )

    assert (code, err) == (0, "")


def test_missing_passphrase_file(tmp_path: Path) -> None:
    """A passphrase file that does not exist is a one-line error naming the flag."""
    cert_path, key_path = write_pair(tmp_path, make_leaf())

    code, _, err = certs(
        "--cert",
        str(cert_path),
        "--key",
        str(key_path),
        "--key-passphrase-file",
        str(tmp_path / "nope"),
    )

    assert code == 1
    assert "passphrase file" in err
    assert "--key-passphrase-file" in err


def test_expired_certificate_uses_the_given_time(tmp_path: Path) -> None:
    """The check runs at the command's `now`: an expired certificate exits 1."""
    leaf = make_leaf(not_before=NOW - timedelta(days=60), not_after=NOW - timedelta(days=1))

    cert_path, key_path = write_pair(tmp_path, leaf)

    code, _, err = certs("--cert", str(cert_path), "--key", str(key_path))

    assert code == 1
    assert "expired on" in err


# --- usage -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--key", "k.pem"],
        ["--key-passphrase-file", "p"],
        ["--cert", "c.pem", "--certs-dir", "certs"],
        ["--bogus"],
    ],
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    """Contradictory or unknown flags are usage errors (exit 2) on stderr."""
    code, out, err = certs(*argv)

    assert code == 2
    assert out == ""
    assert "usage: tlsproxy certs" in err
    assert "tlsproxy certs: error:" in err


def test_help_goes_to_out() -> None:
    """--help prints usage to stdout and exits 0."""
    code, out, err = certs("--help")

    assert (code, err) == (0, "")
    assert "usage: tlsproxy certs" in out
    assert "--key-passphrase-file" in out

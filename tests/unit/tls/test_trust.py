"""tlsproxy.tls.trust: `tlsproxy trust`, the development CA installed in (and removed from) stores.

NSS databases are real ones made by NSS's own ``certutil`` in ``tmp_path`` (it is cheap); the
system store is only ever a temporary root here, never this machine's. The whole scenario with a
real TLS handshake is in tests/e2e/test_trust.py.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest

from tests.certfactory import NOW, cert_pem, make_ca
from tlsproxy.tls.devca import ensure_dev_certificates
from tlsproxy.tls.nss import parse_certutil_list
from tlsproxy.tls.trust import client_lines, run
from tlsproxy.tls.trustrecord import CA, RECORD_NAME, Entry, read_record


def trust(*argv: str, home: Path) -> tuple[int, str, str]:
    """Run `tlsproxy trust ARGV` at NOW with ``home`` as $HOME: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = run(list(argv), out=out, err=err, home=home, now=NOW)
    return code, out.getvalue(), err.getvalue()


def nss_rows(db: Path) -> dict[str, str]:
    """{nickname: trust flags} of the NSS database ``db``, as certutil lists them."""
    done = subprocess.run(
        ["certutil", "-L", "-d", f"sql:{db}"], capture_output=True, text=True, check=True
    )
    return dict(parse_certutil_list(done.stdout))


def make_nss_db(db: Path) -> Path:
    """An empty NSS database at ``db``, as a browser makes one."""
    db.mkdir(parents=True)
    subprocess.run(["certutil", "-N", "-d", f"sql:{db}", "--empty-password"], check=True)
    return db


def dev_ca(certs_dir: Path) -> CA:
    """A development CA made by tlsproxy's own code in ``certs_dir``."""
    return CA.load(ensure_dev_certificates(certs_dir, (), now=NOW).ca_cert_path)


# --- pure parts ------------------------------------------------------------------------------


def test_client_lines_prefer_the_system_bundle(tmp_path: Path) -> None:
    """With the system store trusted, Python clients get the bundle (public CAs kept)."""
    ca = dev_ca(tmp_path / "certs")
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")

    with_bundle, _ = client_lines(ca, bundle)
    alone, note = client_lines(ca, None)

    assert with_bundle == [
        f"NODE_EXTRA_CA_CERTS={ca.path}",
        f"REQUESTS_CA_BUNDLE={bundle}",
        f"SSL_CERT_FILE={bundle}",
    ]
    assert alone == [
        f"NODE_EXTRA_CA_CERTS={ca.path}",
        f"REQUESTS_CA_BUNDLE={ca.path}",
        f"SSL_CERT_FILE={ca.path}",
    ]
    assert "replace" in note


# --- NSS databases, with the real certutil ----------------------------------------------------


def test_installs_into_a_new_nss_database(tmp_path: Path, certutil: str) -> None:
    """--nss-db makes the database if needed and trusts the CA for websites (C,,)."""
    db, certs = tmp_path / "nssdb", tmp_path / "certs"

    code, out, err = trust(
        "--certs-dir", str(certs), "--no-system", "--nss-db", str(db), home=tmp_path
    )

    assert (code, err) == (0, "")
    ca = CA.load(certs / "ca.pem")
    assert nss_rows(db) == {ca.name: "C,,"}
    assert f"NSS database {db}: installed: as {ca.name} (trust C,,)" in out.splitlines()
    assert f"created development CA {certs / 'ca.pem'}" in out.splitlines()
    assert f"  NODE_EXTRA_CA_CERTS={ca.path}" in out.splitlines()
    assert read_record(certs / RECORD_NAME, ca) == {Entry("nss", str(db))}


def test_second_run_installs_nothing(tmp_path: Path, certutil: str) -> None:
    """Running twice finds the CA trusted and leaves one entry in the database."""
    db, certs = tmp_path / "nssdb", tmp_path / "certs"
    args = ("--certs-dir", str(certs), "--no-system", "--nss-db", str(db))
    trust(*args, home=tmp_path)

    code, out, _ = trust(*args, home=tmp_path)

    ca = CA.load(certs / "ca.pem")
    assert code == 0
    assert f"NSS database {db}: already trusted: as {ca.name}" in out.splitlines()
    assert "summary: installed in 0, already trusted in 1, skipped 0" in out.splitlines()
    assert nss_rows(db) == {ca.name: "C,,"}


def test_discovered_databases_are_used_by_default(tmp_path: Path, certutil: str) -> None:
    """Without --nss-db, Chromium's ~/.pki/nssdb and each Firefox profile get the CA."""
    chromium = make_nss_db(tmp_path / ".pki" / "nssdb")
    firefox = make_nss_db(tmp_path / ".mozilla" / "firefox" / "x1.default-release")
    certs = tmp_path / "certs"

    code, out, _ = trust("--certs-dir", str(certs), "--no-system", home=tmp_path)

    ca = CA.load(certs / "ca.pem")
    assert code == 0
    assert nss_rows(chromium) == {ca.name: "C,,"}
    assert nss_rows(firefox) == {ca.name: "C,,"}
    assert "summary: installed in 2, already trusted in 0, skipped 0" in out.splitlines()


def test_uninstall_removes_only_this_ca(tmp_path: Path, certutil: str) -> None:
    """--uninstall deletes this CA's entry; another tlsproxy CA and a hand-added CA stay."""
    db = tmp_path / "nssdb"
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    trust("--certs-dir", str(theirs), "--no-system", "--nss-db", str(db), home=tmp_path)
    trust("--certs-dir", str(mine), "--no-system", "--nss-db", str(db), home=tmp_path)
    company = tmp_path / "company.pem"
    company.write_bytes(cert_pem(make_ca("Company Root").cert))
    subprocess.run(
        ["certutil", "-A", "-d", f"sql:{db}", "-t", "C,,", "-n", "company", "-i", str(company)],
        check=True,
    )
    other_ca = CA.load(theirs / "ca.pem")

    code, out, err = trust(
        "--certs-dir", str(mine), "--no-system", "--nss-db", str(db), "--uninstall", home=tmp_path
    )

    ca = CA.load(mine / "ca.pem")
    assert (code, err) == (0, "")
    assert f"NSS database {db}: removed: {ca.name}" in out.splitlines()
    assert nss_rows(db) == {other_ca.name: "C,,", "company": "C,,"}
    assert not (mine / RECORD_NAME).exists()
    assert read_record(theirs / RECORD_NAME, other_ca) == {Entry("nss", str(db))}


def test_uninstall_uses_the_record_of_databases_named_at_install(
    tmp_path: Path, certutil: str
) -> None:
    """A database named with --nss-db when installing is cleaned by a plain --uninstall."""
    db, certs = tmp_path / "elsewhere" / "nssdb", tmp_path / "certs"
    trust("--certs-dir", str(certs), "--no-system", "--nss-db", str(db), home=tmp_path)

    code, out, _ = trust("--certs-dir", str(certs), "--no-system", "--uninstall", home=tmp_path)

    assert code == 0
    assert nss_rows(db) == {}
    assert "summary: removed from 1, not in 0, skipped 0" in out.splitlines()


def test_uninstall_of_one_database_keeps_the_others_on_record(
    tmp_path: Path, certutil: str
) -> None:
    """Removing from one --nss-db says which recorded databases still hold the CA."""
    first, second, certs = tmp_path / "first", tmp_path / "second", tmp_path / "certs"
    base = ("--certs-dir", str(certs), "--no-system")
    trust(*base, "--nss-db", str(first), "--nss-db", str(second), home=tmp_path)

    code, out, _ = trust(*base, "--nss-db", str(first), "--uninstall", home=tmp_path)

    ca = CA.load(certs / "ca.pem")
    assert code == 0
    assert nss_rows(first) == {}
    assert nss_rows(second) == {ca.name: "C,,"}
    assert f"still installed (not asked to look there this time): nss {second}" in out
    assert read_record(certs / RECORD_NAME, ca) == {Entry("nss", str(second))}


def test_uninstall_that_cannot_reach_a_store_exits_1(
    tmp_path: Path, certutil: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recorded store that cannot be cleaned (no certutil now) fails the removal, on record."""
    db, certs = tmp_path / "nssdb", tmp_path / "certs"
    trust("--certs-dir", str(certs), "--no-system", "--nss-db", str(db), home=tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))

    code, out, err = trust("--certs-dir", str(certs), "--no-system", "--uninstall", home=tmp_path)

    ca = CA.load(certs / "ca.pem")
    assert code == 1
    assert f"certutil -d sql:{db} -D -n {ca.name}" in out
    assert err == f"tlsproxy trust: error: the CA is still installed in: NSS database {db}\n"
    assert read_record(certs / RECORD_NAME, ca) == {Entry("nss", str(db))}


def test_a_ca_added_by_hand_is_reported_and_left_alone(tmp_path: Path, certutil: str) -> None:
    """The CA already trusted under another nickname is not added again, nor removed later."""
    db, certs = make_nss_db(tmp_path / "nssdb"), tmp_path / "certs"
    ca = dev_ca(certs)
    by_hand = ["certutil", "-A", "-d", f"sql:{db}", "-t", "C,,", "-n", "tlsproxy-dev-ca"]
    subprocess.run([*by_hand, "-i", str(ca.path)], check=True)
    args = ("--certs-dir", str(certs), "--no-system", "--nss-db", str(db))

    code, out, _ = trust(*args, home=tmp_path)
    assert code == 0
    assert "already trusted: the CA is there as 'tlsproxy-dev-ca' (trust C,,)" in out
    assert not (certs / RECORD_NAME).exists()

    code, out, _ = trust(*args, "--uninstall", home=tmp_path)
    assert code == 0
    assert nss_rows(db) == {"tlsproxy-dev-ca": "C,,"}


def test_distrusted_entry_of_ours_is_trusted_again(tmp_path: Path, certutil: str) -> None:
    """Our entry with its trust flags cleared (-t ,,) is trusted again, not duplicated."""
    db, certs = tmp_path / "nssdb", tmp_path / "certs"
    args = ("--certs-dir", str(certs), "--no-system", "--nss-db", str(db))
    trust(*args, home=tmp_path)
    ca = CA.load(certs / "ca.pem")
    subprocess.run(["certutil", "-M", "-d", f"sql:{db}", "-n", ca.name, "-t", ",,"], check=True)

    code, out, _ = trust(*args, home=tmp_path)

    assert code == 0
    assert f"NSS database {db}: installed: as {ca.name} (trust C,,)" in out.splitlines()
    assert nss_rows(db) == {ca.name: "C,,"}


def test_missing_certutil_skips_with_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without certutil the step is skipped with the package and the exact command; exit 1."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    db, certs = tmp_path / "nssdb", tmp_path / "certs"

    code, out, err = trust(
        "--certs-dir", str(certs), "--no-system", "--nss-db", str(db), home=tmp_path
    )

    ca = CA.load(certs / "ca.pem")
    assert code == 1
    line = next(line for line in out.splitlines() if line.startswith(f"NSS database {db}:"))
    assert "skipped: certutil not found" in line
    assert "apt-get install libnss3-tools" in line
    assert f"certutil -d sql:{db} -A -t C,, -n {ca.name} -i {ca.path}" in line
    assert "summary: installed in 0, already trusted in 0, skipped 1" in out
    assert (
        err == f"tlsproxy trust: error: no store trusts the CA {ca.path}; do a step above by hand\n"
    )
    assert not db.exists()


def test_missing_browser_databases_are_each_a_line(tmp_path: Path) -> None:
    """Without Chromium's database or a Firefox profile, each is "not there", with what to do."""
    code, out, _ = trust("--certs-dir", str(tmp_path / "certs"), "--no-system", home=tmp_path)

    chromium = tmp_path / ".pki" / "nssdb"
    assert code == 1
    assert (
        f"Chromium/Chrome NSS database {chromium}: not there: the browser makes it on first "
        f"start; to make it and trust the CA now: python -m tlsproxy trust --nss-db {chromium}"
    ) in out.splitlines()
    firefox = tmp_path / ".mozilla" / "firefox"
    assert f"Firefox profiles {firefox}: not there: none with a cert9.db" in out.splitlines()


def test_uninstall_without_a_ca_has_nothing_to_do(tmp_path: Path) -> None:
    """--uninstall never makes a CA: with none, it says there is nothing to remove."""
    code, out, _ = trust("--certs-dir", str(tmp_path / "certs"), "--uninstall", home=tmp_path)

    assert code == 0
    assert out == f"no development CA at {tmp_path / 'certs' / 'ca.pem'}: nothing to remove\n"
    assert not (tmp_path / "certs").exists()


def test_a_broken_ca_is_an_error(tmp_path: Path) -> None:
    """A ca.pem tlsproxy cannot use stops the command with devca's one-line explanation."""
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.pem").write_text("junk\n")

    code, out, err = trust("--certs-dir", str(certs), "--no-system", home=tmp_path)

    assert (code, out) == (1, "")
    assert err.startswith("tlsproxy trust: error: the development CA ")
    assert err.count("\n") == 1


def test_usage_error_exits_2(tmp_path: Path) -> None:
    """An unknown option is a usage error that names the command."""
    code, _, err = trust("--bogus", home=tmp_path)

    assert code == 2
    assert "tlsproxy trust: error: unrecognized arguments: --bogus" in err

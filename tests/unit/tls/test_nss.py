"""tlsproxy.tls.nss: finding the browsers' NSS databases, and certutil reading and changing them.

The databases are real ones made by NSS's own ``certutil`` in ``tmp_path`` (it is cheap).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.certfactory import cert_pem, make_ca
from tlsproxy.tls.nss import (
    Certutil,
    NssDatabase,
    add_command,
    delete_command,
    discover_nss_databases,
    parse_certutil_list,
    trust_command,
    trusts_websites,
)


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    """A CA certificate in PEM, to add to databases."""
    path = tmp_path / "ca.pem"
    path.write_bytes(cert_pem(make_ca("Test Root").cert))
    return path


def test_certutil_listing_is_parsed_with_spaces_in_nicknames() -> None:
    """Rows of `certutil -L` become (nickname, flags); header rows and blank lines are skipped."""
    # As certutil prints it: the trust column padded with trailing spaces.
    text = (
        "\n"
        "Certificate Nickname                                         Trust Attributes\n"
        "                                                             SSL,S/MIME,JAR/XPI\n"
        "\n"
        "tlsproxy-dev-ca-0123456789abcdef                             C,,  \n"
        "My Company Root CA                                           CT,C,C\n"
        "untrusted                                                    ,,   \n"
        "Builtin Object Token:ISRG Root X1                            CT,C,C\n"
    )

    assert parse_certutil_list(text) == [
        ("tlsproxy-dev-ca-0123456789abcdef", "C,,"),
        ("My Company Root CA", "CT,C,C"),
        ("untrusted", ",,"),
        ("Builtin Object Token:ISRG Root X1", "CT,C,C"),
    ]


def test_only_the_c_flag_in_the_ssl_field_trusts_a_ca_for_websites() -> None:
    """C in the first (SSL) field trusts a CA for websites; C elsewhere, or P, does not."""
    assert trusts_websites("C,,")
    assert trusts_websites("CT,C,C")
    assert not trusts_websites(",C,C")
    assert not trusts_websites("P,,")
    assert not trusts_websites(",,")


def test_discovery_finds_chromium_and_firefox_databases(tmp_path: Path) -> None:
    """~/.pki/nssdb and each Firefox profile holding a cert9.db are found; others are not."""
    (tmp_path / ".pki" / "nssdb").mkdir(parents=True)
    (tmp_path / ".pki" / "nssdb" / "cert9.db").touch()
    firefox = tmp_path / ".mozilla" / "firefox"
    for profile in ("abc.default-release", "old.default"):
        (firefox / profile).mkdir(parents=True)
    (firefox / "abc.default-release" / "cert9.db").touch()
    (firefox / "old.default" / "cert8.db").touch()

    found, missing = discover_nss_databases(tmp_path)

    assert [db.path for db in found] == [tmp_path / ".pki/nssdb", firefox / "abc.default-release"]
    assert "Chromium" in found[0].label
    assert "Firefox profile abc.default-release" in found[1].label
    assert not any(db.create for db in found)
    assert all(db.exists() for db in found)
    assert missing == []


def test_discovery_explains_what_is_missing(tmp_path: Path) -> None:
    """Without Chromium's database or a Firefox profile, each says so, with how to make one."""
    found, missing = discover_nss_databases(tmp_path)

    assert found == []
    assert f"--nss-db {tmp_path / '.pki/nssdb'}" in missing[0].detail
    assert "Firefox" in missing[1].label


def test_commands_by_hand_quote_what_the_shell_would_split(tmp_path: Path) -> None:
    """The printed certutil commands name the database as sql:DIR, quoted when it has spaces."""
    db, ca = tmp_path / "my db", tmp_path / "ca.pem"

    assert add_command(db, "dev-ca", ca) == f"certutil -d 'sql:{db}' -A -t C,, -n dev-ca -i {ca}"
    assert trust_command(db, "My CA") == f"certutil -d 'sql:{db}' -M -n 'My CA' -t C,,"
    assert delete_command(db, "dev-ca") == f"certutil -d 'sql:{db}' -D -n dev-ca"


def test_certutil_adds_lists_exports_and_deletes(
    tmp_path: Path, certutil: str, ca_file: Path
) -> None:
    """A made database takes the CA trusted for websites, gives it back as PEM, then loses it."""
    db = NssDatabase(tmp_path / "nssdb", "test database", create=True)
    tool = Certutil(certutil)

    tool.create(db.path)
    tool.add(db.path, "test-ca", ca_file)

    assert db.exists()
    assert tool.entries(db.path) == [("test-ca", "C,,")]
    assert tool.pem(db.path, "test-ca").replace(b"\r\n", b"\n") == ca_file.read_bytes()
    assert tool.pem(db.path, "nobody") == b""
    tool.delete(db.path, "test-ca")
    assert tool.entries(db.path) == []


def test_a_failing_certutil_is_one_line(tmp_path: Path, certutil: str) -> None:
    """certutil's complaint about a database that is not there becomes one OSError line."""
    with pytest.raises(OSError, match=r"^certutil failed: [^\n]+$"):
        Certutil(certutil).entries(tmp_path / "nowhere")


def test_a_certutil_that_does_not_answer_times_out(tmp_path: Path) -> None:
    """A certutil that hangs is stopped after its timeout, with an OSError that says so."""
    sleeper = tmp_path / "certutil"
    sleeper.write_text("#!/bin/sh\nsleep 10\n")
    sleeper.chmod(0o755)

    with pytest.raises(OSError, match=r"^certutil did not answer within 0\.2 s$"):
        Certutil(str(sleeper), timeout=0.2).entries(tmp_path)


def test_certutil_never_reads_the_terminal(tmp_path: Path) -> None:
    """certutil's stdin is empty, so a password prompt fails instead of waiting."""
    reader = tmp_path / "certutil"
    reader.write_text("#!/bin/sh\ncat\n")
    reader.chmod(0o755)

    done = Certutil(str(reader), timeout=5).run(tmp_path)

    assert (done.returncode, done.stdout) == (0, b"")

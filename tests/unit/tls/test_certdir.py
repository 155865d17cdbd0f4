"""tlsproxy.tls.certdir: pairs found by content, in every common layout."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa

from tests.certfactory import (
    NOW,
    Issued,
    cert_der,
    cert_pem,
    key_pem,
    make_ca,
    make_leaf,
    write_pem,
)
from tlsproxy.tls.certdir import ScannedPair, scan
from tlsproxy.tls.devca import ensure_dev_certificates
from tlsproxy.tls.pemfile import CertificateError


def _intermediate_ca() -> tuple[Issued, Issued]:
    root = make_ca("Root")
    intermediate = make_ca("Intermediate", issuer=root)
    return root, intermediate


def test_names_do_not_matter_only_contents(tmp_path: Path) -> None:
    """mkcert, .crt/.key, a combined file and the tutorial's names are all paired right."""
    leaves = [make_leaf(names=(f"s{i}.test",)) for i in range(4)]
    write_pem(tmp_path / "s0.test.pem", leaves[0].cert)
    write_pem(tmp_path / "s0.test-key.pem", leaves[0].key)
    write_pem(tmp_path / "site.crt", leaves[1].cert)
    write_pem(tmp_path / "site.key", leaves[1].key)
    write_pem(tmp_path / "combined.pem", leaves[2].cert, leaves[2].key)
    write_pem(tmp_path / "key-cert.pem", leaves[3].cert)
    write_pem(tmp_path / "key.pem", leaves[3].key)
    pairs, warnings = scan(tmp_path)
    assert warnings == []
    assert pairs == [
        ScannedPair(tmp_path / "combined.pem", tmp_path / "combined.pem"),
        ScannedPair(tmp_path / "key-cert.pem", tmp_path / "key.pem"),
        ScannedPair(tmp_path / "s0.test.pem", tmp_path / "s0.test-key.pem"),
        ScannedPair(tmp_path / "site.crt", tmp_path / "site.key"),
    ]


def test_certbot_live_folders_use_fullchain_and_skip_the_chain(tmp_path: Path) -> None:
    """live/NAME/{cert,chain,fullchain,privkey}.pem, through symlinks as certbot makes them."""
    _, intermediate = _intermediate_ca()
    leaf = make_leaf(intermediate, names=("example.test",))
    archive = tmp_path / "archive"
    archive.mkdir()
    write_pem(archive / "cert1.pem", leaf.cert)
    write_pem(archive / "chain1.pem", intermediate.cert)
    write_pem(archive / "fullchain1.pem", leaf.cert, intermediate.cert)
    write_pem(archive / "privkey1.pem", leaf.key)
    live = tmp_path / "live"
    site = live / "example.test"
    site.mkdir(parents=True)
    for name in ("cert", "chain", "fullchain", "privkey"):
        (site / f"{name}.pem").symlink_to(archive / f"{name}1.pem")
    (site / "README").write_text("certbot's")
    pairs, warnings = scan(live)
    assert pairs == [ScannedPair(site / "fullchain.pem", site / "privkey.pem")]
    assert warnings == []


def test_a_ca_with_its_key_is_not_a_server_certificate(tmp_path: Path) -> None:
    """The development CA (key usage: certificate signing) is skipped; its leaf pairs."""
    dev = ensure_dev_certificates(tmp_path, (), now=NOW)
    pairs, [warning] = scan(tmp_path)
    assert pairs == [ScannedPair(dev.cert_path, dev.key_path)]
    assert warning.startswith(f"{dev.ca_cert_path}: a CA certificate (it may sign certificates)")
    assert scan(tmp_path, skip={"ca.pem", "ca-key.pem"}) == (pairs, [])


def test_hidden_files_and_other_suffixes_are_ignored(tmp_path: Path) -> None:
    leaf = make_leaf()
    write_pem(tmp_path / ".hidden.pem", leaf.cert, leaf.key)
    write_pem(tmp_path / "notes.txt", leaf.cert, leaf.key)
    assert scan(tmp_path) == ([], [])


def test_skipped_names_are_not_read(tmp_path: Path) -> None:
    leaf = make_leaf()
    write_pem(tmp_path / "localhost.pem", leaf.cert)
    write_pem(tmp_path / "localhost-key.pem", leaf.key)
    assert scan(tmp_path, skip={"localhost.pem", "localhost-key.pem"}) == ([], [])
    assert len(scan(tmp_path)[0]) == 1


def test_a_certificate_without_its_key_is_left_out_with_a_warning(tmp_path: Path) -> None:
    leaf, other = make_leaf(), make_leaf()
    write_pem(tmp_path / "site.pem", leaf.cert)
    write_pem(tmp_path / "other.key", other.key)
    pairs, [warning] = scan(tmp_path)
    assert pairs == []
    assert warning == f"{tmp_path / 'site.pem'}: no key in its folder matches it; not served"


def test_a_key_in_another_folder_is_not_used(tmp_path: Path) -> None:
    leaf = make_leaf()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_pem(tmp_path / "a" / "cert.pem", leaf.cert)
    write_pem(tmp_path / "b" / "key.pem", leaf.key)
    pairs, warnings = scan(tmp_path)
    assert pairs == []
    assert len(warnings) == 1


def test_an_encrypted_key_needs_the_passphrase(tmp_path: Path) -> None:
    leaf = make_leaf()
    write_pem(tmp_path / "site.pem", leaf.cert)
    (tmp_path / "site.key").write_bytes(key_pem(leaf.key, passphrase=b"secret"))
    with pytest.raises(CertificateError, match="is encrypted"):
        scan(tmp_path)
    assert scan(tmp_path, passphrase=b"secret")[0] == [
        ScannedPair(tmp_path / "site.pem", tmp_path / "site.key")
    ]


def test_an_unreadable_directory_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "file.pem").write_bytes(cert_pem(make_leaf().cert))
    with pytest.raises(CertificateError, match="cannot read the certificates directory"):
        scan(tmp_path / "file.pem" / "x")  # NotADirectoryError: an OSError like EACCES


def test_a_missing_directory_holds_nothing(tmp_path: Path) -> None:
    assert scan(tmp_path / "missing") == ([], [])


def test_the_leaf_is_the_certificate_matched(tmp_path: Path) -> None:
    leaf = make_leaf(names=("x.test",), now=NOW)
    write_pem(tmp_path / "x.pem", leaf.cert, leaf.key)
    [pair], _ = scan(tmp_path)
    first = x509.load_pem_x509_certificates(pair.cert.read_bytes())[0]
    assert first == leaf.cert


def test_stray_files_are_left_out_with_a_warning(tmp_path: Path) -> None:
    """Not PEM, too large, an unusable key: warned about, and the good pair still serves."""
    leaf = make_leaf(names=("good.test",))
    write_pem(tmp_path / "good.pem", leaf.cert, leaf.key)
    (tmp_path / "binary.cer").write_bytes(cert_der(make_leaf().cert))
    with open(tmp_path / "huge.pem", "wb") as huge:
        huge.truncate(2 * 1024 * 1024)
    (tmp_path / "old-dsa.key").write_bytes(key_pem(dsa.generate_private_key(2048)))
    pairs, warnings = scan(tmp_path)
    assert pairs == [ScannedPair(tmp_path / "good.pem", tmp_path / "good.pem")]
    assert sorted(warnings) == [
        f"{tmp_path / 'binary.cer'}: not a PEM file; not served",
        f"{tmp_path / 'huge.pem'}: 2097152 bytes, too large for a PEM certificate or key; "
        "not served",
        f"{tmp_path / 'old-dsa.key'}: it holds a private key no TLS server can use (corrupt, "
        "or DSA); not served",
    ]


def test_a_broken_link_stops_the_scan(tmp_path: Path) -> None:
    """certbot's privkey.pem pointing nowhere must not silently drop the site."""
    (tmp_path / "privkey.pem").symlink_to(tmp_path / "archive" / "privkey1.pem")
    with pytest.raises(CertificateError, match="symbolic link to a file that does not exist"):
        scan(tmp_path)


def test_the_same_leaf_reached_twice_is_one_pair(tmp_path: Path) -> None:
    leaf = make_leaf(names=("once.test",))
    site = tmp_path / "site"
    site.mkdir()
    write_pem(site / "cert.pem", leaf.cert)
    write_pem(site / "key.pem", leaf.key)
    (tmp_path / "again").symlink_to(site)
    pairs, warnings = scan(tmp_path)
    assert pairs == [ScannedPair(tmp_path / "again" / "cert.pem", tmp_path / "again" / "key.pem")]
    assert warnings == []

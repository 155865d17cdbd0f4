"""tlsproxy.tls.certset and certsource: which certificate serves which SNI name, from where."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.certfactory import NOW, Issued, make_ca, make_leaf, write_pair, write_pem
from tlsproxy.tls.certset import CertificateSet, certificate_set
from tlsproxy.tls.certsource import CertificatePair, CertificateSource
from tlsproxy.tls.certstore import LoadedCertificate, load_certificate
from tlsproxy.tls.pemfile import CertificateError


def loaded(tmp_path: Path, issued: Issued, stem: str) -> LoadedCertificate:
    cert, key = write_pair(tmp_path, issued, cert_name=f"{stem}.pem", key_name=f"{stem}-key.pem")
    return load_certificate(cert, key, now=NOW)


@pytest.fixture
def three(tmp_path: Path) -> list[LoadedCertificate]:
    ca = make_ca()
    return [
        loaded(tmp_path, make_leaf(ca, names=("default.test",)), "default"),
        loaded(tmp_path, make_leaf(ca, names=("*.example.test",)), "wild"),
        loaded(tmp_path, make_leaf(ca, names=("app.example.test", "api.test")), "app"),
    ]


def test_names_choose_exact_then_wildcard_then_default(three: list[LoadedCertificate]) -> None:
    served = certificate_set(three)
    assert served.default is three[0]
    assert served.index_for("app.example.test") == 2
    assert served.index_for("API.test.") == 2
    assert served.index_for("x.example.test") == 1
    assert served.index_for("x.y.example.test") == 0
    assert served.index_for("nobody.test") == 0
    assert served.index_for(None) == 0


def test_strict_refuses_unknown_names_but_not_an_absent_one(
    three: list[LoadedCertificate],
) -> None:
    served = certificate_set(three, strict=True)
    assert served.index_for("nobody.test") is None
    assert served.index_for(None) == 0
    assert served.index_for("x.example.test") == 1


def test_default_name_chooses_the_default_and_keeps_the_order(
    three: list[LoadedCertificate],
) -> None:
    served = certificate_set(three, default_name="api.test")
    assert served.default is three[2]
    assert served.certificates == tuple(three)  # the order given still decides shared names
    assert served.index_for("nobody.test") == 2
    assert served.index_for(None) == 2
    assert served.index_for("default.test") == 0


def test_a_default_name_no_certificate_covers_is_refused(
    three: list[LoadedCertificate],
) -> None:
    with pytest.raises(ValueError, match=r"--sni-default nope\.test: no certificate covers"):
        certificate_set(three, default_name="nope.test")


def test_a_name_in_two_certificates_is_served_by_the_first_and_said(
    tmp_path: Path, three: list[LoadedCertificate]
) -> None:
    again = loaded(tmp_path, make_leaf(make_ca(), names=("api.test",)), "again")
    served = certificate_set([*three, again])
    assert served.index_for("api.test") == 2
    [warning] = served.warnings
    assert "api.test is in both" in warning
    assert "the first one serves it" in warning


def test_a_certificate_without_subject_alt_name_is_chosen_by_common_name(tmp_path: Path) -> None:
    plain = loaded(tmp_path, make_leaf(san=False, common_name="legacy.test"), "legacy")
    other = loaded(tmp_path, make_leaf(names=("other.test",)), "other")
    served = certificate_set([other, plain])
    assert served.index_for("legacy.test") == 1
    assert plain.sni_names == ("legacy.test",)


def test_banner_marks_the_default(three: list[LoadedCertificate]) -> None:
    lines = certificate_set(three).describe()
    assert lines[0] == "certificate 1 of 3 (default, for unknown names and none):"
    assert any("names: api.test" in line or "app.example.test" in line for line in lines)
    assert certificate_set(three[:1]).describe() == three[0].describe()


# --- certsource: where the set comes from ------------------------------------------------------


def test_cert_pairs_load_in_order(tmp_path: Path, three: list[LoadedCertificate]) -> None:
    source = CertificateSource(
        pairs=tuple(CertificatePair(c.cert_path, c.key_path) for c in three),
        passphrase_file=None,
        certs_dir=tmp_path / "unused",
    )
    served, dev = source.load(now=NOW)
    assert dev is None
    assert [c.cert_path for c in served.certificates] == [c.cert_path for c in three]
    assert not (tmp_path / "unused").exists()
    assert set(source.files()) == {p for c in three for p in (c.cert_path, c.key_path)}


def test_several_scanned_pairs_need_an_explicit_default(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    write_pair(certs, make_leaf(names=("a.test",)), cert_name="a.pem", key_name="a.key")
    write_pair(certs, make_leaf(names=("b.test",)), cert_name="b.pem", key_name="b.key")
    source = CertificateSource(pairs=(), passphrase_file=None, certs_dir=certs)
    with pytest.raises(CertificateError, match=r"holds 2 certificates \(a\.test, b\.test\); "):
        source.load(now=NOW)
    chosen = CertificateSource(
        pairs=(), passphrase_file=None, certs_dir=certs, default_name="b.test"
    )
    served, dev = chosen.load(now=NOW)
    assert dev is None
    assert served.default.sni_names == ("b.test",)
    assert {certs, certs / "a.pem", certs / "b.key"} <= set(chosen.files())


def test_an_empty_certs_dir_gets_the_development_certificate(tmp_path: Path) -> None:
    source = CertificateSource(pairs=(), passphrase_file=None, certs_dir=tmp_path / "certs")
    served, dev = source.load(now=NOW)
    assert dev is not None
    assert served.default.cert_path == dev.cert_path
    again, dev_again = source.load(now=NOW)  # its own files are not scanned as a pair to serve
    assert dev_again is not None
    assert len(again.certificates) == 1
    assert again.default.fingerprint_sha256 == served.default.fingerprint_sha256


def test_scan_warnings_reach_the_set(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    write_pair(certs, make_leaf(names=("a.test",)), cert_name="a.pem", key_name="a.key")
    write_pem(certs / "lonely.pem", make_leaf(names=("lonely.test",)).cert, mode=0o644)
    served, _ = CertificateSource(pairs=(), passphrase_file=None, certs_dir=certs).load(now=NOW)
    assert len(served.certificates) == 1
    assert any("lonely.pem: no key in its folder matches it" in w for w in served.all_warnings)


def test_set_is_comparable_by_certificates_only(three: list[LoadedCertificate]) -> None:
    assert certificate_set(three) == CertificateSet(tuple(three), warnings=())


def test_files_that_serve_nothing_are_an_error_not_a_development_certificate(
    tmp_path: Path,
) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    write_pem(certs / "site.pem", make_leaf(names=("site.test",)).cert, mode=0o644)
    source = CertificateSource(pairs=(), passphrase_file=None, certs_dir=certs)
    with pytest.raises(CertificateError, match=r"holds no certificate/key pair tlsproxy can serve"):
        source.load(now=NOW)
    assert not (certs / "ca.pem").exists()


def test_one_scanned_pair_stays_the_default_when_more_arrive(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    write_pair(certs, make_leaf(names=("b.test",)), cert_name="b.pem", key_name="b.key")
    source = CertificateSource(pairs=(), passphrase_file=None, certs_dir=certs)
    served, dev = source.load(now=NOW)
    pinned = source.keeping_default(served, dev)
    assert pinned.default_name == "b.test"
    write_pair(certs, make_leaf(names=("a.test",)), cert_name="a.pem", key_name="a.key")
    again, _ = pinned.load(now=NOW)
    assert again.default.sni_names == ("b.test",)
    assert len(again.certificates) == 2


def test_the_development_certificate_pins_nothing(tmp_path: Path) -> None:
    source = CertificateSource(pairs=(), passphrase_file=None, certs_dir=tmp_path / "certs")
    served, dev = source.load(now=NOW)
    assert source.keeping_default(served, dev) is source

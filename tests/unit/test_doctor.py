"""`tlsproxy doctor`'s decisions without a socket: findings, certificates, trust, backend."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest
from cryptography import x509
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import error as net_error
from twisted.python.failure import Failure

from tests.certfactory import DAY, NOW, Issued, cert_pem, make_ca, make_leaf, write_pair, write_pem
from tlsproxy.backend import BackendAddress
from tlsproxy.backendoptions import parse_backend
from tlsproxy.doctor import run
from tlsproxy.doctor.backend import (
    Plan,
    ResponseHead,
    backend_url,
    forwarded_finding,
    forwarded_request,
    head_complete,
    no_answer_finding,
    parse_response_head,
    plan_addresses,
    reachability_findings,
    redirect_verdict,
)
from tlsproxy.doctor.backendtls import (
    Handshake,
    Outcome,
    certificate_names,
    handshake_finding,
    handshake_timeout_finding,
)
from tlsproxy.doctor.certificate import (
    ServedCertificate,
    chain_finding,
    dates_finding,
    explain_verification_error,
    load_served,
    moment_within,
    names_finding,
)
from tlsproxy.doctor.finding import (
    Finding,
    Status,
    exit_status,
    guarded,
    ok,
    problem,
    render,
    skipped,
    summary,
    warning,
)
from tlsproxy.doctor.socketfile import DENIED, REFUSED, Owner, SocketFile, socket_finding
from tlsproxy.doctor.truststores import (
    NssEntry,
    SystemStore,
    bundle_contains,
    certificates_in,
    node_finding,
    nss_finding,
    python_finding,
    system_finding,
)
from tlsproxy.tls.client import describe_tls_failure
from tlsproxy.tls.devca import ensure_dev_certificates

# --- helpers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dev_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A development CA and leaf made by tlsproxy's own code, at NOW."""
    directory = tmp_path_factory.mktemp("doctor-certs") / "certs"
    ensure_dev_certificates(directory, ["myapp.test"], now=NOW)
    return directory


@pytest.fixture
def dev(dev_dir: Path) -> ServedCertificate:
    served = load_served(cert=None, key=None, passphrase_file=None, certs_dir=dev_dir, now=NOW)
    assert isinstance(served, ServedCertificate), served
    return served


def own(tmp_path: Path, leaf: Issued, *chain: x509.Certificate) -> ServedCertificate:
    """The --cert/--key pair ``leaf`` (+ ``chain``) as doctor loads it."""
    cert, key = write_pair(tmp_path, leaf, *chain)
    served = load_served(cert=cert, key=key, passphrase_file=None, certs_dir=tmp_path, now=NOW)
    assert isinstance(served, ServedCertificate), served
    return served


def backend(url: str = "http://127.0.0.1:8000") -> BackendAddress:
    return parse_backend(url)


# --- findings and the report -------------------------------------------------------------------


def test_a_finding_that_is_not_ok_must_carry_a_fix() -> None:
    """Every warning, problem or skipped line comes with a fix; an ok line needs none."""
    with pytest.raises(ValueError, match="needs a fix"):
        Finding(Status.PROBLEM, "check", "broken")
    assert ok("check", "fine").fix == ""


def test_report_puts_each_fix_under_its_line_and_ends_with_a_summary() -> None:
    """One line per finding, the fix indented below it, and a closing count."""
    lines = render([ok("a", "fine"), warning("b", "meh", "do x"), problem("c", "bad", "do y")])
    assert lines[0] == "ok      a: fine"
    assert lines[1] == "warning b: meh"
    assert lines[2] == "        fix: do x"
    assert lines[3] == "problem c: bad"
    assert lines[4] == "        fix: do y"
    assert lines[5] == "summary: 1 problem, 1 warning, 0 skipped, 1 ok: fix the problems above"


def test_a_check_that_raises_becomes_its_own_problem_line() -> None:
    """guarded: an unforeseen exception is a problem naming the check and asking for a report."""

    def broken() -> Finding:
        raise RuntimeError("boom")

    found = guarded("backend TLS", broken)
    assert isinstance(found, Finding)
    assert found.status is Status.PROBLEM
    assert "RuntimeError: boom" in found.detail
    assert "bug in tlsproxy doctor" in found.fix
    assert guarded("x", lambda: 42) == 42


def test_exit_status_is_one_only_for_a_problem() -> None:
    """Warnings and skipped checks leave the exit status 0; one problem makes it 1."""
    calm = [ok("a", "x"), warning("b", "y", "z"), skipped("c", "y", "z")]
    assert exit_status(calm) == 0
    assert exit_status([*calm, problem("d", "y", "z")]) == 1
    assert summary(calm).endswith("the warnings say which clients may still complain")
    assert summary([ok("a", "x")]).endswith(": all good")


# --- loading -----------------------------------------------------------------------------------


def test_a_missing_development_certificate_says_how_to_make_one(tmp_path: Path) -> None:
    """Doctor never creates certificates; it names the command that does."""
    found = load_served(
        cert=None, key=None, passphrase_file=None, certs_dir=tmp_path / "none", now=NOW
    )
    assert isinstance(found, Finding)
    assert found.status is Status.PROBLEM
    assert "python -m tlsproxy certs --certs-dir" in found.fix
    assert not (tmp_path / "none").exists()


def test_an_expired_certificate_still_loads_so_the_dates_check_can_explain_it(
    tmp_path: Path,
) -> None:
    """Expiry is one problem (dates), not also a load failure."""
    ca = make_ca()
    served = own(tmp_path, make_leaf(ca, not_after=NOW - DAY), ca.cert)
    assert dates_finding(served, NOW).status is Status.PROBLEM


def test_a_key_that_does_not_match_is_a_problem_split_into_what_and_fix(tmp_path: Path) -> None:
    """certstore's "what is wrong; the fix" message becomes the line and its fix."""
    cert, _ = write_pair(tmp_path, make_leaf())
    other_key = write_pem(tmp_path / "other.pem", make_leaf().key)
    found = load_served(cert=cert, key=other_key, passphrase_file=None, certs_dir=tmp_path, now=NOW)
    assert isinstance(found, Finding)
    assert "does not match the certificate" in found.detail
    assert "their public keys differ" in found.detail
    assert found.fix == "use the key the certificate was made from"


def test_the_anchor_is_the_development_ca_or_the_self_signed_end_of_the_chain(
    tmp_path: Path, dev: ServedCertificate
) -> None:
    """Clients must trust ca.pem in development; with --cert, the root at the end, if any."""
    assert dev.certs_dir is not None
    assert dev.anchor_path == dev.certs_dir / "ca.pem"
    ca = make_ca()
    leaf = make_leaf(ca)
    assert own(tmp_path, leaf, ca.cert).anchor == ca.cert
    assert own(tmp_path, leaf).anchor is None
    self_signed = make_leaf()
    assert own(tmp_path, self_signed).anchor == self_signed.cert


def test_moment_within_moves_now_inside_every_validity() -> None:
    """An expired leaf is verified at its last valid moment; a valid one at now."""
    leaf = make_leaf(not_after=NOW - DAY).cert
    assert moment_within([leaf], NOW) == leaf.not_valid_after_utc
    assert moment_within([make_leaf().cert], NOW) == NOW


# --- names, dates, chain -----------------------------------------------------------------------


def test_names_covered_by_the_development_certificate_are_ok(dev: ServedCertificate) -> None:
    """The dev leaf covers localhost, both loopbacks and its --hostname."""
    found = names_finding(dev, required=["localhost", "127.0.0.1", "::1", "myapp.test"])
    assert found.status is Status.OK
    assert "myapp.test" in found.detail


def test_a_missing_name_on_the_development_certificate_names_the_reissue_command(
    dev: ServedCertificate,
) -> None:
    """A --hostname the dev leaf lacks is a problem fixed by certs --hostname."""
    found = names_finding(dev, required=["localhost", "other.test"])
    assert found.status is Status.PROBLEM
    assert "does not cover other.test" in found.detail
    assert "--hostname other.test" in found.fix


def test_a_name_the_development_ca_may_not_sign_says_a_new_ca_is_needed(
    dev: ServedCertificate,
) -> None:
    """The CA's name constraints cannot be widened: the fix says so instead of `certs`."""
    found = names_finding(dev, required=["app.example.com"])
    assert found.status is Status.PROBLEM
    assert "may not sign app.example.com" in found.fix


def test_a_missing_name_on_your_own_certificate_gives_the_san_to_ask_for(tmp_path: Path) -> None:
    """With --cert, the fix spells the subjectAltName entries to put in the certificate."""
    served = own(tmp_path, make_leaf(names=["example.test"]))
    found = names_finding(served, required=["localhost", "::1"])
    assert found.status is Status.PROBLEM
    assert "subjectAltName=DNS:localhost,IP:::1" in found.fix


def test_loopback_names_missing_from_a_certificate_for_your_hostname_are_a_warning(
    tmp_path: Path,
) -> None:
    """With --cert and --hostname, localhost is optional: warned about, not a problem."""
    served = own(tmp_path, make_leaf(names=["app.example.test"]))
    found = names_finding(served, required=["app.example.test"], optional=["localhost"])
    assert found.status is Status.WARNING
    assert "does not cover localhost" in found.detail


def test_dates_ok_warning_and_problems(tmp_path: Path) -> None:
    """In date is ok, under 14 days a warning, expired or not yet valid a problem."""
    assert dates_finding(own(tmp_path, make_leaf()), NOW).status is Status.OK
    soon = dates_finding(own(tmp_path, make_leaf(not_after=NOW + 5 * DAY)), NOW)
    assert soon.status is Status.WARNING
    assert "in 5 days" in soon.detail
    expired = dates_finding(own(tmp_path, make_leaf(not_after=NOW - DAY)), NOW)
    assert expired.status is Status.PROBLEM
    assert "expired on 2026-05-31" in expired.detail
    future = make_leaf(not_before=NOW + DAY, not_after=NOW + 30 * DAY)
    early = dates_finding(own(tmp_path, future), NOW)
    assert early.status is Status.PROBLEM
    assert "date -u" in early.fix


def test_an_expired_ca_in_the_chain_is_a_problem(tmp_path: Path) -> None:
    """A leaf in date under an expired root still fails every client."""
    ca = make_ca(now=NOW - 400 * DAY, days=300)
    leaf = make_leaf(ca, not_before=NOW - 10 * DAY)
    found = dates_finding(own(tmp_path, leaf, ca.cert), NOW)
    assert found.status is Status.PROBLEM
    assert "the CA (CN=Test CA) expired" in found.detail


def test_the_development_leaf_verifies_up_to_its_ca(dev: ServedCertificate) -> None:
    """cryptography's browser-grade verifier accepts the dev leaf for localhost."""
    found = chain_finding(dev, names=["localhost"], now=NOW)
    assert found.status is Status.OK, found
    assert "tlsproxy development CA" in found.detail


def test_a_leaf_from_another_ca_does_not_verify(tmp_path: Path) -> None:
    """A leaf signed by another key than the trusted CA's (same name) is a problem."""
    real, impostor = make_ca("Real CA"), make_ca("Real CA")
    served = own(tmp_path, make_leaf(impostor))
    served = ServedCertificate(
        loaded=served.loaded, anchor=real.cert, anchor_path=served.anchor_path, certs_dir=None
    )
    found = chain_finding(served, names=["localhost"], now=NOW)
    assert found.status is Status.PROBLEM
    assert "the CA's key did not sign it" in found.detail


def test_the_chain_is_verified_inside_its_dates(tmp_path: Path, dev_dir: Path) -> None:
    """Years later the dev chain still "verifies": expiry is the dates check's finding only."""
    later = NOW + 500 * DAY
    served = load_served(cert=None, key=None, passphrase_file=None, certs_dir=dev_dir, now=later)
    assert isinstance(served, ServedCertificate)
    assert chain_finding(served, names=["localhost"], now=later).status is Status.OK
    assert dates_finding(served, later).status is Status.PROBLEM


def test_a_leaf_without_authority_key_identifier_is_a_profile_warning(tmp_path: Path) -> None:
    """A chain that holds but breaks an extension rule warns, naming the extension."""
    ca = make_ca()
    found = chain_finding(own(tmp_path, make_leaf(ca), ca.cert), names=["localhost"], now=NOW)
    assert found.status is Status.WARNING
    assert "authorityKeyIdentifier" in found.detail
    assert "chains to its CA" in found.detail


def test_a_self_signed_ca_flagged_leaf_is_a_profile_warning(tmp_path: Path) -> None:
    """The openssl recipe's CA:TRUE self-signed leaf: Firefox refuses it, so a warning."""
    key = make_leaf().key
    ca_like = make_ca("localhost", key=key)  # CA:TRUE, no subjectAltName
    found = chain_finding(own(tmp_path, Issued(ca_like.cert, key)), names=["localhost"], now=NOW)
    assert found.status is not Status.OK


def test_no_anchor_and_no_system_roots_skips_the_chain(tmp_path: Path) -> None:
    """Without a root to verify against, the chain check says so instead of guessing."""
    found = chain_finding(own(tmp_path, make_leaf(make_ca())), names=["localhost"], now=NOW)
    assert found.status is Status.SKIPPED


def test_verification_errors_are_put_in_plain_words() -> None:
    """Object dumps are cut and extension OIDs named."""
    raw = (
        "validation failed: invalid extension: 2.5.29.35: Certificate is missing required "
        "extension (encountered processing <Certificate(subject=...)>)"
    )
    assert explain_verification_error(raw) == (
        "invalid extension: authorityKeyIdentifier: Certificate is missing required extension"
    )
    exhausted = (
        "validation failed: candidates exhausted: all candidates exhausted with no interior errors"
    )
    assert "was issued by the CA" in explain_verification_error(exhausted)


# --- trust stores ------------------------------------------------------------------------------


def test_bundle_contains_compares_the_certificate_bytes() -> None:
    """A bundle with the CA among others contains it; one with a same-named CA does not."""
    ca, twin = make_ca("Same Name"), make_ca("Same Name")
    bundle = b"junk\n" + cert_pem(make_ca("Other").cert) + b"# comment\n" + cert_pem(ca.cert)
    assert bundle_contains(bundle, ca.cert)
    assert not bundle_contains(bundle, twin.cert)
    assert (
        len(
            certificates_in(
                bundle + b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"
            )
        )
        == 2
    )


def test_system_store_with_the_ca_trusts_the_leaf(tmp_path: Path, dev: ServedCertificate) -> None:
    """OpenSSL accepts the dev leaf when the store's CA file holds ca.pem."""
    assert dev.anchor is not None
    store = tmp_path / "store.pem"
    store.write_bytes(cert_pem(make_ca().cert) + cert_pem(dev.anchor))
    assert system_finding(dev, SystemStore(store, None), NOW).status is Status.OK


def test_system_store_without_the_ca_is_a_warning_naming_the_install_command(
    tmp_path: Path, dev: ServedCertificate
) -> None:
    """Not trusted by the system store: a warning whose fix installs the CA."""
    store = tmp_path / "store.pem"
    store.write_bytes(cert_pem(make_ca().cert))
    found = system_finding(dev, SystemStore(store, None), NOW)
    assert found.status is Status.WARNING
    assert "update-ca-certificates" in found.fix
    assert system_finding(dev, SystemStore(None, None), NOW).status is Status.SKIPPED


def test_nss_trusts_the_ca_only_with_the_c_flag(dev: ServedCertificate) -> None:
    """Present with C: ok; present without: a warning to set the flag; absent: how to add it."""
    assert dev.anchor is not None
    db = Path("/home/u/.pki/nssdb")
    trusted = NssEntry("dev", "C,,", (dev.anchor,))
    assert nss_finding(dev, db=db, entries=[trusted]).status is Status.OK
    untrusted = nss_finding(dev, db=db, entries=[NssEntry("dev", ",,", (dev.anchor,))])
    assert untrusted.status is Status.WARNING
    assert "-M -n dev -t C,," in untrusted.fix
    absent = nss_finding(dev, db=db, entries=[NssEntry("x", "C,,", (make_ca().cert,))])
    assert absent.status is Status.WARNING
    assert "certutil -d sql:/home/u/.pki/nssdb -A -t C,," in absent.fix


def test_node_trust_follows_node_extra_ca_certs(tmp_path: Path, dev: ServedCertificate) -> None:
    """Unset: skipped with the export line; a bundle without the CA: warning; with it: ok."""
    assert dev.anchor is not None
    assert node_finding(dev, {}).status is Status.SKIPPED
    without = write_pem(tmp_path / "without.pem", make_ca().cert)
    found = node_finding(dev, {"NODE_EXTRA_CA_CERTS": str(without)})
    assert found.status is Status.WARNING
    assert "export NODE_EXTRA_CA_CERTS=" in found.fix
    with_ca = write_pem(tmp_path / "with.pem", make_ca().cert, dev.anchor)
    assert node_finding(dev, {"NODE_EXTRA_CA_CERTS": str(with_ca)}).status is Status.OK
    missing = node_finding(dev, {"NODE_EXTRA_CA_CERTS": str(tmp_path / "nope.pem")})
    assert "cannot be read" in missing.detail


def test_python_trust_needs_every_set_variable_to_hold_the_ca(
    tmp_path: Path, dev: ServedCertificate
) -> None:
    """SSL_CERT_FILE replaces the store: set without the CA is a warning naming the variable."""
    assert dev.anchor is not None
    with_ca = str(write_pem(tmp_path / "with.pem", dev.anchor))
    without = str(write_pem(tmp_path / "without.pem", make_ca().cert))
    assert python_finding(dev, {}).status is Status.SKIPPED
    assert python_finding(dev, {"SSL_CERT_FILE": with_ca}).status is Status.OK
    found = python_finding(dev, {"SSL_CERT_FILE": with_ca, "REQUESTS_CA_BUNDLE": without})
    assert found.status is Status.WARNING
    assert f"REQUESTS_CA_BUNDLE={without} does not contain it" in found.detail
    assert "SSL_CERT_FILE" not in found.detail


def test_trust_checks_skip_a_chain_whose_root_is_not_in_the_file(tmp_path: Path) -> None:
    """A leaf from a CA outside --cert (a public CA) needs no Node/Python/NSS steps."""
    served = own(tmp_path, make_leaf(make_ca()))
    assert node_finding(served, {}).status is Status.SKIPPED
    assert python_finding(served, {"SSL_CERT_FILE": "/x"}).status is Status.SKIPPED


# --- backend addresses -------------------------------------------------------------------------


def no_resolver(host: str, port: int) -> list[str]:
    raise AssertionError(f"resolved {host}:{port}")


def test_localhost_means_both_loopbacks_and_a_loopback_literal_probes_the_other() -> None:
    """Rule 1 of the backend checks: tlsproxy's order first, the other loopback as extra."""
    assert plan_addresses(backend("http://localhost:8000"), no_resolver) == Plan(
        used=("127.0.0.1", "::1")
    )
    assert plan_addresses(backend("http://127.0.0.1:8000"), no_resolver) == Plan(
        used=("127.0.0.1",), extra=("::1",)
    )
    assert plan_addresses(backend("http://[::1]:8000"), no_resolver) == Plan(
        used=("::1",), extra=("127.0.0.1",)
    )
    assert plan_addresses(backend("http://10.0.0.5:8000"), no_resolver) == Plan(used=("10.0.0.5",))


def test_a_name_is_resolved_in_both_families() -> None:
    """A DNS name uses every address the resolver gives, once each, in its order."""

    def resolver(host: str, port: int) -> list[str]:
        assert (host, port) == ("app.internal", 8000)
        return ["10.0.0.5", "fd00::5", "10.0.0.5"]

    plan = plan_addresses(backend("http://app.internal:8000"), resolver)
    assert plan == Plan(used=("10.0.0.5", "fd00::5"))


def test_localhost_app_on_ipv4_only_is_the_classic_warning() -> None:
    """IPv4 answers, ::1 refuses: IPv4 ok, IPv6 a warning with the browsers/Node explanation."""
    address = backend("http://localhost:5173")
    found = reachability_findings(
        address,
        Plan(used=("127.0.0.1", "::1")),
        {"127.0.0.1": None, "::1": "connection refused"},
    )
    assert [f.status for f in found] == [Status.OK, Status.WARNING]
    assert "localhost resolves to ::1 first in browsers and Node 17+" in found[1].detail
    assert "listens only on 127.0.0.1:5173" in found[1].detail
    assert "use --backend http://127.0.0.1:5173" in found[1].fix


def test_localhost_app_on_ipv6_only_warns_on_the_ipv4_line() -> None:
    """An app bound to ::1 only (Vite on Node 17+): IPv4 warns that 127.0.0.1 cannot reach it."""
    found = reachability_findings(
        backend("http://localhost:5173"),
        Plan(used=("127.0.0.1", "::1")),
        {"127.0.0.1": "connection refused", "::1": None},
    )
    assert [f.status for f in found] == [Status.WARNING, Status.OK]
    assert "listens only on [::1]:5173" in found[0].detail
    assert "use --backend http://[::1]:5173" in found[0].fix


def test_a_loopback_literal_refused_while_the_other_loopback_answers_says_which() -> None:
    """--backend 127.0.0.1 with an app on ::1 only: a problem whose fix names [::1]."""
    found = reachability_findings(
        backend("http://127.0.0.1:5173"),
        Plan(used=("127.0.0.1",), extra=("::1",)),
        {"127.0.0.1": "connection refused", "::1": None},
    )
    assert found[0].status is Status.PROBLEM
    assert "your app listens only on [::1]:5173" in found[0].fix
    assert found[1].status is Status.SKIPPED
    assert "the app answers on [::1]:5173 too" in found[1].detail


def test_nothing_listening_is_a_problem_on_each_used_family() -> None:
    """Both loopbacks refuse: two problems telling to start the app or fix --backend."""
    found = reachability_findings(
        backend("http://localhost:8000"),
        Plan(used=("127.0.0.1", "::1")),
        {"127.0.0.1": "connection refused", "::1": "connection refused"},
    )
    assert [f.status for f in found] == [Status.PROBLEM, Status.PROBLEM]
    assert "start your app" in found[0].fix


def test_a_family_the_name_lacks_is_skipped() -> None:
    """An IPv4-only name: the IPv6 line is skipped, not a failure."""
    found = reachability_findings(
        backend("http://app.internal:8000"), Plan(used=("10.0.0.5",)), {"10.0.0.5": None}
    )
    assert [f.status for f in found] == [Status.OK, Status.SKIPPED]


# --- the forwarded request ---------------------------------------------------------------------


def test_the_forwarded_request_carries_what_tlsproxy_adds() -> None:
    """Host and X-Forwarded-*/Forwarded as tlsproxy forwards https://localhost:8443/."""
    request = forwarded_request(backend("http://127.0.0.1:8000/app"), 8443)
    head = request.decode("ascii")
    assert head.startswith("GET /app/ HTTP/1.1\r\n")
    for line in (
        "Host: localhost:8443",
        "X-Forwarded-Proto: https",
        "X-Forwarded-Host: localhost:8443",
        "X-Forwarded-Port: 8443",
        "X-Forwarded-For: 127.0.0.1",
        'Forwarded: for=127.0.0.1;host="localhost:8443";proto=https',
        "Connection: close",
    ):
        assert f"\r\n{line}\r\n" in head, line
    assert head.endswith("\r\n\r\n")


def test_response_heads_are_parsed_past_informational_ones() -> None:
    """103 Early Hints is skipped; the final status and headers are read."""
    head = parse_response_head(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
        b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://localhost:8443/\r\n\r\nbody"
    )
    assert head.status == 301
    assert head.header("location") == "https://localhost:8443/"
    with pytest.raises(ValueError, match="not HTTP"):
        parse_response_head(b"\x16\x03\x01garbage\r\n\r\n")
    with pytest.raises(ValueError, match="ended before"):
        parse_response_head(b"HTTP/1.1 200 OK\r\nContent-")


@pytest.mark.parametrize(
    ("location", "verdict"),
    [
        ("https://localhost:8443/", "loop"),
        ("/", "loop"),
        ("https://LOCALHOST:8443", "loop"),
        ("http://localhost:8443/", "http"),
        ("http://localhost/", "http"),
        ("https://localhost/", "port"),
        ("https://localhost:8443/login", "elsewhere"),
        ("/accounts/login/?next=/", "elsewhere"),
        ("https://example.com/", "elsewhere"),
        ("https://localhost:99999/", "elsewhere"),
    ],
)
def test_redirect_verdicts(location: str, verdict: str) -> None:
    """Rule 4: the same page over https is a loop; http:// on the same host too."""
    assert redirect_verdict(location, port=8443) == verdict


def response(status: int, reason: str = "", **headers: str) -> ResponseHead:
    return ResponseHead(status, reason, tuple((k.replace("_", "-"), v) for k, v in headers.items()))


def test_a_redirect_to_the_same_https_url_is_a_loop_with_the_framework_setting() -> None:
    """The loop is a problem whose fix gives the settings of docs/headers.md."""
    found = forwarded_finding(
        response(301, "Moved Permanently", Location="https://localhost:8443/"),
        backend=backend(),
        port=8443,
    )
    assert found.status is Status.PROBLEM
    assert "redirect loop" in found.detail
    for setting in ("SECURE_PROXY_SSL_HEADER", "ProxyFix", "assume_ssl", "trust proxy"):
        assert setting in found.fix


def test_the_framework_is_recognised_from_the_response_headers() -> None:
    """Express's X-Powered-By narrows the fix to the Express setting."""
    found = forwarded_finding(
        response(302, "Found", Location="http://localhost:8443/", X_Powered_By="Express"),
        backend=backend(),
        port=8443,
    )
    assert found.status is Status.PROBLEM
    assert 'app.set("trust proxy", "loopback")' in found.fix
    assert "Django" not in found.fix


def test_plain_answers_and_redirects_elsewhere_are_ok_and_errors_warn() -> None:
    """200 and a redirect to /login are fine; a 500 is a warning to read the app's log."""
    assert forwarded_finding(response(200, "OK"), backend=backend(), port=8443).status is (
        Status.OK
    )
    login = forwarded_finding(response(302, Location="/login"), backend=backend(), port=8443)
    assert login.status is Status.OK
    error = forwarded_finding(response(500), backend=backend(), port=8443)
    assert error.status is Status.WARNING


def test_a_response_head_is_complete_only_after_its_blank_line() -> None:
    """head_complete stops the reading at the final head, not at a 1xx one."""
    assert not head_complete(b"HTTP/1.1 200 OK\r\nServer: x\r\n")
    assert not head_complete(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert head_complete(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n")


def test_no_answer_is_a_problem_whose_fix_fits_the_kind_of_backend() -> None:
    """Silence from http, https and unix backends points at the likely mix-up of each."""
    plain = no_answer_finding(backend(), where="127.0.0.1:8000", reason="timed out")
    assert plain.status is Status.PROBLEM
    assert "127.0.0.1:8000 accepted the connection but gave no HTTP answer" in plain.detail
    assert "use an https:// --backend" in plain.fix
    tls = no_answer_finding(backend("https://127.0.0.1:8443"), where="x", reason="timed out")
    assert "behind this TLS port speaks HTTP/1.1" in tls.fix
    unix = no_answer_finding(backend("unix:/run/app.sock"), where="/run/app.sock", reason="x")
    assert "your app's HTTP socket" in unix.fix


# --- https:// backends: reachability and the TLS handshake -------------------------------------


def test_an_https_backend_is_suggested_by_address_keeping_the_name_it_verifies() -> None:
    """Naming an address instead of localhost keeps --backend-server-name localhost."""
    https = backend("https://localhost:8443/app")
    assert backend_url(https, "127.0.0.1") == (
        "https://127.0.0.1:8443/app --backend-server-name localhost"
    )
    assert backend_url(https, "localhost") == "https://localhost:8443/app"
    assert backend_url(backend("http://127.0.0.1:8000"), "::1") == "http://[::1]:8000"
    found = reachability_findings(
        https,
        Plan(used=("127.0.0.1", "::1")),
        {"127.0.0.1": None, "::1": "connection refused"},
    )
    assert [f.status for f in found] == [Status.OK, Status.WARNING]
    assert "https://127.0.0.1:8443/app --backend-server-name localhost" in found[1].fix


def https_backend(
    url: str = "https://127.0.0.1:8443", *, ca: x509.Certificate | None = None, verify: bool = True
) -> BackendAddress:
    """``url`` as doctor sees it after --backend-ca (``ca``) or --insecure-backend."""
    address = backend(url)
    assert address.tls is not None
    tls = dataclasses.replace(address.tls, ca_pem=cert_pem(ca) if ca else None, verify=verify)
    return dataclasses.replace(address, tls=tls)


def refused(address: BackendAddress, reason: Exception, cert: x509.Certificate) -> Handshake:
    """The handshake tlsproxy's client makes fail with ``reason``, in the 502's words."""
    outcome = Outcome.NAME if isinstance(reason, VerificationError) else Outcome.CHAIN
    assert address.tls is not None
    said = describe_tls_failure(Failure(reason), address.tls, port=address.port)
    return Handshake(outcome, said=said, certificate=cert)


VERIFY_FAILED = SSL.Error([("SSL routines", "", "certificate verify failed")])
WHERE = "127.0.0.1:8443"


def test_a_verified_handshake_is_ok_naming_the_trust_and_the_issuer() -> None:
    """Verified against --backend-ca: ok, with the issuer and the end date."""
    ca = make_ca("Backend CA")
    leaf = make_leaf(ca, names=["127.0.0.1"])
    found = handshake_finding(
        Handshake(Outcome.VERIFIED, certificate=leaf.cert),
        backend=https_backend(ca=ca.cert),
        where=WHERE,
        now=NOW,
    )
    assert found.status is Status.OK
    assert "verifies for 127.0.0.1 against the --backend-ca file" in found.detail
    assert "issued by CN=Backend CA" in found.detail


def test_a_backend_certificate_about_to_expire_is_a_warning() -> None:
    """Within 14 days of its end, a verified certificate warns to renew it."""
    ca = make_ca()
    leaf = make_leaf(ca, names=["127.0.0.1"], not_after=NOW + 5 * DAY)
    found = handshake_finding(
        Handshake(Outcome.VERIFIED, certificate=leaf.cert),
        backend=https_backend(ca=ca.cert),
        where=WHERE,
        now=NOW,
    )
    assert found.status is Status.WARNING
    assert "expires soon" in found.detail
    assert "renew" in found.fix


def test_insecure_backend_is_a_warning_pointing_at_backend_ca() -> None:
    """--insecure-backend: the handshake works but nothing is checked."""
    found = handshake_finding(
        Handshake(Outcome.UNVERIFIED),
        backend=https_backend(verify=False),
        where=WHERE,
        now=NOW,
    )
    assert found.status is Status.WARNING
    assert "not verified (--insecure-backend)" in found.detail
    assert "--backend-ca" in found.fix


def test_a_name_mismatch_uses_the_502_words_and_names_the_server_name_to_give() -> None:
    """service-identity refused the name: the 502 sentence, the certificate's names, the flag."""
    ca = make_ca()
    leaf = make_leaf(ca, names=["*.internal", "backend.test", "10.0.0.5"])
    address = https_backend(ca=ca.cert)
    found = handshake_finding(
        refused(address, VerificationError(errors=[]), leaf.cert),
        backend=address,
        where=WHERE,
        now=NOW,
    )
    assert found.status is Status.PROBLEM
    assert found.detail == (
        f"{WHERE} presented a certificate that did not verify for 127.0.0.1: it is not issued "
        "to that name (it is for *.internal, backend.test, 10.0.0.5)"
    )
    assert "--backend-server-name (here: --backend-server-name backend.test)" in found.fix
    assert "--insecure-backend" in found.fix


def test_an_expired_backend_certificate_says_renew_not_another_ca() -> None:
    """Signed by the --backend-ca CA but expired: the date, and renewing is the fix."""
    ca = make_ca("Backend CA")
    leaf = make_leaf(ca, names=["127.0.0.1"], not_before=NOW - 90 * DAY, not_after=NOW - 2 * DAY)
    address = https_backend(ca=ca.cert)
    found = handshake_finding(
        refused(address, VERIFY_FAILED, leaf.cert), backend=address, where=WHERE, now=NOW
    )
    assert found.status is Status.PROBLEM
    assert "did not verify for 127.0.0.1" in found.detail
    assert "it expired on 2026-05-30 12:00 UTC (2 days ago)" in found.detail
    assert "renew the backend's certificate" in found.fix
    assert "not in" not in found.detail


def test_a_certificate_from_an_unknown_ca_names_that_ca_for_backend_ca() -> None:
    """Signed by a CA the --backend-ca file lacks: which CA, and --backend-ca as the fix."""
    ca, other = make_ca("Backend CA"), make_ca("Other CA")
    leaf = make_leaf(ca, names=["127.0.0.1"])
    address = https_backend(ca=other.cert)
    found = handshake_finding(
        refused(address, VERIFY_FAILED, leaf.cert), backend=address, where=WHERE, now=NOW
    )
    assert found.status is Status.PROBLEM
    assert "(not signed by a CA in the --backend-ca file, self-signed, or expired)" in found.detail
    assert "it is issued by CN=Backend CA, which is not in the --backend-ca file" in found.detail
    assert "give the certificate of CN=Backend CA, the CA that signed it, with --backend-ca" in (
        found.fix
    )
    system = https_backend()
    in_system = handshake_finding(
        refused(system, VERIFY_FAILED, leaf.cert), backend=system, where=WHERE, now=NOW
    )
    assert "which is not in the system store" in in_system.detail


def test_a_self_signed_backend_certificate_is_its_own_backend_ca() -> None:
    """Self-signed, no --backend-ca: say so, and that the certificate itself is the CA to give."""
    leaf = make_leaf(None, names=["127.0.0.1"])
    address = https_backend()
    found = handshake_finding(
        refused(address, VERIFY_FAILED, leaf.cert), backend=address, where=WHERE, now=NOW
    )
    assert f"it is self-signed ({leaf.cert.subject.rfc4514_string()})" in found.detail
    assert "give the certificate itself with --backend-ca" in found.fix


def test_a_ca_made_again_under_the_same_name_is_told_apart() -> None:
    """--backend-ca holds a CA of the right name but another key: the CA was regenerated."""
    old, new = make_ca("Backend CA"), make_ca("Backend CA")
    leaf = make_leaf(new, names=["127.0.0.1"])
    address = https_backend(ca=old.cert)
    found = handshake_finding(
        refused(address, VERIFY_FAILED, leaf.cert), backend=address, where=WHERE, now=NOW
    )
    assert "holds a CA named CN=Backend CA, but not the one that signed" in found.detail


def test_a_handshake_that_is_not_tls_says_whether_it_is_plain_http() -> None:
    """An SSL error other than verification: the 502's question about plain http."""
    address = https_backend()
    assert address.tls is not None
    said = describe_tls_failure(
        Failure(SSL.Error([("SSL routines", "", "wrong version number")])), address.tls, port=8443
    )
    found = handshake_finding(
        Handshake(Outcome.FAILED, said=said), backend=address, where=WHERE, now=NOW
    )
    assert found.detail == f"{WHERE} failed the TLS handshake (wrong version number)"
    assert "plain http (then use an http:// --backend)" in found.fix
    closed = describe_tls_failure(Failure(net_error.ConnectionDone()), address.tls, port=8443)
    assert (
        "closed the connection during the TLS handshake"
        in handshake_finding(
            Handshake(Outcome.FAILED, said=closed), backend=address, where=WHERE, now=NOW
        ).detail
    )


def test_a_silent_tls_port_is_a_timed_problem() -> None:
    """No handshake in time: a problem saying how long doctor waited."""
    found = handshake_timeout_finding(where=WHERE, seconds=3.0)
    assert found.status is Status.PROBLEM
    assert "did not complete a TLS handshake within 3 s" in found.detail


def test_certificate_names_are_its_dns_names_and_addresses() -> None:
    """The subjectAltName, DNS names first; none without the extension."""
    assert certificate_names(make_leaf(None, names=["::1", "a.test"]).cert) == ("a.test", "::1")
    assert certificate_names(make_leaf(None, san=False).cert) == ()


# --- unix: backends ------------------------------------------------------------------------


SOCKET = "/run/app/http.sock"
APP_OWNER = Owner("srwxr-x---", "app", "www-data")


def test_a_socket_that_accepts_is_ok_with_its_mode_and_owner() -> None:
    """Rule 1's happy end: a socket, connected."""
    found = socket_finding(SocketFile(SOCKET, "alice", kind="socket", owner=APP_OWNER))
    assert found.status is Status.OK
    assert found.detail == f"{SOCKET} is a socket (srwxr-x--- app:www-data) and accepts connections"


def test_a_missing_socket_names_the_path_and_the_sockets_that_are_there() -> None:
    """Wrong path: the file is absent; the sockets in its directory are listed."""
    found = socket_finding(SocketFile(SOCKET, "alice", sockets_nearby=("/run/app/gunicorn.sock",)))
    assert found.status is Status.PROBLEM
    assert "no socket at /run/app/http.sock: no file by that name in /run/app" in found.detail
    assert "(the socket files there: /run/app/gunicorn.sock)" in found.detail
    assert "start your app" in found.fix
    assert "--bind unix:/run/app/http.sock" in found.fix
    gone = socket_finding(SocketFile(SOCKET, "alice", missing_directory="/run/app"))
    assert "the directory /run/app does not exist" in gone.detail


def test_a_file_that_is_not_a_socket_says_what_it_is() -> None:
    """A regular file or a directory: not a socket; a directory suggests a file inside it."""
    file = socket_finding(SocketFile("/run/app/http.pid", "alice", kind="regular file"))
    assert file.detail == "/run/app/http.pid is a regular file, not a socket"
    directory = socket_finding(SocketFile("/run/app", "alice", kind="directory"))
    assert "--backend unix:/run/app/app.sock" in directory.fix


def test_a_socket_nobody_listens_on_is_refused_and_stale() -> None:
    """ECONNREFUSED on a socket file: nothing listening, the app left it behind."""
    found = socket_finding(
        SocketFile(SOCKET, "alice", kind="socket", owner=APP_OWNER, connect=REFUSED)
    )
    assert found.status is Status.PROBLEM
    assert "nothing is listening on it (connection refused)" in found.detail
    assert "start your app" in found.fix


def test_permission_denied_on_the_socket_says_who_can_fix_it() -> None:
    """EACCES: the socket's owner or root; the group to join; the user doctor ran as."""
    found = socket_finding(
        SocketFile(SOCKET, "alice", kind="socket", owner=APP_OWNER, connect=DENIED)
    )
    assert found.status is Status.PROBLEM
    assert found.detail.startswith(f"permission denied: alice may not connect to {SOCKET}")
    assert "write permission on the socket file" in found.detail
    assert found.fix.startswith("app (the socket's owner, through the app's settings) or root")
    assert "sudo usermod -aG www-data USER" in found.fix
    assert "run tlsproxy as app" in found.fix
    assert "doctor ran as alice" in found.fix


def test_a_directory_that_cannot_be_searched_is_named_with_its_owner() -> None:
    """stat itself was refused: the directory in the way, its owner, and chmod g+x."""
    found = socket_finding(
        SocketFile(
            SOCKET,
            "alice",
            blocked="/run/app",
            blocked_owner=Owner("drwx------", "app", "app"),
        )
    )
    assert found.status is Status.PROBLEM
    assert "alice may not look inside /run/app (drwx------ app:app)" in found.detail
    assert "`chmod g+x /run/app`" in found.fix


def test_another_connect_failure_is_said_in_its_own_words() -> None:
    """A timeout (full listen queue) is a problem quoting the reason."""
    found = socket_finding(
        SocketFile(SOCKET, "alice", kind="socket", connect="no answer within 2 s")
    )
    assert found.status is Status.PROBLEM
    assert found.detail == f"{SOCKET} is a socket, but connecting failed: no answer within 2 s"


# --- the flags -----------------------------------------------------------------------------


def doctor(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run(list(argv), out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def test_backend_tls_flags_follow_the_rules_of_twistd_tlsproxy(tmp_path: Path) -> None:
    """--backend-ca and friends are usage errors where twistd refuses them (exit 2, no probe)."""
    status, out, err = doctor("--backend", "http://127.0.0.1:8000", "--insecure-backend")
    assert (status, out) == (2, "")
    assert "--insecure-backend applies to an https:// backend only" in err
    https = "https://127.0.0.1:8443"
    status, _, err = doctor("--backend", https, "--backend-ca", str(tmp_path / "none.pem"))
    assert status == 2
    assert "--backend-ca" in err
    assert "cannot read it" in err
    ca = write_pem(tmp_path / "ca.pem", make_ca().cert)
    status, _, err = doctor("--backend", https, "--backend-ca", str(ca), "--insecure-backend")
    assert status == 2
    assert "contradict each other" in err
    status, _, err = doctor("--backend", https, "--backend-server-name", "not a name!")
    assert status == 2
    assert "is neither a DNS name nor an IP address" in err

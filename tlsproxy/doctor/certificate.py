"""The certificate tlsproxy would serve: does it load, cover the names, stay in date, and chain.

Rules:

1. The certificate is found as tlsproxy finds it (``--cert``/``--key``, else the development
   files in ``--certs-dir``), but doctor only reads: it never creates or renews a file, so
   running it cannot change what it is diagnosing.
2. Each check judges one thing. Dates are judged by the dates check alone: loading and chain
   verification happen at a moment inside every certificate's validity, so an expired
   certificate is one problem with one fix, not three.
3. The fixes name the command for the mode in use: the development CA is reissued by
   ``python -m tlsproxy certs``; a certificate of your own is renewed with its CA.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from tlsproxy.doctor.finding import Finding, ok, problem, skipped, warning
from tlsproxy.tls.certstore import (
    EXPIRY_WARNING,
    SELF_SIGNED_RECIPE,
    CertificateError,
    LoadedCertificate,
    load_certificate,
    names_missing,
    parse_ip,
)
from tlsproxy.tls.command import read_passphrase
from tlsproxy.tls.devca import CA_CERT_NAME, LEAF_CERT_NAME, LEAF_KEY_NAME, ca_permits

LOAD = "certificate"
NAMES = "certificate names"
DATES = "certificate dates"
CHAIN = "certificate chain"


@dataclass(frozen=True)
class ServedCertificate:
    """The pair tlsproxy would serve, and the certificate clients must trust for it."""

    loaded: LoadedCertificate
    # The development CA, or the self-signed end of the --cert chain; None when the chain ends
    # in a CA outside the file (a public CA, which clients already trust).
    anchor: x509.Certificate | None
    anchor_path: Path | None
    certs_dir: Path | None  # development mode: where the CA lives

    @property
    def path_certificates(self) -> list[x509.Certificate]:
        """Leaf, chain, and the anchor when the chain does not already end in it."""
        certificates = [self.loaded.leaf, *self.loaded.chain]
        if self.anchor is not None and self.anchor != certificates[-1]:
            certificates.append(self.anchor)
        return certificates

    @property
    def intermediates(self) -> list[x509.Certificate]:
        """The chain as sent to clients, without the anchor they must already hold."""
        return [c for c in self.loaded.chain if c != self.anchor]

    def renew_hint(self) -> str:
        """The command that makes a fresh certificate in this mode."""
        if self.certs_dir is not None:
            return (
                f"run `python -m tlsproxy certs --certs-dir {self.certs_dir}` (tlsproxy does "
                "the same at startup): it reissues the leaf from the same CA"
            )
        return (
            f"renew it with its CA (e.g. `certbot renew`), or make a new one: {SELF_SIGNED_RECIPE}"
        )


def load_served(
    *,
    cert: Path | None,
    key: Path | None,
    passphrase_file: Path | None,
    certs_dir: Path,
    now: datetime,
) -> ServedCertificate | Finding:
    """Read the pair tlsproxy would serve; a problem finding when it cannot be served at all."""
    if cert is None:
        return _load_development(certs_dir, now=now)
    try:
        passphrase = None if passphrase_file is None else read_passphrase(passphrase_file)
        loaded = load_certificate(cert, key, passphrase=passphrase, now=_load_moment(cert, now))
    except CertificateError as exc:
        return _refused(str(exc))
    anchor = self_signed_end([loaded.leaf, *loaded.chain])
    return ServedCertificate(
        loaded=loaded, anchor=anchor, anchor_path=cert if anchor else None, certs_dir=None
    )


def _load_development(certs_dir: Path, *, now: datetime) -> ServedCertificate | Finding:
    cert_path, ca_path = certs_dir / LEAF_CERT_NAME, certs_dir / CA_CERT_NAME
    make = (
        f"run `python -m tlsproxy certs --certs-dir {certs_dir}` (or start tlsproxy once with "
        f"--certs-dir {certs_dir}): it makes the development CA and certificate"
    )
    if not cert_path.exists():
        return problem(
            LOAD,
            f"there is no development certificate in {certs_dir} ({cert_path} is missing)",
            make,
        )
    try:
        ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    except (OSError, ValueError) as exc:
        return problem(
            LOAD,
            f"the development CA {ca_path} cannot be read ({_reason(exc)})",
            f"tlsproxy never replaces a CA you may trust: move {certs_dir} away "
            f"(`mv {certs_dir} {certs_dir}.old`), then {make}, and trust the new CA",
        )
    try:
        loaded = load_certificate(
            cert_path, certs_dir / LEAF_KEY_NAME, now=_load_moment(cert_path, now)
        )
    except CertificateError as exc:
        return _refused(str(exc), fallback=make)
    return ServedCertificate(loaded=loaded, anchor=ca, anchor_path=ca_path, certs_dir=certs_dir)


def _load_moment(cert_path: Path, now: datetime) -> datetime:
    """``now`` moved inside the leaf's validity (rule 2); ``now`` when the file does not parse."""
    try:
        leaf = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    except (OSError, ValueError, IndexError):
        return now  # load_certificate will explain what is wrong with the file
    return moment_within([leaf], now)


def _refused(message: str, *, fallback: str = "") -> Finding:
    """A certstore message is "what is wrong; the fix": split it into the two lines."""
    detail, separator, fix = message.partition("; ")
    if not separator:
        fix = fallback or "docs/certificates.md lists every certificate message and its fix"
    return problem(LOAD, f"tlsproxy cannot serve it: {detail}", fix)


def _reason(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def self_signed_end(certificates: Sequence[x509.Certificate]) -> x509.Certificate | None:
    """The last certificate when it signed itself (a root, or a self-signed leaf), else None."""
    last = certificates[-1]
    if last.issuer != last.subject:
        return None
    try:
        last.verify_directly_issued_by(last)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return None
    return last


def moment_within(certificates: Sequence[x509.Certificate], now: datetime) -> datetime:
    """``now`` if every certificate is valid then, else the nearest moment when all are."""
    start = max(c.not_valid_before_utc for c in certificates)
    end = min(c.not_valid_after_utc for c in certificates)
    if start > end:
        return now  # no such moment: let the verification say which one is out of date
    return min(max(now, start), end)


# --- names -------------------------------------------------------------------------------------


def names_finding(
    served: ServedCertificate, *, required: Sequence[str], optional: Sequence[str] = ()
) -> Finding:
    """Whether the leaf covers the names people will type: ``required`` ones, then ``optional``.

    A required name missing is a problem; an optional one (localhost on a certificate of your own
    made for ``--hostname`` names) is a warning.
    """
    loaded = served.loaded
    covered = ", ".join(loaded.names) or "no names (it has no subjectAltName)"
    missing = names_missing(loaded, required)
    missing_optional = names_missing(loaded, [n for n in optional if n not in required])
    where = loaded.cert_path
    if missing:
        return problem(
            NAMES,
            f"{where} does not cover {', '.join(missing)} (it covers {covered}); "
            "browsers refuse it for those names",
            _names_fix(served, missing),
        )
    if missing_optional:
        return warning(
            NAMES,
            f"{where} does not cover {', '.join(missing_optional)} (it covers {covered}); "
            f"https://{_url_host(missing_optional[0])}:PORT/ on this machine will be refused",
            "use the names it covers, or " + _names_fix(served, missing_optional),
        )
    wanted = dict.fromkeys([*required, *optional])
    return ok(NAMES, f"{where} covers {', '.join(wanted) or covered}")


def _names_fix(served: ServedCertificate, missing: Sequence[str]) -> str:
    if served.certs_dir is not None:
        extra = " ".join(f"--hostname {name}" for name in missing)
        anchor = served.anchor
        if anchor is not None and not all(ca_permits(anchor, name) for name in missing):
            return (
                f"the development CA may not sign {', '.join(missing)} (its name constraints "
                f"are fixed when it is made): prefer a name under .test or .localhost, or move "
                f"{served.certs_dir} away and run `python -m tlsproxy certs --certs-dir "
                f"{served.certs_dir} {extra}` to make a new CA (then trust it)"
            )
        return (
            f"run `python -m tlsproxy certs --certs-dir {served.certs_dir} {extra}` (or start "
            f"tlsproxy with {extra}): the leaf is reissued for every name"
        )
    san = ",".join(("IP:" if parse_ip(name) else "DNS:") + name for name in missing)
    return (
        f"get a certificate whose subjectAltName lists them (openssl: -addext "
        f"subjectAltName={san}), or leave out --cert/--key to use the development certificate"
    )


def _url_host(name: str) -> str:
    ip = parse_ip(name)
    return f"[{ip}]" if isinstance(ip, ipaddress.IPv6Address) else name


# --- dates -------------------------------------------------------------------------------------


def dates_finding(served: ServedCertificate, now: datetime) -> Finding:
    """Whether the leaf, its chain and the CA are valid now, and not about to expire."""
    leaf = served.loaded.leaf
    where = served.loaded.cert_path
    if leaf.not_valid_after_utc < now:
        return problem(
            DATES,
            f"{where} expired on {_moment(leaf.not_valid_after_utc)} (now {_moment(now)}); "
            "every client refuses it",
            served.renew_hint(),
        )
    if leaf.not_valid_before_utc > now:
        return problem(
            DATES,
            f"{where} is not valid before {_moment(leaf.not_valid_before_utc)} "
            f"(now {_moment(now)})",
            "check this machine's clock (`date -u`; enable NTP), or wait until then",
        )
    for number, certificate in enumerate(served.path_certificates[1:], 2):
        if certificate.not_valid_after_utc < now:
            name = "the CA" if certificate == served.anchor else f"chain certificate #{number}"
            return problem(
                DATES,
                f"{name} ({_subject(certificate)}) expired on "
                f"{_moment(certificate.not_valid_after_utc)}; clients refuse the chain",
                served.renew_hint()
                if served.certs_dir is None
                else f"move {served.certs_dir} away and run `python -m tlsproxy certs "
                "--certs-dir ...` to make a new CA, then trust it",
            )
    left = leaf.not_valid_after_utc - now
    if left < EXPIRY_WARNING:
        return warning(
            DATES,
            f"{where} expires soon, on {_moment(leaf.not_valid_after_utc)} (in {left.days} days)",
            served.renew_hint() + ", then reload tlsproxy (SIGHUP) or restart it",
        )
    return ok(
        DATES,
        f"valid until {leaf.not_valid_after_utc:%Y-%m-%d} ({left.days} days from now)",
    )


# --- chain -------------------------------------------------------------------------------------


def chain_finding(
    served: ServedCertificate,
    *,
    names: Sequence[str],
    now: datetime,
    system_roots: Sequence[x509.Certificate] = (),
) -> Finding:
    """Whether the leaf verifies up to its CA as a strict (browser-like) client checks it.

    ``system_roots`` are the anchors when the chain ends in a CA outside the file. Dates are
    left to :func:`dates_finding` (rule 2).
    """
    anchors = [served.anchor] if served.anchor is not None else list(system_roots)
    if not anchors:
        return skipped(
            CHAIN,
            f"{served.loaded.cert_path} does not end in a root CA and the system store could "
            "not be read, so there is nothing to verify against",
            "append the root CA to the --cert file to have it checked",
        )
    # The names are the names check's business: verify for one the leaf covers.
    covered = [n for n in (*names, *served.loaded.names) if not names_missing(served.loaded, [n])]
    name = covered[0] if covered else (names[0] if names else "localhost")
    ip = parse_ip(name)
    subject = x509.IPAddress(ip) if ip is not None else x509.DNSName(name)
    when = moment_within(served.path_certificates, now)
    try:
        path = _verify(anchors, served, subject, when, strict=True)
    except VerificationError as strict:
        # Tell a profile rule (which some clients waive) from a broken chain: try again with
        # every extension allowed.
        try:
            _verify(anchors, served, subject, when, strict=False)
        except VerificationError as broken:
            return _chain_failure(served, explain_verification_error(str(broken)))
        return _profile_warning(served, explain_verification_error(str(strict)))
    except ValueError as exc:  # a name cryptography will not verify against (e.g. a wildcard)
        return skipped(CHAIN, f"cannot verify for {name}: {exc}", "check with --hostname NAME")
    root = path[-1]
    via = f" via {len(path) - 2} intermediate(s)" if len(path) > 2 else ""
    return ok(CHAIN, f"the leaf verifies for {name}{via} up to {_subject(root)}")


def _verify(
    anchors: list[x509.Certificate],
    served: ServedCertificate,
    subject: x509.DNSName | x509.IPAddress,
    when: datetime,
    *,
    strict: bool,
) -> list[x509.Certificate]:
    builder = PolicyBuilder().store(Store(anchors)).time(when)
    if not strict:
        # cryptography insists that CAs have basicConstraints and server leaves a SAN (without
        # one, every browser refuses the leaf anyway); everything else is allowed here.
        ca_policy = ExtensionPolicy.permit_all().require_present(
            x509.BasicConstraints, Criticality.AGNOSTIC, None
        )
        builder = builder.extension_policies(
            ca_policy=ca_policy,
            ee_policy=ExtensionPolicy.permit_all().require_present(
                x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
            ),
        )
    return builder.build_server_verifier(subject).verify(served.loaded.leaf, served.intermediates)


def _profile_warning(served: ServedCertificate, reason: str) -> Finding:
    return warning(
        CHAIN,
        f"{served.loaded.cert_path} chains to its CA but breaks the RFC 5280 / CA-Browser Forum "
        f"profile ({reason}); Python 3.13+ (VERIFY_X509_STRICT), Go and Firefox may refuse it",
        "make the certificate again with that extension fixed, or use the development CA "
        "(leave out --cert/--key), which makes compliant certificates",
    )


def _chain_failure(served: ServedCertificate, reason: str) -> Finding:
    where = served.loaded.cert_path
    if served.certs_dir is not None:
        return problem(
            CHAIN,
            f"{where} does not verify against {served.anchor_path}: {reason}",
            served.renew_hint(),
        )
    return problem(
        CHAIN,
        f"the chain in {where} does not verify: {reason}",
        "give --cert the leaf followed by every intermediate (Let's Encrypt: fullchain.pem, not "
        "cert.pem); `python -m tlsproxy certs --cert ...` shows what the file holds",
    )


_EXTENSION_NAMES = {
    "2.5.29.14": "subjectKeyIdentifier",
    "2.5.29.15": "keyUsage",
    "2.5.29.17": "subjectAltName",
    "2.5.29.19": "basicConstraints",
    "2.5.29.30": "nameConstraints",
    "2.5.29.35": "authorityKeyIdentifier",
    "2.5.29.37": "extendedKeyUsage",
}


def explain_verification_error(message: str) -> str:
    """cryptography's verification error in plain words, without its object dump."""
    text = message.split(" (encountered processing", 1)[0].removeprefix("validation failed: ")
    if "all candidates exhausted with no interior errors" in text:
        return "no certificate in the chain was issued by the CA (or an intermediate is missing)"
    text = text.removeprefix("candidates exhausted: ")
    if text.startswith("signature does not match"):
        return "the CA's key did not sign it (a different CA with the same name?)"
    for oid, name in _EXTENSION_NAMES.items():
        text = text.replace(f"{oid}:", f"{name}:")
    return text


def _subject(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string() or "empty subject"


def _moment(when: datetime) -> str:
    return f"{when:%Y-%m-%d %H:%M} UTC"

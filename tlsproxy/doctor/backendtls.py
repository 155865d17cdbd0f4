"""An ``https://`` backend's TLS: does its certificate verify the way tlsproxy verifies it, and if
not, why.

Rules:

1. The handshake is tlsproxy's own (``tlsproxy.tls.client``'s connection creator, driven by
   ``tlsproxy.doctor.tlschannel``), and a failure is said first in the words of tlsproxy's 502
   page (``describe_tls_failure``): what doctor prints is what the proxy will answer.
2. Then doctor adds what the 502 cannot: the certificate the backend presented. Its names (for a
   name mismatch, the ``--backend-server-name`` to give), its dates (expired: renew it, another
   CA would not help), whether it is self-signed (it is then its own ``--backend-ca``), and who
   issued it.
3. ``--insecure-backend`` works but verifies nothing: a warning, as tlsproxy logs it.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from tlsproxy.backend import BackendAddress
from tlsproxy.doctor.backend import TLS
from tlsproxy.doctor.finding import Finding, ok, problem, warning
from tlsproxy.tls.certstore import EXPIRY_WARNING
from tlsproxy.tls.client import BackendTLS

_TESTING = "or, for testing only, --insecure-backend"


class Outcome(enum.Enum):
    """How the handshake ended."""

    VERIFIED = "verified"
    UNVERIFIED = "unverified"  # --insecure-backend: completed, nothing checked
    NAME = "name"  # the chain verified, service-identity refused the name
    CHAIN = "chain"  # OpenSSL refused the chain (unknown CA, self-signed, dates)
    FAILED = "failed"  # not TLS, no common version or cipher, closed mid-handshake


@dataclass(frozen=True)
class Handshake:
    """The TLS handshake with an https backend, as facts to judge."""

    outcome: Outcome
    said: str = ""  # for a failure, describe_tls_failure's words: "what went wrong; the fix"
    certificate: x509.Certificate | None = None  # the leaf the backend presented, if it did


def handshake_finding(
    handshake: Handshake, *, backend: BackendAddress, where: str, now: datetime
) -> Finding:
    """The backend TLS check for the handshake with ``where`` (an address, or host:port)."""
    tls = backend.tls
    assert tls is not None, "only an https:// backend has a TLS check"
    what, _, fix = handshake.said.partition("; ")
    cert = handshake.certificate
    if handshake.outcome is Outcome.VERIFIED:
        return _verified(tls, where=where, cert=cert, now=now)
    if handshake.outcome is Outcome.UNVERIFIED:
        return warning(
            TLS,
            f"{where} completed the TLS handshake, but its certificate is not verified "
            "(--insecure-backend): anything on the way can pose as the backend",
            "for anything but testing, give the CA that signed it with --backend-ca PEM "
            "instead of --insecure-backend",
        )
    if handshake.outcome is Outcome.NAME:
        names = certificate_names(cert) if cert is not None else ()
        holds = f" (it is for {', '.join(names)})" if names else ""
        example = _server_name_example(names)
        if example is not None:  # the 502's advice, with the flag spelled out for this certificate
            flag = "--backend-server-name"
            fix = fix.replace(flag, f"{flag} (here: {flag} {example})", 1)
        return problem(TLS, f"{where} {what}{holds}", fix)
    if handshake.outcome is Outcome.CHAIN and cert is not None:
        return _chain_refused(tls, where=where, what=what, cert=cert, now=now)
    return problem(TLS, f"{where} {what}", fix or f"check that {where} serves https")


def handshake_timeout_finding(*, where: str, seconds: float) -> Finding:
    """The backend accepted TCP but did not finish a TLS handshake in time."""
    return problem(
        TLS,
        f"{where} accepted the connection but did not complete a TLS handshake within "
        f"{seconds:g} s",
        "check that the port serves https (and that the app is not stuck); for a plain-HTTP "
        "app, use an http:// --backend",
    )


def certificate_names(cert: x509.Certificate) -> tuple[str, ...]:
    """The DNS names and IP addresses a certificate is issued to (its subjectAltName)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    dns = san.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return (*dns, *ips)


def _server_name_example(names: tuple[str, ...]) -> str | None:
    """A name to give --backend-server-name: the first exact DNS name, else an address."""
    exact = [name for name in names if not name.startswith("*")]
    dns = [name for name in exact if not _is_ip(name)]
    return next(iter(dns or exact), None)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _trusted(tls: BackendTLS) -> str:
    return "the --backend-ca file" if tls.ca_pem is not None else "the system store"


def _verified(
    tls: BackendTLS, *, where: str, cert: x509.Certificate | None, now: datetime
) -> Finding:
    said = f"{where}: its certificate verifies for {tls.server_name} against {_trusted(tls)}"
    if cert is None:
        return ok(TLS, said)
    left = cert.not_valid_after_utc - now
    if left < EXPIRY_WARNING:
        return warning(
            TLS,
            f"{said}, but expires soon, on {_day(cert.not_valid_after_utc)} (in {left.days} "
            "days); then tlsproxy will refuse it",
            "renew the backend's certificate before then",
        )
    return ok(
        TLS,
        f"{said} (issued by {_subject(cert.issuer)}, valid until {_day(cert.not_valid_after_utc)})",
    )


def _chain_refused(
    tls: BackendTLS, *, where: str, what: str, cert: x509.Certificate, now: datetime
) -> Finding:
    """Rule 2 for a chain OpenSSL refused: the reasons doctor can see in the certificate."""
    reasons: list[str] = []
    fixes: list[str] = []
    if cert.not_valid_after_utc < now:
        ago = (now - cert.not_valid_after_utc).days
        reasons.append(f"it expired on {_day(cert.not_valid_after_utc)} ({ago} days ago)")
        fixes.append("renew the backend's certificate (no --backend-ca accepts an expired one)")
    elif cert.not_valid_before_utc > now:
        reasons.append(f"it is not valid before {_day(cert.not_valid_before_utc)}")
        fixes.append("check the clock here and on the backend (`date -u`), or wait until then")
    issuer_known = _issuer_in(tls, cert)
    if cert.issuer == cert.subject and not issuer_known:
        reasons.append(f"it is self-signed ({_subject(cert.subject)})")
        fixes.append(
            "give the certificate itself with --backend-ca PEM (a self-signed certificate is its "
            f"own CA), {_TESTING}"
        )
    elif issuer_known:
        if not reasons:
            reasons.append(
                f"the --backend-ca file holds a CA named {_subject(cert.issuer)}, but not the one "
                "that signed this certificate (was the CA made again?)"
            )
            fixes.append(f"give the current certificate of that CA with --backend-ca, {_TESTING}")
    elif not reasons or tls.ca_pem is not None:
        reasons.append(f"it is issued by {_subject(cert.issuer)}, which is not in {_trusted(tls)}")
        fixes.append(
            f"give the certificate of {_subject(cert.issuer)}, the CA that signed it, with "
            f"--backend-ca PEM, {_TESTING}"
        )
    return problem(TLS, f"{where} {what}: {'; '.join(reasons)}", "; ".join(fixes))


def _issuer_in(tls: BackendTLS, cert: x509.Certificate) -> bool:
    """Whether the --backend-ca file holds a CA by the name of ``cert``'s issuer."""
    if tls.ca_pem is None:
        return False
    return any(ca.subject == cert.issuer for ca in x509.load_pem_x509_certificates(tls.ca_pem))


def _subject(name: x509.Name) -> str:
    return name.rfc4514_string() or "an empty name"


def _day(when: datetime) -> str:
    return f"{when:%Y-%m-%d %H:%M} UTC"

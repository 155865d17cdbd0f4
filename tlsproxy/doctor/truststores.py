"""Whether this machine's clients trust the certificate: the system store, NSS, Node.js, Python.

Rules:

1. Each store is read the way its clients read it: the system store through OpenSSL's own
   verification against its compiled-in default locations (what curl, wget and Python's ``ssl``
   use when no variable overrides them), NSS through ``certutil``, Node.js and Python through
   the variables that point them at a bundle. The CA is recognised by its bytes (so by its
   fingerprint), never by its name: two development CAs have the same name.
2. A store that does not trust the CA is a warning: tlsproxy works, only that store's clients
   complain. Doctor installs nothing; the fix says how (``python -m tlsproxy trust`` does it).
3. Reading a store never hangs: ``certutil`` runs with a timeout.
"""

from __future__ import annotations

import base64
import binascii
import re
import shlex
import ssl
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto

from tlsproxy.doctor.certificate import ServedCertificate, moment_within
from tlsproxy.doctor.finding import Finding, ok, skipped, warning
from tlsproxy.tls.nss import Certutil, trusts_websites

SYSTEM = "system trust"
NSS = "NSS trust (Chromium)"
NODE = "Node.js trust"
PYTHON = "Python trust"

CERTUTIL_TIMEOUT = 5.0
MAX_NSS_ENTRIES = 200  # a user database holds a handful; this bounds the certutil calls

_PEM_BLOCK = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


def certificates_in(pem: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle; damaged blocks and text between blocks are ignored."""
    found = []
    with warnings.catch_warnings():
        # System bundles hold old roots that cryptography warns about (negative serials...):
        # the reader of doctor's report can do nothing about them.
        warnings.simplefilter("ignore")
        for block in _PEM_BLOCK.findall(pem):
            try:
                found.append(x509.load_pem_x509_certificate(block))
            except ValueError:
                continue  # one bad block in a system bundle must not hide the others
    return found


def bundle_contains(pem: bytes, certificate: x509.Certificate) -> bool:
    """Whether the PEM bundle holds exactly this certificate (compared as DER bytes)."""
    wanted = certificate.public_bytes(serialization.Encoding.DER)
    for block in _PEM_BLOCK.findall(pem):
        body = b"".join(block.splitlines()[1:-1])
        try:
            if base64.b64decode(body, validate=True) == wanted:
                return True
        except binascii.Error:
            continue
    return False


def _ca_words(served: ServedCertificate) -> str:
    assert served.anchor is not None
    if served.certs_dir is not None:
        return f"the development CA {served.anchor_path}"
    if served.anchor == served.loaded.leaf:
        return f"the self-signed certificate {served.anchor_path}"
    return f"the root CA {served.anchor.subject.rfc4514_string()} (in {served.anchor_path})"


def _ca_arg(served: ServedCertificate) -> str:
    assert served.anchor_path is not None
    return shlex.quote(str(served.anchor_path.absolute()))


def _outside_ca(check: str, served: ServedCertificate, clients: str) -> Finding:
    return skipped(
        check,
        f"{served.loaded.cert_path} is issued by {served.loaded.leaf.issuer.rfc4514_string()}, "
        "whose root is not in the file",
        f"nothing to do for a public CA ({clients} trust those already); for a private CA, "
        "append its root to the --cert file so doctor can check it",
    )


# --- the system store --------------------------------------------------------------------------


@dataclass(frozen=True)
class SystemStore:
    """OpenSSL's compiled-in trust locations (variables such as SSL_CERT_FILE left out)."""

    cafile: Path | None
    capath: Path | None

    @classmethod
    def default(cls) -> SystemStore:
        paths = ssl.get_default_verify_paths()
        cafile = Path(paths.openssl_cafile)
        capath = Path(paths.openssl_capath)
        return cls(
            cafile=cafile if cafile.is_file() else None,
            capath=capath if capath.is_dir() else None,
        )

    def describe(self) -> str:
        return str(self.cafile or self.capath or "none found")

    def roots(self) -> list[x509.Certificate]:
        """The certificates of the CA file (the anchors for a chain that ends outside --cert)."""
        if self.cafile is None:
            return []
        try:
            return certificates_in(self.cafile.read_bytes())
        except OSError:
            return []


def system_finding(served: ServedCertificate, store: SystemStore, now: datetime) -> Finding:
    """Whether OpenSSL, with the system store alone, accepts the leaf and its chain."""
    if store.cafile is None and store.capath is None:
        return skipped(
            SYSTEM,
            "OpenSSL has no system trust store on this machine",
            "install the ca-certificates package (Debian/Ubuntu), then run doctor again",
        )
    x509_store = crypto.X509Store()
    x509_store.load_locations(store.cafile, store.capath)
    x509_store.set_time(moment_within(served.path_certificates, now))  # dates: their own check
    context = crypto.X509StoreContext(
        x509_store,
        crypto.X509.from_cryptography(served.loaded.leaf),
        [crypto.X509.from_cryptography(c) for c in served.intermediates],
    )
    try:
        context.verify_certificate()
    except crypto.X509StoreContextError as exc:
        return _system_untrusted(served, store, str(exc))
    return ok(SYSTEM, f"the system store ({store.describe()}) trusts it: curl, wget, Python's ssl")


def _system_untrusted(served: ServedCertificate, store: SystemStore, reason: str) -> Finding:
    if served.anchor is None:
        return warning(
            SYSTEM,
            f"the system store ({store.describe()}) does not accept the chain: {reason}",
            "give --cert the leaf followed by every intermediate (fullchain.pem)",
        )
    ca = _ca_arg(served)
    if served.certs_dir is not None:
        fix = (
            f"run `python -m tlsproxy trust`, or on Debian/Ubuntu: `sudo cp {ca} "
            "/usr/local/share/ca-certificates/tlsproxy-dev-ca.crt && sudo update-ca-certificates` "
            f"(one program: curl --cacert {ca})"
        )
    else:
        fix = (
            "if clients should trust it, add that certificate alone to the system store (Debian/"
            "Ubuntu: as /usr/local/share/ca-certificates/NAME.crt, then `sudo "
            "update-ca-certificates`); one program: curl --cacert FILE"
        )
    return warning(
        SYSTEM,
        f"the system store ({store.describe()}) does not trust {_ca_words(served)}: curl, "
        "wget and most programs will refuse https://localhost",
        fix,
    )


# --- NSS (Chromium, and Firefox's shared database) ---------------------------------------------


@dataclass(frozen=True)
class NssEntry:
    """One nickname in an NSS database: its trust flags and the certificates filed under it."""

    nickname: str
    trust: str  # "SSL,S/MIME,JAR/XPI" flags, e.g. "C,,"
    certificates: tuple[x509.Certificate, ...]


def default_nss_db() -> Path:
    return Path.home() / ".pki" / "nssdb"


def read_nss(program: str, db: Path) -> list[NssEntry]:
    """Every entry of the NSS database ``db`` with its certificates; raises OSError on failure."""
    certutil = Certutil(program, timeout=CERTUTIL_TIMEOUT)
    entries = []
    for nickname, trust in certutil.entries(db)[:MAX_NSS_ENTRIES]:
        try:
            pem = certutil.pem(db, nickname)  # empty for one it cannot export (a locked token)
        except OSError:
            continue  # certutil did not answer in time for this entry
        entries.append(NssEntry(nickname, trust, tuple(certificates_in(pem))))
    return entries


def nss_finding(served: ServedCertificate, *, db: Path, entries: Sequence[NssEntry]) -> Finding:
    """Whether the NSS database ``db`` (already read into ``entries``) trusts the CA for TLS."""
    assert served.anchor is not None
    ca = _ca_arg(served)
    add = f"certutil -d sql:{db} -A -t C,, -n tlsproxy-dev-ca -i {ca}"
    for entry in entries:
        if served.anchor in entry.certificates:
            ssl_flags = entry.trust.split(",", 1)[0]
            # A self-signed leaf is trusted as a peer (P) as well as as a CA.
            if trusts_websites(entry.trust) or (
                "P" in ssl_flags and served.anchor == served.loaded.leaf
            ):
                return ok(NSS, f"{db} trusts it for websites (nickname {entry.nickname!r})")
            return warning(
                NSS,
                f"{db} holds {_ca_words(served)} as {entry.nickname!r} but does not trust it for "
                f"websites (trust flags {entry.trust!r})",
                f"certutil -d sql:{db} -M -n {shlex.quote(entry.nickname)} -t C,,",
            )
    return warning(
        NSS,
        f"{db} does not hold {_ca_words(served)}: Chromium and Chrome will show a certificate "
        "error",
        f"run `python -m tlsproxy trust`, or: {add} (then restart the browser)",
    )


def nss_unavailable(served: ServedCertificate, *, db: Path, certutil: str | None) -> Finding | None:
    """Why the NSS database cannot be checked, or None when it can."""
    if served.anchor is None:
        return _outside_ca(NSS, served, "browsers")
    if certutil is None:
        return skipped(
            NSS,
            "certutil is not installed, so Chromium's certificate database cannot be read",
            "install it (Debian/Ubuntu: `sudo apt install libnss3-tools`) and run doctor again",
        )
    if not db.is_dir():
        return skipped(
            NSS,
            f"there is no NSS database at {db} (Chromium has not run as this user)",
            "start Chromium once, then run `python -m tlsproxy trust` or doctor again",
        )
    return None


# --- Node.js and Python: the variables that point them at a bundle ----------------------------


def _bundle_problem(served: ServedCertificate, value: str) -> str | None:
    """None when the bundle file ``value`` holds the CA, else what is wrong with it."""
    assert served.anchor is not None
    try:
        data = Path(value).read_bytes()
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return None if bundle_contains(data, served.anchor) else "does not contain it"


def node_finding(served: ServedCertificate, environ: Mapping[str, str]) -> Finding:
    """Whether NODE_EXTRA_CA_CERTS makes Node.js trust the CA (Node ignores the system store)."""
    if served.anchor is None:
        return _outside_ca(NODE, served, "Node.js and Python")
    ca = _ca_arg(served)
    value = environ.get("NODE_EXTRA_CA_CERTS", "")
    if not value:
        return skipped(
            NODE,
            "NODE_EXTRA_CA_CERTS is not set, so Node.js clients (server-side fetch, test "
            "runners) do not trust the CA; browsers do not need it",
            f"export NODE_EXTRA_CA_CERTS={ca} before starting Node.js clients",
        )
    trouble = _bundle_problem(served, value)
    if trouble is None:
        return ok(NODE, f"NODE_EXTRA_CA_CERTS={value} contains {_ca_words(served)}")
    return warning(
        NODE,
        f"NODE_EXTRA_CA_CERTS={value} {trouble} ({_ca_words(served)}): Node.js clients "
        "started from this shell refuse https://localhost",
        f"export NODE_EXTRA_CA_CERTS={ca} (or append the CA to {value})",
    )


PYTHON_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")


def python_finding(served: ServedCertificate, environ: Mapping[str, str]) -> Finding:
    """Whether SSL_CERT_FILE / REQUESTS_CA_BUNDLE, when set, lead Python clients to the CA."""
    if served.anchor is None:
        return _outside_ca(PYTHON, served, "Node.js and Python")
    ca = _ca_arg(served)
    given = {name: environ[name] for name in PYTHON_VARIABLES if environ.get(name)}
    if not given:
        return skipped(
            PYTHON,
            "neither SSL_CERT_FILE nor REQUESTS_CA_BUNDLE is set: Python's ssl and urllib follow "
            "the system store (above); requests and httpx use certifi, which does not hold the CA",
            f"for those clients: SSL_CERT_FILE={ca} (ssl, httpx), REQUESTS_CA_BUNDLE={ca} "
            "(requests)",
        )
    troubles = {name: _bundle_problem(served, value) for name, value in given.items()}
    settings = ", ".join(f"{name}={value}" for name, value in given.items())
    if not any(troubles.values()):
        holds = "holds" if len(given) == 1 else "each holds"
        return ok(PYTHON, f"{settings}: {holds} {_ca_words(served)}")
    bad = "; ".join(f"{n}={given[n]} {t}" for n, t in troubles.items() if t is not None)
    return warning(
        PYTHON,
        f"{bad} ({_ca_words(served)}): each variable replaces Python's trust store, so Python "
        "clients started from this shell refuse https://localhost",
        "add the CA to that bundle (for the system bundle: `python -m tlsproxy trust`), or "
        f"point the variable at one that holds it: `cat BUNDLE {ca} > bundle.pem`",
    )

"""`tlsproxy doctor`: run every check, print one line each with its fix, exit 1 on a problem.

Rules:

1. The flags mean what they mean to ``twistd tlsproxy`` and are validated by the same functions
   (``tlsproxy.config.parse_backend``, ``tlsproxy.tls.devca.wanted_names``); a bad flag is a
   usage error (exit status 2), like every other command.
2. Nothing a check meets escapes it: an unexpected error becomes that check's problem line, so
   doctor prints its report, never a traceback.
3. Each finding is printed as soon as it is known (the backend checks may take seconds), and
   checks that need a certificate that did not load say so instead of guessing.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, TypeVar

from tlsproxy.config import DEFAULT_PORT, ConfigError, parse_backend
from tlsproxy.doctor import backend as backend_checks
from tlsproxy.doctor import certificate as certificate_checks
from tlsproxy.doctor import truststores
from tlsproxy.doctor.finding import (
    Finding,
    exit_status,
    finding_lines,
    ok,
    problem,
    skipped,
    summary,
)
from tlsproxy.tls.certstore import CertificateError
from tlsproxy.tls.command import ArgumentParser, UsageExit
from tlsproxy.tls.devca import DEFAULT_NAMES, wanted_names

if TYPE_CHECKING:
    from tlsproxy.backend import BackendAddress

_T = TypeVar("_T")

PROG = "tlsproxy doctor"
DEFAULT_CERTS_DIR = Path("certs")


def _parser(*, out: TextIO, err: TextIO) -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description=(
            "Check what stands between a browser and your app: the certificate's names, "
            "dates and chain, whether this machine trusts its CA, whether the backend "
            "answers on IPv4 and IPv6, and whether it loops when told the request came "
            "over HTTPS. Takes the flags of `twistd tlsproxy`. Exit status: 0 when nothing "
            "is a problem (warnings allowed), 1 otherwise."
        ),
        out=out,
        err=err,
    )
    parser.add_argument(
        "--backend", required=True, metavar="URL", help="the plain-HTTP app, as for twistd"
    )
    parser.add_argument(
        "--port",
        default=str(DEFAULT_PORT),
        metavar="N",
        help=f"the TLS port browsers use (default: {DEFAULT_PORT})",
    )
    parser.add_argument("--cert", type=Path, metavar="PEM", help="your certificate (and chain)")
    parser.add_argument("--key", type=Path, metavar="PEM", help="its key (default: in --cert)")
    parser.add_argument(
        "--key-passphrase-file", type=Path, metavar="FILE", help="the passphrase of --key"
    )
    parser.add_argument(
        "--certs-dir",
        type=Path,
        default=DEFAULT_CERTS_DIR,
        metavar="DIR",
        help=f"where the development CA lives (default: {DEFAULT_CERTS_DIR})",
    )
    parser.add_argument(
        "--hostname",
        action="append",
        default=[],
        metavar="NAME",
        help="another name people type to reach the proxy (repeatable)",
    )
    return parser


def _port(raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"--port {raw!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port} is out of range; use 1-65535")
    return port


def run(
    argv: list[str],
    *,
    out: TextIO,
    err: TextIO,
    now: datetime | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run `tlsproxy doctor` with ``argv`` (after the subcommand name); returns the exit code."""
    parser = _parser(out=out, err=err)
    try:
        args = parser.parse_args(argv)
        if args.key is not None and args.cert is None:
            parser.error("--key needs --cert too (or give neither for the development certificate)")
        try:
            backend = parse_backend(args.backend)
            port = _port(args.port)
            names = wanted_names(args.hostname)
        except (ConfigError, CertificateError) as exc:
            parser.error(str(exc))
    except UsageExit as stop:
        return stop.status
    findings: list[Finding] = []

    def report(finding: Finding) -> None:
        findings.append(finding)
        for line in finding_lines(finding):
            out.write(f"{line}\n")
        out.flush()

    _certificate_checks(
        args,
        names=names,
        now=now or datetime.now(UTC),
        environ=os.environ if environ is None else environ,
        report=report,
    )
    try:
        _backend_checks(backend, port, report=report)
    except Exception as exc:  # rule 2
        report(_unexpected("backend", exc))
    out.write(f"{summary(findings)}\n")
    return exit_status(findings)


Report = Callable[[Finding], None]


def _certificate_checks(
    args: argparse.Namespace,
    *,
    names: tuple[str, ...],
    now: datetime,
    environ: Mapping[str, str],
    report: Report,
) -> None:
    served = _guarded(
        certificate_checks.LOAD,
        lambda: certificate_checks.load_served(
            cert=args.cert,
            key=args.key,
            passphrase_file=args.key_passphrase_file,
            certs_dir=args.certs_dir,
            now=now,
        ),
    )
    if isinstance(served, Finding):
        report(served)
        for check in _NEED_CERTIFICATE:
            report(skipped(check, "the certificate did not load", "fix the certificate first"))
        return
    loaded = served.loaded
    key = "" if loaded.key_path == loaded.cert_path else f" with its key {loaded.key_path}"
    report(ok(certificate_checks.LOAD, f"tlsproxy can serve {loaded.cert_path}{key}"))
    required, optional = _names_to_check(names, own=args.cert is not None)
    system = _guarded(truststores.SYSTEM, truststores.SystemStore.default)
    store = system if isinstance(system, truststores.SystemStore) else None
    checks: list[tuple[str, Callable[[], Finding]]] = [
        (
            certificate_checks.NAMES,
            lambda: certificate_checks.names_finding(served, required=required, optional=optional),
        ),
        (certificate_checks.DATES, lambda: certificate_checks.dates_finding(served, now)),
        (
            certificate_checks.CHAIN,
            lambda: certificate_checks.chain_finding(
                served,
                names=[*required, *optional],
                now=now,
                system_roots=store.roots() if store and served.anchor is None else (),
            ),
        ),
        (
            truststores.SYSTEM,
            lambda: truststores.system_finding(
                served, store or truststores.SystemStore(None, None), now
            ),
        ),
        (truststores.NSS, lambda: _nss(served)),
        (truststores.NODE, lambda: truststores.node_finding(served, environ)),
        (truststores.PYTHON, lambda: truststores.python_finding(served, environ)),
    ]
    for check, work in checks:
        report(_guarded(check, work))


_NEED_CERTIFICATE = (
    certificate_checks.NAMES,
    certificate_checks.DATES,
    certificate_checks.CHAIN,
    truststores.SYSTEM,
    truststores.NSS,
    truststores.NODE,
    truststores.PYTHON,
)


def _names_to_check(names: tuple[str, ...], *, own: bool) -> tuple[list[str], list[str]]:
    """(required, optional): with --cert and --hostname, the loopback names are only optional."""
    extra = [name for name in names if name not in DEFAULT_NAMES]
    if own and extra:
        return extra, list(DEFAULT_NAMES)
    return list(names), []


def _nss(served: certificate_checks.ServedCertificate) -> Finding:
    db = truststores.default_nss_db()
    certutil = shutil.which("certutil")
    unavailable = truststores.nss_unavailable(served, db=db, certutil=certutil)
    if unavailable is not None:
        return unavailable
    assert certutil is not None
    try:
        entries = truststores.read_nss(certutil, db)
    except OSError as exc:
        return skipped(
            truststores.NSS, f"cannot read {db}: {exc}", f"run `certutil -L -d sql:{db}` to see why"
        )
    return truststores.nss_finding(served, db=db, entries=entries)


def _backend_checks(backend: BackendAddress, port: int, *, report: Report) -> None:
    unprobed = backend_checks.unprobed_findings(backend)
    if unprobed:
        for finding in unprobed:
            report(finding)
        return
    try:
        plan = backend_checks.plan_addresses(backend, backend_checks.resolve)
    except OSError as exc:
        report(
            problem(
                backend_checks.ADDRESS,
                f"cannot resolve {backend.host} ({exc.strerror or exc})",
                f"check the host in --backend {backend.url}, or give an IP address",
            )
        )
        report(skipped(backend_checks.FORWARDED, "the backend has no address", "fix it first"))
        return
    probes = {a: backend_checks.probe(a, backend.port) for a in (*plan.used, *plan.extra)}
    for finding in backend_checks.reachability_findings(backend, plan, probes):
        report(finding)
    address = backend_checks.first_answering(plan, probes)
    if address is None:
        report(
            skipped(
                backend_checks.FORWARDED,
                "the backend is not reachable",
                "make it reachable first (above)",
            )
        )
        return
    report(_guarded(backend_checks.FORWARDED, lambda: _forwarded(backend, address, port)))


def _forwarded(backend: BackendAddress, address: str, port: int) -> Finding:
    request = backend_checks.forwarded_request(backend, port)
    where = backend_checks.host_port(address, backend.port)
    try:
        data = backend_checks.fetch_head(address, backend.port, request)
        response = backend_checks.parse_response_head(data)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return problem(
            backend_checks.FORWARDED,
            f"{where} accepted the connection but gave no HTTP answer to GET /: {reason}",
            "check that --backend points at your app's plain-HTTP port (not an https:// one) "
            "and that the app is not stuck",
        )
    return backend_checks.forwarded_finding(response, backend=backend, port=port)


def _guarded(check: str, work: Callable[[], _T]) -> _T | Finding:
    """``work()``, or a problem line for ``check`` if it raises anything (rule 2)."""
    try:
        return work()
    except Exception as exc:  # rule 2: one check's failure must not hide the others
        return _unexpected(check, exc)


def _unexpected(check: str, exc: Exception) -> Finding:
    return problem(
        check,
        f"the check failed unexpectedly ({type(exc).__name__}: {exc})",
        "this is a bug in tlsproxy doctor: please report it with this line; the other checks "
        "still ran",
    )

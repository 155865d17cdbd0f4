"""`tlsproxy doctor`: run every check, print one line each with its fix, exit 1 on a problem.

Rules:

1. The flags mean what they mean to ``twistd tlsproxy`` and are validated by the same functions
   (``tlsproxy.backendoptions.parse_backend`` and the rules for ``--backend-ca``,
   ``--backend-server-name`` and ``--insecure-backend``, ``tlsproxy.tls.devca.wanted_names``);
   a bad flag is a usage error (exit status 2), like every other command.
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
from typing import TextIO

from tlsproxy.backendoptions import backend_tls, parse_backend  # rule 1: startup's own rules
from tlsproxy.configerror import ConfigError
from tlsproxy.doctor import certificate as certificate_checks
from tlsproxy.doctor import truststores
from tlsproxy.doctor.backendchecks import backend_checks
from tlsproxy.doctor.finding import (
    Finding,
    Report,
    exit_status,
    finding_lines,
    guarded,
    ok,
    skipped,
    summary,
    unexpected,
)
from tlsproxy.listenoptions import DEFAULT_PORT
from tlsproxy.tls.certstore import CertificateError
from tlsproxy.tls.command import ArgumentParser, UsageExit
from tlsproxy.tls.devca import DEFAULT_NAMES, wanted_names

PROG = "tlsproxy doctor"
DEFAULT_CERTS_DIR = Path("certs")


def _parser(*, out: TextIO, err: TextIO) -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description=(
            "Check what stands between a browser and your app: the certificate's names, "
            "dates and chain, whether this machine trusts its CA, whether the backend "
            "answers on IPv4 and IPv6 (or on its unix socket), whether its certificate "
            "verifies (https://), and whether it loops when told the request came "
            "over HTTPS. Takes the flags of `twistd tlsproxy`. Exit status: 0 when nothing "
            "is a problem (warnings allowed), 1 otherwise."
        ),
        out=out,
        err=err,
    )
    parser.add_argument(
        "--backend",
        required=True,
        metavar="URL",
        help="your app: http://host:port[/prefix], https://host[:port][/prefix] or "
        "unix:/path/to.sock, as for twistd",
    )
    parser.add_argument(
        "--backend-ca",
        metavar="PEM",
        help="CA certificate(s) that verify an https:// backend (default: the system store)",
    )
    parser.add_argument(
        "--backend-server-name",
        metavar="NAME",
        help="name to send (SNI) and verify for an https:// backend (default: its URL's host)",
    )
    parser.add_argument(
        "--insecure-backend",
        action="store_true",
        help="do not verify an https:// backend's certificate (testing only)",
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
            backend = backend_tls(parse_backend(args.backend), vars(args))
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

    moment = now or datetime.now(UTC)
    _certificate_checks(
        args,
        names=names,
        now=moment,
        environ=os.environ if environ is None else environ,
        report=report,
    )
    try:
        backend_checks(backend, port, now=moment, report=report)
    except Exception as exc:  # rule 2
        report(unexpected("backend", exc))
    out.write(f"{summary(findings)}\n")
    return exit_status(findings)


def _certificate_checks(
    args: argparse.Namespace,
    *,
    names: tuple[str, ...],
    now: datetime,
    environ: Mapping[str, str],
    report: Report,
) -> None:
    served = guarded(
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
    system = guarded(truststores.SYSTEM, truststores.SystemStore.default)
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
        report(guarded(check, work))


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

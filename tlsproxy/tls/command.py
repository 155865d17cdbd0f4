"""`tlsproxy certs`: make or reuse the development certificates, or explain a given pair.

Exit status: 0 when the certificate can serve (warnings are printed), 1 with the one-line error
otherwise, 2 for a usage error.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TextIO

from tlsproxy.tls.certstore import (
    CertificateError,
    LoadedCertificate,
    load_certificate,
    names_missing,
)
from tlsproxy.tls.devca import CA_KEY_NAME, ensure_dev_certificates, trust_instructions

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

PROG = "tlsproxy certs"
DEFAULT_CERTS_DIR = Path("certs")


class UsageExit(Exception):
    """argparse wants to stop (help shown, or a usage error); ``status`` is its exit code."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser that writes to the given streams and raises UsageExit, never exits."""

    def __init__(self, *, prog: str, description: str, out: TextIO, err: TextIO) -> None:
        super().__init__(prog=prog, description=description)
        self._out = out
        self._err = err

    def print_help(self, file: SupportsWrite[str] | None = None) -> None:
        super().print_help(file or self._out)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            self._err.write(message)
        raise UsageExit(status)

    def error(self, message: str) -> NoReturn:
        self.print_usage(self._err)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser(*, out: TextIO, err: TextIO) -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        out=out,
        err=err,
        description=(
            "Create or reuse the development CA and leaf certificate (the default), or, with "
            "--cert, check a certificate/key pair exactly as tlsproxy does at startup."
        ),
    )
    parser.add_argument(
        "--certs-dir",
        type=Path,
        default=None,
        help=f"where the development CA and leaf live (default: {DEFAULT_CERTS_DIR})",
    )
    parser.add_argument(
        "--hostname",
        action="append",
        default=[],
        metavar="NAME",
        help="another DNS name or IP address for the leaf (repeatable); with --cert, check "
        "that the certificate covers it",
    )
    parser.add_argument("--cert", type=Path, help="a PEM certificate (and chain) to check")
    parser.add_argument("--key", type=Path, help="its PEM private key (default: in --cert)")
    parser.add_argument(
        "--key-passphrase-file",
        type=Path,
        metavar="FILE",
        help="a file holding the key's passphrase (one trailing newline is ignored)",
    )
    return parser


def run(argv: list[str], *, out: TextIO, err: TextIO, now: datetime | None = None) -> int:
    """Run `tlsproxy certs` with ``argv`` (after the subcommand name); returns the exit code."""
    parser = _parser(out=out, err=err)
    try:
        args = parser.parse_args(argv)
        if args.cert is None and (args.key or args.key_passphrase_file):
            parser.error("--key and --key-passphrase-file need --cert")
        if args.cert is not None and args.certs_dir is not None:
            parser.error("--certs-dir makes development certificates; --cert checks your own")
    except UsageExit as stop:
        return stop.status
    when = now if now is not None else datetime.now(UTC)
    try:
        if args.cert is not None:
            _explain(
                args.cert,
                args.key,
                passphrase_file=args.key_passphrase_file,
                hostnames=args.hostname,
                now=when,
                out=out,
            )
        else:
            _ensure(args.certs_dir or DEFAULT_CERTS_DIR, args.hostname, now=when, out=out)
    except CertificateError as exc:
        err.write(f"{PROG}: error: {exc}\n")
        return 1
    return 0


def _ensure(certs_dir: Path, hostnames: list[str], *, now: datetime, out: TextIO) -> None:
    made = ensure_dev_certificates(certs_dir, hostnames, now=now)
    loaded = load_certificate(made.cert_path, made.key_path, now=now)
    _lines(out, made.messages)
    _lines(out, ["files:"])
    _lines(
        out,
        [
            f"  {made.ca_cert_path}  the CA certificate: trust this one",
            f"  {made.ca_cert_path.with_name(CA_KEY_NAME)}  the CA key (owner-only; never "
            "share it)",
            f"  {made.cert_path}  the leaf certificate tlsproxy serves",
            f"  {made.key_path}  the leaf key (owner-only)",
        ],
    )
    _lines(out, ["leaf:"])
    _lines(out, [f"  {line}" for line in loaded.describe()[1:]])
    _lines(out, ["to trust the CA:"])
    _lines(out, [f"  {line}" for line in trust_instructions(made.ca_cert_path)])


def _explain(
    cert: Path,
    key: Path | None,
    *,
    passphrase_file: Path | None,
    hostnames: list[str],
    now: datetime,
    out: TextIO,
) -> None:
    passphrase = None if passphrase_file is None else read_passphrase(passphrase_file)
    loaded = load_certificate(cert, key, passphrase=passphrase, now=now)
    _lines(out, loaded.describe())
    _lines(out, [f"warning: {warning}" for warning in _warnings(loaded, hostnames)])
    _lines(out, ["ok: tlsproxy can serve this certificate"])


def _warnings(loaded: LoadedCertificate, hostnames: list[str]) -> list[str]:
    missing = names_missing(loaded, hostnames)
    extra = [f"the certificate does not cover {', '.join(missing)}"] if missing else []
    return [*loaded.warnings, *extra]


def read_passphrase(path: Path) -> bytes:
    """The passphrase in ``path``, without the one trailing newline editors add."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CertificateError(
            f"passphrase file {path} does not exist; check the path given to --key-passphrase-file"
        ) from None
    except OSError as exc:
        raise CertificateError(
            f"cannot read passphrase file {path}: {exc.strerror}; make it readable by the user "
            "running tlsproxy"
        ) from None
    return data.removesuffix(b"\n").removesuffix(b"\r")


def _lines(out: TextIO, lines: list[str] | tuple[str, ...]) -> None:
    for line in lines:
        out.write(f"{line}\n")

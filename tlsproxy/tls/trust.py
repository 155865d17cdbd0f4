"""`tlsproxy trust`: install the development CA where this machine's clients look, or remove it.

Rules:

1. Only this command installs anything, and ``--uninstall`` removes only what it installed. Each
   entry it makes is named after the CA's fingerprint (``tlsproxy-dev-ca-<16 hex>``), is checked
   against the CA's SHA-256 before removal, and is listed in ``trust-installed.json`` beside the
   CA. A CA already trusted under another name (added by hand) is reported and left alone.
2. One store, one step, one line: installed, already there, removed, not there, or skipped with
   the reason and the exact command to do it by hand. A missing tool or permission skips that
   step only.
3. Running twice installs once: each step looks before it changes a store, and verifies after.
4. Files are written to a temporary file and renamed, so a crash never leaves half a PEM.

Exit status: installing, 0 when at least one store trusts the CA, 1 when none does; uninstalling,
0 when nothing this command installed remains, 1 otherwise; 2 for a usage error.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TextIO

from tlsproxy.tls.certstore import CertificateError
from tlsproxy.tls.command import DEFAULT_CERTS_DIR, ArgumentParser, UsageExit
from tlsproxy.tls.devca import CA_CERT_NAME, ensure_dev_certificates, write_atomically
from tlsproxy.tls.nss import (
    NSS_TRUST,
    Certutil,
    MissingDatabase,
    NssDatabase,
    add_command,
    delete_command,
    discover_nss_databases,
    trust_command,
    trusts_websites,
)
from tlsproxy.tls.systemstore import (
    SYSTEM_LABELS,
    DebianStore,
    debian_bundle,
    find_program,
    system_kind,
)
from tlsproxy.tls.trustrecord import (
    CA,
    RECORD_NAME,
    Entry,
    Outcome,
    Step,
    read_record,
    write_record,
)

PROG = "tlsproxy trust"


# --- the steps: one store each -------------------------------------------------------------


def install_nss(certutil: Certutil, db: NssDatabase, ca: CA) -> Step:
    """Trust the CA in one NSS database, unless it is trusted there already."""
    entry = Entry("nss", str(db.path))
    if not db.exists():
        if not db.create:
            return Step(db.label, Outcome.SKIPPED, "no cert9.db there")
        certutil.create(db.path)
    rows = dict(certutil.entries(db.path))
    if ca.name in rows:
        if trusts_websites(rows[ca.name]) and ca.matches(certutil.pem(db.path, ca.name)):
            return Step(db.label, Outcome.PRESENT, f"as {ca.name}", entry)
    else:
        # Added by hand under another nickname: NSS would keep that nickname and take our
        # trust flags, so report it and leave it alone.
        for nickname, flags in rows.items():
            if not ca.matches(certutil.pem(db.path, nickname)):
                continue
            detail = f"the CA is there as {nickname!r} (trust {flags}), added by hand; "
            if trusts_websites(flags):
                return Step(db.label, Outcome.PRESENT, f"{detail}left alone")
            fix = trust_command(db.path, nickname)
            return Step(db.label, Outcome.SKIPPED, f"{detail}to trust it: {fix}")
    certutil.add(db.path, ca.name, ca.path)  # on our own entry, this restores its trust flags
    return Step(db.label, Outcome.INSTALLED, f"as {ca.name} (trust {NSS_TRUST})", entry)


def uninstall_nss(certutil: Certutil, db: NssDatabase, ca: CA) -> Step:
    """Remove this CA's own entry from one NSS database; entries made by hand stay."""
    entry = Entry("nss", str(db.path))
    if not db.exists():
        return Step(db.label, Outcome.ABSENT, "no NSS database there", entry)
    rows = dict(certutil.entries(db.path))
    if ca.name not in rows or not ca.matches(certutil.pem(db.path, ca.name)):
        return Step(db.label, Outcome.ABSENT, f"no {ca.name}", entry)
    certutil.delete(db.path, ca.name)
    return Step(db.label, Outcome.REMOVED, ca.name, entry)


def install_debian(store: DebianStore, ca: CA) -> Step:
    """Copy the CA into the local CA directory and run update-ca-certificates."""
    label, entry = SYSTEM_LABELS["debian"], Entry("debian", str(store.root))
    target = store.file(ca.name)
    if target.exists() and ca.matches(target.read_bytes()) and store.trusts(ca.name, ca.pem):
        return Step(label, Outcome.PRESENT, f"{target} is in {store.bundle}", entry)
    if not store.writable():
        by_hand = ca.by_hand("debian", uninstall=False)
        return Step(label, Outcome.SKIPPED, f"needs root; by hand: {by_hand}", entry)
    store.local_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    write_atomically(target, ca.pem, mode=0o644)
    try:
        store.update(fresh=False)
        if not store.trusts(ca.name, ca.pem):
            raise OSError(f"{store.program} ran, but {store.bundle} does not hold {target}")
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return Step(label, Outcome.INSTALLED, f"{target}, now in {store.bundle}", entry)


def uninstall_debian(store: DebianStore, ca: CA) -> Step:
    """Remove this CA's copy and rebuild the store with ``--fresh`` (which drops its links)."""
    label, entry = SYSTEM_LABELS["debian"], Entry("debian", str(store.root))
    target = store.file(ca.name)
    if not target.exists() or not ca.matches(target.read_bytes()):
        return Step(label, Outcome.ABSENT, f"no {target}", entry)
    if not store.writable():
        by_hand = ca.by_hand("debian", uninstall=True)
        return Step(label, Outcome.SKIPPED, f"needs root; by hand: {by_hand}", entry)
    target.unlink()
    store.update(fresh=True)
    if store.bundles(ca.pem):
        # update-ca-certificates rewrites the bundle only when some CA remains in it.
        raise OSError(f"{store.program} --fresh ran, but {store.bundle} still holds the CA")
    return Step(label, Outcome.REMOVED, f"{target}, and rebuilt {store.bundle}", entry)


# --- the command -----------------------------------------------------------------------------


def client_lines(ca: CA, system_bundle: Path | None) -> tuple[list[str], str]:
    """``NAME=value`` lines for Node.js and Python clients (own CA lists), and a note on them."""
    node = f"NODE_EXTRA_CA_CERTS={shlex.quote(str(ca.path))}"
    if system_bundle is not None:
        bundle = shlex.quote(str(system_bundle))
        note = (
            "Node.js adds NODE_EXTRA_CA_CERTS to its own CAs; requests (REQUESTS_CA_BUNDLE) and "
            "httpx (SSL_CERT_FILE) then use the system bundle, public CAs included"
        )
        return [node, f"REQUESTS_CA_BUNDLE={bundle}", f"SSL_CERT_FILE={bundle}"], note
    path = shlex.quote(str(ca.path))
    note = (
        "Node.js adds NODE_EXTRA_CA_CERTS to its own CAs; REQUESTS_CA_BUNDLE (requests) and "
        "SSL_CERT_FILE (Python's ssl, httpx) replace theirs, so set them for local work only"
    )
    return [node, f"REQUESTS_CA_BUNDLE={path}", f"SSL_CERT_FILE={path}"], note


@dataclass(frozen=True)
class Options:
    """The command line, validated: which CA, which stores, install or uninstall."""

    certs_dir: Path
    uninstall: bool
    nss_dbs: tuple[Path, ...]
    system: bool
    system_root: Path


def parse_options(argv: list[str], *, out: TextIO, err: TextIO) -> Options | int:
    """The options in ``argv``, or the exit status when argparse has answered (help, error)."""
    parser = ArgumentParser(
        prog=PROG,
        out=out,
        err=err,
        description=(
            "Install the development CA (made if missing) in the system store and in the NSS "
            "databases of Chromium and Firefox, and print the lines Node.js and Python clients "
            "need; with --uninstall, remove exactly what this command installed."
        ),
    )
    parser.add_argument(
        "--certs-dir",
        type=Path,
        default=DEFAULT_CERTS_DIR,
        metavar="DIR",
        help=f"where the development CA lives (default: {DEFAULT_CERTS_DIR})",
    )
    parser.add_argument("--uninstall", action="store_true", help="remove what trust installed")
    parser.add_argument(
        "--nss-db",
        action="append",
        default=[],
        metavar="DIR",
        help="an NSS database to use instead of discovering Chromium's (~/.pki/nssdb) and "
        "Firefox's profiles; made (empty password) if missing; repeatable",
    )
    parser.add_argument("--no-system", action="store_true", help="leave the system store alone")
    parser.add_argument(
        "--system-root",
        type=Path,
        default=Path("/"),
        metavar="DIR",
        help="use the Debian/Ubuntu store under DIR instead of / (for tests and image builds)",
    )
    try:
        args = parser.parse_args(argv)
    except UsageExit as stop:
        return stop.status
    return Options(
        certs_dir=args.certs_dir,
        uninstall=args.uninstall,
        nss_dbs=tuple(Path(db.removeprefix("sql:")).absolute() for db in args.nss_db),
        system=not args.no_system,
        system_root=args.system_root.absolute(),
    )


def run(
    argv: list[str],
    *,
    out: TextIO,
    err: TextIO,
    home: Path | None = None,
    now: datetime | None = None,
) -> int:
    """Run `tlsproxy trust` with ``argv`` (after the subcommand name); returns the exit code."""
    options = parse_options(argv, out=out, err=err)
    if isinstance(options, int):
        return options
    ca_path = options.certs_dir / CA_CERT_NAME
    try:
        if not options.uninstall:
            made = ensure_dev_certificates(options.certs_dir, (), now=now or datetime.now(UTC))
            out.write(f"{made.messages[0]}\n")  # the CA's line; the leaf is not this command's
        elif not ca_path.exists():
            out.write(f"no development CA at {ca_path}: nothing to remove\n")
            return 0
        ca = CA.load(ca_path)
    except (CertificateError, OSError, ValueError) as exc:
        err.write(f"{PROG}: error: {exc}\n")
        return 1
    out.write(f"CA {ca.path}: sha256 {ca.sha256.upper()}, stores name it {ca.name}\n")
    record_path = options.certs_dir / RECORD_NAME
    recorded = read_record(record_path, ca)
    steps = _system_steps(options, ca, recorded) if options.system else []
    steps += _nss_steps(options, ca, recorded, home=home or Path.home())
    for step in steps:
        out.write(f"{step.line()}\n")
    if options.uninstall:
        kept = recorded - {s.entry for s in steps if s.outcome in _GONE}
    else:
        kept = recorded | {s.entry for s in steps if s.outcome in _TRUSTED and s.entry}
    try:
        write_record(record_path, ca, {e for e in kept if e is not None})
    except OSError as exc:
        err.write(f"{PROG}: warning: cannot update {record_path}: {exc}\n")
    if options.uninstall:
        return _uninstall_summary(steps, recorded, out=out, err=err)
    return _install_summary(steps, ca, out=out, err=err)


_TRUSTED = (Outcome.INSTALLED, Outcome.PRESENT)
_GONE = (Outcome.REMOVED, Outcome.ABSENT)


def _guarded(label: str, entry: Entry | None, action: Callable[[], Step], by_hand: str) -> Step:
    """Run one step; a tool that fails or times out skips that step, with the way by hand."""
    try:
        return action()
    except (OSError, subprocess.SubprocessError) as exc:
        return Step(label, Outcome.SKIPPED, f"{exc}; by hand: {by_hand}", entry)


def _system_steps(options: Options, ca: CA, recorded: set[Entry]) -> list[Step]:
    root = options.system_root
    kind = "debian" if root != Path("/") else system_kind(sys.platform, find_program, root)
    label = SYSTEM_LABELS[kind]
    by_hand = ca.by_hand(kind, uninstall=options.uninstall)
    if kind != "debian":
        reason = "unknown system" if kind == "unknown" else "not automated here"
        return [Step(label, Outcome.SKIPPED, f"{reason}; by hand: {by_hand}")]
    roots = [root]
    if options.uninstall and root == Path("/"):
        roots += sorted({Path(e.location) for e in recorded if e.kind == "debian"} - {root})
    program = find_program("update-ca-certificates")
    steps = []
    for each in roots:
        entry = Entry("debian", str(each))
        if program is None:
            reason = "update-ca-certificates not found (Debian package ca-certificates)"
            fix = f"sudo apt-get install ca-certificates && {by_hand}"
            steps.append(Step(label, Outcome.SKIPPED, f"{reason}; by hand: {fix}", entry))
            continue
        action = uninstall_debian if options.uninstall else install_debian
        steps.append(
            _guarded(label, entry, partial(action, DebianStore(each, program), ca), by_hand)
        )
    return steps


def _nss_steps(options: Options, ca: CA, recorded: set[Entry], *, home: Path) -> list[Step]:
    missing: list[MissingDatabase] = []
    if options.nss_dbs:
        databases = [NssDatabase(db, f"NSS database {db}", create=True) for db in options.nss_dbs]
    else:
        databases, missing = discover_nss_databases(home)
        if options.uninstall:  # also the databases named with --nss-db when installing
            known = {db.path for db in databases}
            databases += [
                NssDatabase(Path(e.location), f"NSS database {e.location}")
                for e in sorted(recorded, key=lambda e: e.location)
                if e.kind == "nss" and Path(e.location) not in known
            ]
            missing = []  # only what is there matters when removing
    # Windows has a certutil of its own that is not NSS's.
    program = None if sys.platform == "win32" else find_program("certutil")
    action = uninstall_nss if options.uninstall else install_nss
    steps = []
    for db in databases:
        entry = Entry("nss", str(db.path))
        if options.uninstall:
            by_hand = delete_command(db.path, ca.name)
        else:
            by_hand = add_command(db.path, ca.name, ca.path)
        if program is None:
            reason = (
                "certutil not found (Debian/Ubuntu: sudo apt-get install libnss3-tools; "
                "Fedora: sudo dnf install nss-tools; macOS: brew install nss)"
            )
            steps.append(Step(db.label, Outcome.SKIPPED, f"{reason}; then: {by_hand}", entry))
            continue
        steps.append(_guarded(db.label, entry, partial(action, Certutil(program), db, ca), by_hand))
    return steps + [Step(m.label, Outcome.ABSENT, m.detail) for m in missing]


def _count(steps: list[Step], outcome: Outcome) -> int:
    return sum(1 for step in steps if step.outcome is outcome)


def _install_summary(steps: list[Step], ca: CA, *, out: TextIO, err: TextIO) -> int:
    bundle = next(
        (
            debian_bundle(Path(step.entry.location))
            for step in steps
            if step.entry and step.entry.kind == "debian" and step.outcome in _TRUSTED
        ),
        None,
    )
    lines, note = client_lines(ca, bundle)
    out.write("for Node.js and Python clients (put these in your shell profile or .env):\n")
    out.writelines(f"  {line}\n" for line in lines)
    out.write(f"  ({note})\n")
    skipped = [step.store for step in steps if step.outcome is Outcome.SKIPPED]
    out.write(
        f"summary: installed in {_count(steps, Outcome.INSTALLED)}, already trusted in "
        f"{_count(steps, Outcome.PRESENT)}, skipped {len(skipped)}"
        + (f" ({'; '.join(skipped)})" if skipped else "")
        + "\n"
    )
    if any(step.outcome in _TRUSTED for step in steps):
        return 0
    err.write(f"{PROG}: error: no store trusts the CA {ca.path}; do a step above by hand\n")
    return 1


def _uninstall_summary(steps: list[Step], recorded: set[Entry], *, out: TextIO, err: TextIO) -> int:
    out.write(
        f"summary: removed from {_count(steps, Outcome.REMOVED)}, not in "
        f"{_count(steps, Outcome.ABSENT)}, skipped {_count(steps, Outcome.SKIPPED)}\n"
        "unset NODE_EXTRA_CA_CERTS, REQUESTS_CA_BUNDLE and SSL_CERT_FILE if you set them for it\n"
    )
    visited = {s.entry for s in steps}
    for entry in sorted(recorded - visited, key=lambda e: (e.kind, e.location)):
        out.write(
            f"still installed (not asked to look there this time): {entry.kind} {entry.location}\n"
        )
    stuck = [s.store for s in steps if s.outcome is Outcome.SKIPPED and s.entry in recorded]
    if not stuck:
        return 0
    err.write(f"{PROG}: error: the CA is still installed in: {'; '.join(stuck)}\n")
    return 1

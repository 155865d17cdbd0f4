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

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from functools import partial
from pathlib import Path
from typing import TextIO

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tlsproxy.tls.certstore import CertificateError
from tlsproxy.tls.command import DEFAULT_CERTS_DIR, _Parser, _ParserExit
from tlsproxy.tls.devca import CA_CERT_NAME, ensure_dev_certificates

PROG = "tlsproxy trust"
RECORD_NAME = "trust-installed.json"
NSS_TRUST = "C,,"  # a CA trusted to identify websites (SSL field), nothing else
TOOL_TIMEOUT = 120.0
# Where the administrator's own CAs go on Debian/Ubuntu, relative to the system root.
DEBIAN_LOCAL_DIR = Path("usr/local/share/ca-certificates")
DEBIAN_ETC_DIR = Path("etc/ssl/certs")
DEBIAN_BUNDLE = "ca-certificates.crt"
# update-ca-certificates and update-ca-trust live in sbin, which a user's PATH may lack.
SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"


class Outcome(Enum):
    """What one step did to one store."""

    INSTALLED = "installed"
    PRESENT = "already trusted"
    REMOVED = "removed"
    ABSENT = "not there"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Entry:
    """A store this command installed the CA in: a ``kind`` ("nss" or "debian") and a path."""

    kind: str
    location: str


@dataclass(frozen=True)
class Step:
    """The result of one store's step: the line to print and the record change it implies."""

    store: str
    outcome: Outcome
    detail: str
    entry: Entry | None = None

    def line(self) -> str:
        """``store: outcome: detail``, the one line this step prints."""
        return f"{self.store}: {self.outcome.value}: {self.detail}"


@dataclass(frozen=True)
class CA:
    """The development CA as the stores see it: its file, fingerprints and entry name."""

    path: Path
    der: bytes

    @classmethod
    def load(cls, path: Path) -> CA:
        """The CA certificate in ``path`` (PEM), absolute so printed commands work anywhere."""
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        return cls(path.absolute(), cert.public_bytes(serialization.Encoding.DER))

    @property
    def sha256(self) -> str:
        """The SHA-256 fingerprint, lower-case hex: what every check compares."""
        return hashlib.sha256(self.der).hexdigest()

    @property
    def sha1(self) -> str:
        """The SHA-1 thumbprint, upper-case hex: how macOS and Windows tools name a certificate."""
        return hashlib.sha1(self.der, usedforsecurity=False).hexdigest().upper()

    @property
    def name(self) -> str:
        """The NSS nickname and file name stem, unique to this CA."""
        return f"tlsproxy-dev-ca-{self.sha256[:16]}"

    def matches(self, pem: bytes) -> bool:
        """Whether any certificate in ``pem`` is this CA (compared byte for byte)."""
        try:
            certs = x509.load_pem_x509_certificates(pem)
        except ValueError:
            return False
        return any(c.public_bytes(serialization.Encoding.DER) == self.der for c in certs)


# --- NSS databases (Chromium, Firefox) -------------------------------------------------------


@dataclass(frozen=True)
class NssDatabase:
    """An NSS sql: database, the label printed for it, and whether to create it when missing."""

    path: Path
    label: str
    create: bool = False


def discover_nss_databases(home: Path) -> tuple[list[NssDatabase], list[Step]]:
    """The NSS databases of Chromium and Firefox under ``home``, and a step for each missing."""
    found: list[NssDatabase] = []
    missing: list[Step] = []
    chromium = home / ".pki" / "nssdb"
    if (chromium / "cert9.db").exists():
        found.append(NssDatabase(chromium, f"Chromium/Chrome NSS database {chromium}"))
    else:
        missing.append(
            Step(
                f"Chromium/Chrome NSS database {chromium}",
                Outcome.ABSENT,
                "the browser makes it on first start; to make it and trust the CA now: "
                f"python -m tlsproxy trust --nss-db {chromium}",
            )
        )
    snap = home / "snap" / "chromium" / "current" / ".pki" / "nssdb"
    if (snap / "cert9.db").exists():
        found.append(NssDatabase(snap, f"Chromium (snap) NSS database {snap}"))
    profile_roots = [
        home / ".mozilla" / "firefox",
        home / "snap" / "firefox" / "common" / ".mozilla" / "firefox",
        home / ".var" / "app" / "org.mozilla.firefox" / ".mozilla" / "firefox",
        home / "Library" / "Application Support" / "Firefox" / "Profiles",
    ]
    profiles = sorted(db.parent for root in profile_roots for db in root.glob("*/cert9.db"))
    found.extend(NssDatabase(p, f"Firefox profile {p.name} ({p})") for p in profiles)
    if not profiles:
        missing.append(
            Step(f"Firefox profiles {profile_roots[0]}", Outcome.ABSENT, "none with a cert9.db")
        )
    return found, missing


def parse_certutil_list(text: str) -> list[tuple[str, str]]:
    """(nickname, trust flags) for each row of ``certutil -L``; the header rows are skipped."""
    rows = []
    for line in text.splitlines():
        match = re.fullmatch(r"(\S.*?)\s+([a-zA-Z]*,[a-zA-Z]*,[a-zA-Z]*)\s*", line)
        if match:
            rows.append((match.group(1), match.group(2)))
    return rows


class Certutil:
    """NSS's ``certutil`` (libnss3-tools) run on one sql: database at a time."""

    def __init__(self, program: str) -> None:
        self.program = program

    def run(self, db: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
        """``certutil -d sql:DB ARGS``; never raises for a non-zero exit."""
        return subprocess.run(
            [self.program, "-d", f"sql:{db}", *args],
            capture_output=True,
            timeout=TOOL_TIMEOUT,
            check=False,
        )

    def entries(self, db: Path) -> list[tuple[str, str]]:
        """Every (nickname, trust) in the database."""
        return parse_certutil_list(self._checked(db, "-L").decode("utf-8", "replace"))

    def pem(self, db: Path, nickname: str) -> bytes:
        """The certificates under ``nickname`` as PEM (empty when there are none)."""
        done = self.run(db, "-L", "-n", nickname, "-a")
        return done.stdout if done.returncode == 0 else b""

    def _checked(self, db: Path, *args: str) -> bytes:
        done = self.run(db, *args)
        if done.returncode != 0:
            message = (done.stderr or done.stdout).decode("utf-8", "replace").strip()
            raise OSError(f"certutil {' '.join(args)} failed: {' '.join(message.split())}")
        return done.stdout

    def create(self, db: Path) -> None:
        """Make an empty database (no password), as the browsers do on first start."""
        db.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._checked(db, "-N", "--empty-password")

    def add(self, db: Path, nickname: str, ca_path: Path) -> None:
        """Add the CA trusted for websites."""
        self._checked(db, "-A", "-t", NSS_TRUST, "-n", nickname, "-i", str(ca_path))

    def delete(self, db: Path, nickname: str) -> None:
        """Delete the certificate under ``nickname``."""
        self._checked(db, "-D", "-n", nickname)


def nss_command(db: Path, ca: CA, *, uninstall: bool) -> str:
    """The certutil command that does the step by hand."""
    if uninstall:
        return f"certutil -d {shlex.quote(f'sql:{db}')} -D -n {ca.name}"
    return (
        f"certutil -d {shlex.quote(f'sql:{db}')} -A -t {NSS_TRUST} -n {ca.name} "
        f"-i {shlex.quote(str(ca.path))}"
    )


def install_nss(certutil: Certutil, db: NssDatabase, ca: CA) -> Step:
    """Trust the CA in one NSS database, unless it is trusted there already."""
    entry = Entry("nss", str(db.path))
    if not (db.path / "cert9.db").exists():
        if not db.create:
            return Step(db.label, Outcome.SKIPPED, "no cert9.db there")
        certutil.create(db.path)
    rows = dict(certutil.entries(db.path))
    if ca.name in rows:
        if _trusted(rows[ca.name]) and ca.matches(certutil.pem(db.path, ca.name)):
            return Step(db.label, Outcome.PRESENT, f"as {ca.name}", entry)
    else:
        # Added by hand under another nickname: NSS would keep that nickname and take our
        # trust flags, so report it and leave it alone.
        for nickname, flags in rows.items():
            if not ca.matches(certutil.pem(db.path, nickname)):
                continue
            detail = f"the CA is there as {nickname!r} (trust {flags}), added by hand; "
            if _trusted(flags):
                return Step(db.label, Outcome.PRESENT, f"{detail}left alone")
            fix = f"certutil -d {shlex.quote(f'sql:{db.path}')} -M -n {shlex.quote(nickname)}"
            return Step(db.label, Outcome.SKIPPED, f"{detail}to trust it: {fix} -t {NSS_TRUST}")
    certutil.add(db.path, ca.name, ca.path)  # on our own entry, this restores its trust flags
    if not _trusted(dict(certutil.entries(db.path)).get(ca.name, ",,")):
        raise OSError(f"certutil -A ran, but {ca.name} is not trusted in {db.path} afterwards")
    return Step(db.label, Outcome.INSTALLED, f"as {ca.name} (trust {NSS_TRUST})", entry)


def _trusted(flags: str) -> bool:
    """Whether NSS trust flags (``SSL,S/MIME,code``) make a CA trusted for websites."""
    return "C" in flags.split(",", maxsplit=1)[0]


def uninstall_nss(certutil: Certutil, db: NssDatabase, ca: CA) -> Step:
    """Remove this CA's own entry from one NSS database; entries made by hand stay."""
    entry = Entry("nss", str(db.path))
    if not (db.path / "cert9.db").exists():
        return Step(db.label, Outcome.ABSENT, "no NSS database there", entry)
    rows = dict(certutil.entries(db.path))
    if ca.name not in rows or not ca.matches(certutil.pem(db.path, ca.name)):
        return Step(db.label, Outcome.ABSENT, f"no {ca.name}", entry)
    certutil.delete(db.path, ca.name)
    if ca.name in dict(certutil.entries(db.path)):
        raise OSError(f"certutil -D ran, but {ca.name} is still in {db.path}")
    return Step(db.label, Outcome.REMOVED, ca.name, entry)


# --- the system store ------------------------------------------------------------------------


def system_kind(platform: str, which: Callable[[str], str | None], root: Path) -> str:
    """Which system store the machine at ``root`` has: debian, fedora, macos, windows, unknown."""
    if platform == "darwin":
        return "macos"
    if platform == "win32":
        return "windows"
    if which("update-ca-certificates") or (root / "etc/debian_version").exists():
        return "debian"
    if which("update-ca-trust") or (root / "etc/pki/ca-trust").is_dir():
        return "fedora"
    return "unknown"


SYSTEM_LABELS = {
    "debian": "system store (Debian/Ubuntu)",
    "fedora": "system store (Fedora/RHEL)",
    "macos": "system store (macOS keychain)",
    "windows": "system store (Windows)",
    "unknown": "system store",
}


def system_commands(kind: str, ca: CA, *, uninstall: bool) -> str:
    """The exact commands that install (or remove) the CA in ``kind``'s system store by hand."""
    path = shlex.quote(str(ca.path))
    if kind == "debian":
        crt = f"/{DEBIAN_LOCAL_DIR}/{ca.name}.crt"
        if uninstall:
            return f"sudo rm -f {crt} && sudo update-ca-certificates --fresh"
        return f"sudo install -D -m 644 {path} {crt} && sudo update-ca-certificates"
    if kind == "fedora":
        anchor = f"/etc/pki/ca-trust/source/anchors/{ca.name}.pem"
        if uninstall:
            return f"sudo rm -f {anchor} && sudo update-ca-trust extract"
        return f"sudo install -D -m 644 {path} {anchor} && sudo update-ca-trust extract"
    if kind == "macos":
        keychain = "/Library/Keychains/System.keychain"
        if uninstall:
            return (
                f"sudo security remove-trusted-cert -d {path} && "
                f"sudo security delete-certificate -Z {ca.sha1} {keychain}"
            )
        return f"sudo security add-trusted-cert -d -r trustRoot -k {keychain} {path}"
    if kind == "windows":
        if uninstall:
            return f"certutil -delstore ROOT {ca.sha1}  (in an administrator prompt)"
        return f'certutil -addstore -f ROOT "{ca.path}"  (in an administrator prompt)'
    return "; ".join(
        f"{label}: {system_commands(other, ca, uninstall=uninstall)}"
        for other, label in (("debian", "Debian/Ubuntu"), ("fedora", "Fedora/RHEL/Arch"))
    )


def debian_bundle(root: Path) -> Path:
    """The bundle update-ca-certificates builds under ``root`` (OpenSSL's default CA file)."""
    return root / DEBIAN_ETC_DIR / DEBIAN_BUNDLE


class DebianStore:
    """The Debian/Ubuntu store under ``root``: a .crt in the local dir, then the update tool."""

    def __init__(self, root: Path, program: str) -> None:
        self.root = root
        self.program = program
        self.local_dir = root / DEBIAN_LOCAL_DIR
        self.etc_dir = root / DEBIAN_ETC_DIR
        self.bundle = debian_bundle(root)

    def file(self, ca: CA) -> Path:
        """Where the CA's copy goes."""
        return self.local_dir / f"{ca.name}.crt"

    def trusts(self, ca: CA) -> bool:
        """Whether the update tool has taken the CA in: its link, and its PEM in the bundle."""
        link = self.etc_dir / f"{ca.name}.pem"
        if not link.is_symlink() or link.resolve() != self.file(ca).resolve():
            return False
        try:
            # update-ca-certificates appends each .crt verbatim; a byte search suffices and,
            # unlike parsing, does not trip over an odd certificate elsewhere in the bundle.
            return ca_pem(ca) in self.bundle.read_bytes()
        except FileNotFoundError:
            return False

    def writable(self) -> bool:
        """Whether this process may change the store (on a real system: whether it is root)."""
        local = self.local_dir
        while not local.exists() and local != local.parent:
            local = local.parent  # the directory it would be made in
        return os.access(local, os.W_OK) and os.access(self.etc_dir, os.W_OK)

    def update(self, *, fresh: bool) -> None:
        """Run update-ca-certificates; under another root, with every path pointed there."""
        argv = [self.program, *(["--fresh"] if fresh else [])]
        if self.root != Path("/"):
            # Spelled out rather than --sysroot, which only ca-certificates 20250419+ knows
            # (older ones print their usage and exit 0 without doing anything).
            argv += [
                *("--certsconf", str(self.root / "etc/ca-certificates.conf")),
                *("--certsdir", str(self.root / "usr/share/ca-certificates")),
                *("--localcertsdir", str(self.local_dir)),
                *("--etccertsdir", str(self.etc_dir)),
                *("--hooksdir", str(self.root / "etc/ca-certificates/update.d")),
            ]
        done = subprocess.run(argv, capture_output=True, timeout=TOOL_TIMEOUT, check=False)
        if done.returncode != 0:
            message = (done.stderr or done.stdout).decode("utf-8", "replace").strip()
            raise OSError(f"{' '.join(argv)} failed: {' '.join(message.split())}")


def install_debian(store: DebianStore, ca: CA) -> Step:
    """Copy the CA into the local CA directory and run update-ca-certificates."""
    label, entry, target = SYSTEM_LABELS["debian"], Entry("debian", str(store.root)), store.file(ca)
    if target.exists() and ca.matches(target.read_bytes()) and store.trusts(ca):
        return Step(label, Outcome.PRESENT, f"{target} is in {store.bundle}", entry)
    if not store.writable():
        by_hand = system_commands("debian", ca, uninstall=False)
        return Step(label, Outcome.SKIPPED, f"needs root; by hand: {by_hand}", entry)
    store.local_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    write_atomically(target, ca_pem(ca), mode=0o644)
    try:
        store.update(fresh=False)
        if not store.trusts(ca):
            raise OSError(f"{store.program} ran, but {store.bundle} does not hold {target}")
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return Step(label, Outcome.INSTALLED, f"{target}, now in {store.bundle}", entry)


def uninstall_debian(store: DebianStore, ca: CA) -> Step:
    """Remove this CA's copy and rebuild the store with ``--fresh`` (which drops its links)."""
    label, entry, target = SYSTEM_LABELS["debian"], Entry("debian", str(store.root)), store.file(ca)
    if not target.exists() or not ca.matches(target.read_bytes()):
        return Step(label, Outcome.ABSENT, f"no {target}", entry)
    if not store.writable():
        by_hand = system_commands("debian", ca, uninstall=True)
        return Step(label, Outcome.SKIPPED, f"needs root; by hand: {by_hand}", entry)
    target.unlink()
    store.update(fresh=True)
    if store.bundle.exists() and ca_pem(ca) in store.bundle.read_bytes():
        # update-ca-certificates rewrites the bundle only when some CA remains in it.
        raise OSError(f"{store.program} --fresh ran, but {store.bundle} still holds the CA")
    return Step(label, Outcome.REMOVED, f"{target}, and rebuilt {store.bundle}", entry)


# --- the record of what was installed ---------------------------------------------------------


def read_record(path: Path, ca: CA) -> set[Entry]:
    """The stores a previous run installed this CA in (nothing for a missing or foreign record)."""
    try:
        data = json.loads(path.read_text())
        if data.get("ca_sha256") != ca.sha256:
            return set()
        return {Entry(str(item["store"]), str(item["location"])) for item in data["installed"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def write_record(path: Path, ca: CA, entries: Iterable[Entry]) -> None:
    """Keep ``entries`` in the record; with none left, remove the record."""
    ordered = sorted(entries, key=lambda e: (e.kind, e.location))
    if not ordered:
        path.unlink(missing_ok=True)
        return
    data = {
        "ca_sha256": ca.sha256,
        "installed": [{"store": e.kind, "location": e.location} for e in ordered],
    }
    write_atomically(path, (json.dumps(data, indent=2) + "\n").encode(), mode=0o644)


def write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def ca_pem(ca: CA) -> bytes:
    """The CA as PEM, the form every store here reads."""
    return x509.load_der_x509_certificate(ca.der).public_bytes(serialization.Encoding.PEM)


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
    parser = _Parser(
        out=out,
        err=err,
        description=(
            "Install the development CA (made if missing) in the system store and in the NSS "
            "databases of Chromium and Firefox, and print the lines Node.js and Python clients "
            "need; with --uninstall, remove exactly what this command installed."
        ),
    )
    parser.prog = PROG
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
    except _ParserExit as stop:
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
    kind = "debian" if root != Path("/") else system_kind(sys.platform, _which, root)
    label = SYSTEM_LABELS[kind]
    by_hand = system_commands(kind, ca, uninstall=options.uninstall)
    if kind != "debian":
        reason = "unknown system" if kind == "unknown" else "not automated here"
        return [Step(label, Outcome.SKIPPED, f"{reason}; by hand: {by_hand}")]
    roots = [root]
    if options.uninstall and root == Path("/"):
        roots += sorted({Path(e.location) for e in recorded if e.kind == "debian"} - {root})
    program = _which("update-ca-certificates")
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
    missing: list[Step] = []
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
    program = None if sys.platform == "win32" else _which("certutil")
    action = uninstall_nss if options.uninstall else install_nss
    steps = []
    for db in databases:
        entry = Entry("nss", str(db.path))
        by_hand = nss_command(db.path, ca, uninstall=options.uninstall)
        if program is None:
            reason = (
                "certutil not found (Debian/Ubuntu: sudo apt-get install libnss3-tools; "
                "Fedora: sudo dnf install nss-tools; macOS: brew install nss)"
            )
            steps.append(Step(db.label, Outcome.SKIPPED, f"{reason}; then: {by_hand}", entry))
            continue
        steps.append(_guarded(db.label, entry, partial(action, Certutil(program), db, ca), by_hand))
    return steps + missing


def _which(program: str) -> str | None:
    path = os.environ.get("PATH", os.defpath)
    return shutil.which(program, path=f"{path}{os.pathsep}{SBIN_PATH}")


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

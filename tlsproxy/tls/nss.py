"""NSS databases (Chromium, Firefox) and NSS's ``certutil``, which reads and changes them.

Rules:

1. Only ``certutil`` touches a database: its sql: format is NSS's own business.
2. ``certutil`` never waits on a terminal (its stdin is empty) and never runs past its timeout;
   either way it fails with one line (an ``OSError``) saying what it said.
3. A change is checked by listing the database again afterwards.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

NSS_TRUST = "C,,"  # a CA trusted to identify websites (SSL field), nothing else
CERTUTIL_TIMEOUT = 120.0

# A row of `certutil -L`: the nickname (spaces allowed), then "SSL,S/MIME,JAR/XPI" trust flags.
_LISTING_ROW = re.compile(r"(\S.*?)\s+([a-zA-Z]*,[a-zA-Z]*,[a-zA-Z]*)\s*")


@dataclass(frozen=True)
class NssDatabase:
    """An NSS sql: database, the label printed for it, and whether to create it when missing."""

    path: Path
    label: str
    create: bool = False

    def exists(self) -> bool:
        """Whether the database is there (NSS keeps it in cert9.db)."""
        return (self.path / "cert9.db").exists()


@dataclass(frozen=True)
class MissingDatabase:
    """A place a browser keeps its NSS database, empty here, and what to make of that."""

    label: str
    detail: str


def discover_nss_databases(home: Path) -> tuple[list[NssDatabase], list[MissingDatabase]]:
    """The NSS databases of Chromium and Firefox under ``home``, and the usual ones missing."""
    found: list[NssDatabase] = []
    missing: list[MissingDatabase] = []
    chromium = home / ".pki" / "nssdb"
    if (chromium / "cert9.db").exists():
        found.append(NssDatabase(chromium, f"Chromium/Chrome NSS database {chromium}"))
    else:
        missing.append(
            MissingDatabase(
                f"Chromium/Chrome NSS database {chromium}",
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
            MissingDatabase(f"Firefox profiles {profile_roots[0]}", "none with a cert9.db")
        )
    return found, missing


def parse_certutil_list(text: str) -> list[tuple[str, str]]:
    """(nickname, trust flags) for each row of ``certutil -L``; the header rows are skipped."""
    rows = []
    for line in text.splitlines():
        match = _LISTING_ROW.fullmatch(line)
        if match:
            rows.append((match.group(1), match.group(2)))
    return rows


def trusts_websites(flags: str) -> bool:
    """Whether NSS trust flags (``SSL,S/MIME,code``) make a CA trusted for websites."""
    return "C" in flags.split(",", maxsplit=1)[0]


class Certutil:
    """NSS's ``certutil`` (libnss3-tools) run on one sql: database at a time."""

    def __init__(self, program: str, *, timeout: float = CERTUTIL_TIMEOUT) -> None:
        self.program = program
        self.timeout = timeout

    def run(self, db: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
        """``certutil -d sql:DB ARGS``; raises OSError only when it does not answer in time."""
        try:
            return subprocess.run(
                [self.program, "-d", f"sql:{db}", *args],
                capture_output=True,
                timeout=self.timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise OSError(f"certutil did not answer within {self.timeout:g} s") from None

    def entries(self, db: Path) -> list[tuple[str, str]]:
        """Every (nickname, trust) in the database."""
        return parse_certutil_list(self._checked(db, "-L").decode("utf-8", "replace"))

    def pem(self, db: Path, nickname: str) -> bytes:
        """The certificates under ``nickname`` as PEM (empty when certutil cannot export them)."""
        done = self.run(db, "-L", "-n", nickname, "-a")
        return done.stdout if done.returncode == 0 else b""

    def create(self, db: Path) -> None:
        """Make an empty database (no password), as the browsers do on first start."""
        db.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._checked(db, "-N", "--empty-password")

    def add(self, db: Path, nickname: str, ca_path: Path) -> None:
        """Add the CA trusted for websites (on an entry of that nickname: trust it again)."""
        self._checked(db, "-A", "-t", NSS_TRUST, "-n", nickname, "-i", str(ca_path))
        if not trusts_websites(dict(self.entries(db)).get(nickname, ",,")):
            raise OSError(f"certutil -A ran, but {nickname} is not trusted in {db} afterwards")

    def delete(self, db: Path, nickname: str) -> None:
        """Delete the certificate under ``nickname``."""
        self._checked(db, "-D", "-n", nickname)
        if nickname in dict(self.entries(db)):
            raise OSError(f"certutil -D ran, but {nickname} is still in {db}")

    def _checked(self, db: Path, *args: str) -> bytes:
        done = self.run(db, *args)
        if done.returncode != 0:
            message = (done.stderr or done.stdout).decode("utf-8", "replace").strip()
            detail = message.replace("\n", " ") or f"exit status {done.returncode}"
            raise OSError(f"certutil failed: {detail}")
        return done.stdout


def add_command(db: Path, nickname: str, ca_path: Path) -> str:
    """The certutil command that adds the CA, trusted for websites, by hand."""
    return (
        f"certutil -d {shlex.quote(f'sql:{db}')} -A -t {NSS_TRUST} -n {shlex.quote(nickname)} "
        f"-i {shlex.quote(str(ca_path))}"
    )


def trust_command(db: Path, nickname: str) -> str:
    """The certutil command that trusts the entry ``nickname`` for websites, by hand."""
    return f"certutil -d {shlex.quote(f'sql:{db}')} -M -n {shlex.quote(nickname)} -t {NSS_TRUST}"


def delete_command(db: Path, nickname: str) -> str:
    """The certutil command that deletes the entry ``nickname``, by hand."""
    return f"certutil -d {shlex.quote(f'sql:{db}')} -D -n {shlex.quote(nickname)}"

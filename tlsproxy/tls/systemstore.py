"""The system trust store: which one this machine has, the Debian/Ubuntu one, the commands for all.

Rules:

1. Only the Debian/Ubuntu store is changed here (a ``.crt`` in the local CA directory, then
   ``update-ca-certificates``); for the others, the exact commands are printed instead.
2. A store under another root than ``/`` is changed with every path pointed there, so tests and
   image builds never touch this machine's store.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

UPDATE_TIMEOUT = 120.0
# Where the administrator's own CAs go on Debian/Ubuntu, relative to the system root.
DEBIAN_LOCAL_DIR = Path("usr/local/share/ca-certificates")
DEBIAN_ETC_DIR = Path("etc/ssl/certs")
DEBIAN_BUNDLE = "ca-certificates.crt"
# update-ca-certificates and update-ca-trust live in sbin, which a user's PATH may lack.
SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"

SYSTEM_LABELS = {
    "debian": "system store (Debian/Ubuntu)",
    "fedora": "system store (Fedora/RHEL)",
    "macos": "system store (macOS keychain)",
    "windows": "system store (Windows)",
    "unknown": "system store",
}


def find_program(program: str) -> str | None:
    """Where ``program`` is on $PATH, or in sbin (where the store tools live), or None."""
    path = os.environ.get("PATH", os.defpath)
    return shutil.which(program, path=f"{path}{os.pathsep}{SBIN_PATH}")


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


def system_commands(kind: str, *, ca_path: Path, name: str, sha1: str, uninstall: bool) -> str:
    """The exact commands that install (or remove) a CA in ``kind``'s system store by hand.

    ``name`` is the CA's file name stem in the store; ``sha1`` its thumbprint (upper-case hex),
    by which macOS and Windows name a certificate.
    """
    path = shlex.quote(str(ca_path))
    if kind == "debian":
        crt = f"/{DEBIAN_LOCAL_DIR}/{name}.crt"
        if uninstall:
            return f"sudo rm -f {crt} && sudo update-ca-certificates --fresh"
        return f"sudo install -D -m 644 {path} {crt} && sudo update-ca-certificates"
    if kind == "fedora":
        anchor = f"/etc/pki/ca-trust/source/anchors/{name}.pem"
        if uninstall:
            return f"sudo rm -f {anchor} && sudo update-ca-trust extract"
        return f"sudo install -D -m 644 {path} {anchor} && sudo update-ca-trust extract"
    if kind == "macos":
        keychain = "/Library/Keychains/System.keychain"
        if uninstall:
            return (
                f"sudo security remove-trusted-cert -d {path} && "
                f"sudo security delete-certificate -Z {sha1} {keychain}"
            )
        return f"sudo security add-trusted-cert -d -r trustRoot -k {keychain} {path}"
    if kind == "windows":
        if uninstall:
            return f"certutil -delstore ROOT {sha1}  (in an administrator prompt)"
        return f'certutil -addstore -f ROOT "{ca_path}"  (in an administrator prompt)'
    return "; ".join(
        f"{label}: "
        + system_commands(other, ca_path=ca_path, name=name, sha1=sha1, uninstall=uninstall)
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

    def file(self, name: str) -> Path:
        """Where the copy of the CA named ``name`` goes."""
        return self.local_dir / f"{name}.crt"

    def trusts(self, name: str, pem: bytes) -> bool:
        """Whether the update tool has taken the CA in: its link, and its PEM in the bundle."""
        link = self.etc_dir / f"{name}.pem"
        if not link.is_symlink() or link.resolve() != self.file(name).resolve():
            return False
        return self.bundles(pem)

    def bundles(self, pem: bytes) -> bool:
        """Whether the bundle holds the certificate ``pem``."""
        try:
            # update-ca-certificates appends each .crt verbatim; a byte search suffices and,
            # unlike parsing, does not trip over an odd certificate elsewhere in the bundle.
            return pem in self.bundle.read_bytes()
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
        done = subprocess.run(argv, capture_output=True, timeout=UPDATE_TIMEOUT, check=False)
        if done.returncode != 0:
            message = (done.stderr or done.stdout).decode("utf-8", "replace").strip()
            raise OSError(f"{' '.join(argv)} failed: {' '.join(message.split())}")

"""Where the served certificates come from: loaded at startup and again, the same way, on reload.

Startup (:func:`tlsproxy.config.build_config`) and SIGHUP (:mod:`tlsproxy.lifecycle`) both call
:meth:`CertificateSource.load`, so a file that would stop startup is refused by a reload with
the same message, and the old set keeps serving.

The certificates, in order of precedence:

1. ``--cert``/``--key`` pairs, in the order given (the first is the default);
2. without ``--cert``: the pairs found in ``--certs-dir`` (:mod:`tlsproxy.tls.certdir`); with
   more than one, ``--sni-default`` must say which is the default, so that a pair added later
   never changes it (with one at startup, that one stays the default: :meth:`keeping_default`).
   Files there that serve nothing, and no pair, are an error, not a reason to make the
   development certificate beside them;
3. when it holds none: the development certificate, made and renewed there
   (:mod:`tlsproxy.tls.devca`). With ``writes_dev_files`` off (a ``--workers`` worker, whose
   supervisor alone writes them, so that N processes never race to), the files are loaded as
   they are.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from tlsproxy.tls.certdir import pem_files, scan
from tlsproxy.tls.certset import CertificateSet, certificate_set
from tlsproxy.tls.certstore import LoadedCertificate, load_certificate
from tlsproxy.tls.devca import (
    CA_CERT_NAME,
    CA_KEY_NAME,
    LEAF_CERT_NAME,
    LEAF_KEY_NAME,
    DevCertificates,
    ensure_dev_certificates,
)
from tlsproxy.tls.pemfile import CertificateError

__all__ = ["CertificatePair", "CertificateSource"]

#: The development CA's own files in ``--certs-dir``: never scanned as a pair to serve.
DEV_FILES = frozenset({CA_CERT_NAME, CA_KEY_NAME, LEAF_CERT_NAME, LEAF_KEY_NAME})


@dataclass(frozen=True)
class CertificatePair:
    cert: Path  # --cert
    key: Path | None  # --key; None: in the --cert file


@dataclass(frozen=True)
class CertificateSource:
    pairs: tuple[CertificatePair, ...]  # --cert/--key; empty: --certs-dir
    passphrase_file: Path | None  # --key-passphrase-file, read on every load
    certs_dir: Path
    hostnames: tuple[str, ...] = ()  # --hostname, for the development certificate
    default_name: str | None = None  # --sni-default
    strict_sni: bool = False  # --strict-sni
    writes_dev_files: bool = True  # False: load the development files, never make or renew them

    def files(self) -> tuple[Path, ...]:
        """What a reload reads, for ``--watch-certs``: read again at each check.

        For ``--certs-dir``, the folders too: a pair added or removed changes their mtime.
        """
        if self.pairs:
            named = [self.passphrase_file]
            for pair in self.pairs:
                named += [pair.cert, pair.key]
            return tuple(path for path in named if path is not None)
        scanned = pem_files(self.certs_dir, skip=DEV_FILES)
        folders = sorted({self.certs_dir, *(path.parent for path in scanned)})
        dev = [self.certs_dir / LEAF_CERT_NAME, self.certs_dir / LEAF_KEY_NAME]
        passphrase = [self.passphrase_file] if self.passphrase_file is not None else []
        return (*folders, *scanned, *dev, *passphrase)

    def keeping_default(
        self, served: CertificateSet, dev: DevCertificates | None
    ) -> CertificateSource:
        """This source, its default pinned to what serves now when ``--certs-dir`` chose it.

        One pair found and no ``--sni-default``: that pair stays the default when a reload
        finds more, instead of every reload failing until someone adds ``--sni-default``.
        """
        if self.pairs or dev is not None or self.default_name is not None:
            return self
        if len(served.certificates) != 1:
            return self
        names = served.default.sni_names
        return replace(self, default_name=names[0]) if names else self

    def load(self, *, now: datetime) -> tuple[CertificateSet, DevCertificates | None]:
        """Read and check every file now; raise :class:`CertificateError` naming file and fix."""
        passphrase = self._passphrase()
        dev = None
        warnings: list[str] = []
        if self.pairs:
            loaded = [
                load_certificate(pair.cert, pair.key, passphrase=passphrase, now=now)
                for pair in self.pairs
            ]
        else:
            loaded, warnings = self._scan(passphrase, now)
            if not loaded and warnings:
                # Files were there to serve and none could: making a development CA beside them
                # would hide the mistake behind a certificate no client trusts.
                raise CertificateError(
                    f"--certs-dir {self.certs_dir} holds no certificate/key pair tlsproxy can "
                    f"serve ({warnings[0]}); fix or remove the files, or use --cert"
                )
            if len(loaded) > 1 and self.default_name is None:
                names = ", ".join(c.sni_names[0] for c in loaded if c.sni_names)
                raise CertificateError(
                    f"--certs-dir {self.certs_dir} holds {len(loaded)} certificates ({names}); "
                    "say which one serves clients that send no name or an unknown one: "
                    "--sni-default NAME"
                )
            if not loaded:
                dev = (
                    ensure_dev_certificates(self.certs_dir, self.hostnames, now=now)
                    if self.writes_dev_files
                    else _existing_dev_certificates(self.certs_dir)
                )
                loaded = [load_certificate(dev.cert_path, dev.key_path, now=now)]
        try:
            served = certificate_set(
                loaded, default_name=self.default_name, strict=self.strict_sni, warnings=warnings
            )
        except ValueError as e:
            raise CertificateError(str(e)) from None
        return served, dev

    def _scan(
        self, passphrase: bytes | None, now: datetime
    ) -> tuple[list[LoadedCertificate], list[str]]:
        pairs, warnings = scan(self.certs_dir, skip=DEV_FILES, passphrase=passphrase)
        loaded = [
            load_certificate(pair.cert, pair.key, passphrase=passphrase, now=now) for pair in pairs
        ]
        return loaded, warnings

    def _passphrase(self) -> bytes | None:
        if self.passphrase_file is None:
            return None
        try:
            return self.passphrase_file.read_bytes().rstrip(b"\r\n")
        except OSError as e:
            raise CertificateError(
                f"--key-passphrase-file {self.passphrase_file}: cannot read it ({e.strerror})"
            ) from None


def _existing_dev_certificates(certs_dir: Path) -> DevCertificates:
    """The development files as they are (``writes_dev_files`` off); an error if one is missing."""
    dev = DevCertificates(
        ca_cert_path=certs_dir / CA_CERT_NAME,
        cert_path=certs_dir / LEAF_CERT_NAME,
        key_path=certs_dir / LEAF_KEY_NAME,
        messages=(),
    )
    for path in (dev.cert_path, dev.key_path):
        if not path.exists():
            raise CertificateError(
                f"the development certificate file {path} is missing; with --workers, the "
                "supervisor makes it: send it SIGHUP"
            )
    return dev

"""`python -m tlsproxy trust`: real stores, then real clients verifying a real tlsproxy.

The NSS database is made by NSS's ``certutil`` and checked with NSS's own TLS client
(``tstclnt``), which verifies the proxy's certificate against that database exactly as Chromium
and Firefox do. The Debian store is a temporary root run through the real
``update-ca-certificates``; this machine's own store is never touched.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.certfactory import cert_pem, make_ca

from .proxyprocess import ProxyFactory, ProxyProcess

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Ran:
    """One run of the command: exit status and what it printed."""

    code: int
    out: str
    err: str


def trust(*args: str, home: Path, runner: tuple[str, ...] = ()) -> Ran:
    """Run ``python -m tlsproxy trust ARGS`` as a user would, with ``home`` as $HOME."""
    env = dict(os.environ, HOME=str(home), PYTHONPATH=str(REPO))
    done = subprocess.run(
        [*runner, sys.executable, "-m", "tlsproxy", "trust", *args],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return Ran(done.returncode, done.stdout, done.stderr)


def need(*programs: str) -> None:
    """Skip unless every program is installed (they are the real peers of these tests)."""
    path = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    missing = [p for p in programs if shutil.which(p, path=path) is None]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed "
            "(apt-get install libnss3-tools ca-certificates curl; .ci/run does it)"
        )


def nss_handshake(proxy: ProxyProcess, db: Path) -> subprocess.CompletedProcess[str]:
    """A TLS handshake by NSS's tstclnt to the proxy, verified against the NSS database ``db``."""
    return subprocess.run(
        ["tstclnt", "-4", "-Q", "-h", "localhost", "-p", str(proxy.port), "-d", f"sql:{db}"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def nicknames(db: Path) -> str:
    """The ``certutil -L`` listing of ``db``."""
    return subprocess.run(
        ["certutil", "-L", "-d", f"sql:{db}"], capture_output=True, text=True, check=True
    ).stdout


def printed(out: str, name: str) -> str:
    """The value of the ``NAME=value`` line the command printed for clients."""
    match = re.search(rf"^  {name}=(\S+)$", out, re.MULTILINE)
    assert match, f"no {name}= line in:\n{out}"
    return match.group(1)


def test_nss_database_trusts_the_proxy_until_uninstalled(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    """After `trust --nss-db`, NSS verifies tlsproxy's certificate; after --uninstall, it fails."""
    need("certutil", "tstclnt")
    certs, db, home = tmp_path / "certs", tmp_path / "browser" / ".pki" / "nssdb", tmp_path
    proxy = proxy_factory("--certs-dir", str(certs))
    untrusted = tmp_path / "untrusted"
    untrusted.mkdir()
    subprocess.run(["certutil", "-N", "-d", f"sql:{untrusted}", "--empty-password"], check=True)
    refused = nss_handshake(proxy, untrusted)
    assert refused.returncode != 0
    assert "SEC_ERROR_UNKNOWN_ISSUER" in refused.stderr + refused.stdout

    ran = trust("--certs-dir", str(certs), "--no-system", "--nss-db", str(db), home=home)

    assert (ran.code, ran.err) == (0, ""), ran.out
    assert "reused development CA" in ran.out  # the proxy's own CA, not a new one
    name = re.search(r"tlsproxy-dev-ca-[0-9a-f]{16}", ran.out)
    assert name is not None
    assert re.search(rf"^{name.group()}\s+C,,\s*$", nicknames(db), re.MULTILINE)
    accepted = nss_handshake(proxy, db)
    assert accepted.returncode == 0, accepted.stderr

    again = trust("--certs-dir", str(certs), "--no-system", "--nss-db", str(db), home=home)
    assert again.code == 0
    assert f"already trusted: as {name.group()}" in again.out
    assert nicknames(db).count("tlsproxy-dev-ca-") == 1

    gone = trust("--certs-dir", str(certs), "--no-system", "--uninstall", home=home)

    assert (gone.code, gone.err) == (0, ""), gone.out
    assert f"removed: {name.group()}" in gone.out
    assert "tlsproxy-dev-ca-" not in nicknames(db)
    assert nss_handshake(proxy, db).returncode != 0
    assert not (certs / "trust-installed.json").exists()


def make_debian_root(root: Path) -> bytes:
    """A Debian CA store under ``root`` holding one "public" CA; that CA's PEM."""
    public = cert_pem(make_ca("Public Root For Tests").cert)
    (root / "etc" / "ssl" / "certs").mkdir(parents=True)
    (root / "usr" / "share" / "ca-certificates" / "mozilla").mkdir(parents=True)
    (root / "usr" / "share" / "ca-certificates" / "mozilla" / "Public.crt").write_bytes(public)
    (root / "etc" / "ca-certificates.conf").write_text("mozilla/Public.crt\n")
    return public


def https_get(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a client command that fetches over HTTPS; its result."""
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)


def test_debian_store_under_a_temp_root(proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    """The CA goes into a Debian store via update-ca-certificates; curl, httpx and Node then
    trust tlsproxy through the printed lines; --uninstall takes it out and nothing else."""
    need("update-ca-certificates", "openssl", "curl", "node")
    certs, root, home = tmp_path / "certs", tmp_path / "root", tmp_path / "home"
    home.mkdir()
    public = make_debian_root(root)
    proxy = proxy_factory("--certs-dir", str(certs))
    url = f"https://127.0.0.1:{proxy.port}/trust"
    bundle = root / "etc" / "ssl" / "certs" / "ca-certificates.crt"

    ran = trust("--certs-dir", str(certs), "--system-root", str(root), home=home)

    assert (ran.code, ran.err) == (0, ""), ran.out
    assert "system store (Debian/Ubuntu): installed: " in ran.out
    ca = (certs / "ca.pem").read_bytes()
    assert ca in bundle.read_bytes()
    assert public in bundle.read_bytes()
    assert printed(ran.out, "SSL_CERT_FILE") == str(bundle)
    assert printed(ran.out, "REQUESTS_CA_BUNDLE") == str(bundle)
    verify = [
        "openssl",
        "verify",
        "-CApath",
        str(root / "etc/ssl/certs"),
        str(certs / "localhost.pem"),
    ]
    assert subprocess.run(verify, capture_output=True, check=False).returncode == 0
    curl = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(bundle), url]
    assert https_get(*curl, env=dict(os.environ)).stdout == "200"
    httpx_get = f"import httpx; print(httpx.get({url!r}).status_code)"
    python_env = dict(os.environ, SSL_CERT_FILE=printed(ran.out, "SSL_CERT_FILE"))
    assert https_get(sys.executable, "-c", httpx_get, env=python_env).stdout.strip() == "200"
    node_get = (
        f"require('https').get({url!r}, r => {{ console.log(r.statusCode); process.exit(0) }})"
        ".on('error', e => { console.error(e.message); process.exit(1) })"
    )
    node_env = dict(os.environ, NODE_EXTRA_CA_CERTS=printed(ran.out, "NODE_EXTRA_CA_CERTS"))
    node = https_get("node", "-e", node_get, env=node_env)
    assert node.stdout.strip() == "200", node.stderr

    again = trust("--certs-dir", str(certs), "--system-root", str(root), home=home)
    assert again.code == 0
    assert "system store (Debian/Ubuntu): already trusted: " in again.out
    assert bundle.read_bytes().count(ca) == 1

    gone = trust("--certs-dir", str(certs), "--system-root", str(root), "--uninstall", home=home)

    assert (gone.code, gone.err) == (0, ""), gone.out
    assert "system store (Debian/Ubuntu): removed: " in gone.out
    assert ca not in bundle.read_bytes()
    assert public in bundle.read_bytes()
    assert list((root / "usr" / "local" / "share" / "ca-certificates").iterdir()) == []
    links = [p for p in (root / "etc" / "ssl" / "certs").iterdir() if p.is_symlink()]
    assert links  # the public CA's, which must stay
    assert not [p for p in links if "tlsproxy" in os.readlink(p) or not p.exists()]
    assert subprocess.run(verify, capture_output=True, check=False).returncode != 0
    assert https_get(*curl, env=dict(os.environ)).returncode == 60  # peer not verified


def test_without_root_the_system_store_is_skipped_with_the_command(tmp_path: Path) -> None:
    """A user who cannot write the store gets the sudo commands, and exit 1 if nothing else
    trusts the CA; with an NSS database trusted, exit 0."""
    need("update-ca-certificates", "certutil")
    root = tmp_path / "root"
    make_debian_root(root)
    runner: tuple[str, ...] = ()
    if os.geteuid() == 0:
        # Root without its capabilities is refused by file modes like any user (and can
        # still run this venv's Python, which lives under /root here).
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv (util-linux) is missing to drop privileges")
        runner = ("setpriv", "--inh-caps=-all", "--bounding-set=-all", "--")
    directories = [root, *(p for p in root.rglob("*") if p.is_dir())]
    for directory in directories:
        directory.chmod(0o555)
    args = ("--certs-dir", str(tmp_path / "certs"), "--system-root", str(root))
    try:
        alone = trust(*args, home=tmp_path, runner=runner)
        with_nss = trust(*args, "--nss-db", str(tmp_path / "nssdb"), home=tmp_path, runner=runner)
    finally:
        for directory in directories:
            directory.chmod(0o755)

    line = next(x for x in alone.out.splitlines() if x.startswith("system store (Debian/Ubuntu)"))
    assert "skipped: needs root; by hand: sudo install -D -m 644 " in line
    assert line.endswith(" && sudo update-ca-certificates")
    assert alone.code == 1
    assert alone.err.startswith("tlsproxy trust: error: no store trusts the CA ")
    assert not (root / "usr" / "local").exists()
    assert with_nss.code == 0, with_nss.out + with_nss.err
    assert "summary: installed in 1, already trusted in 0, skipped 1" in with_nss.out

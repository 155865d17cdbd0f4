"""Several certificates, chosen by the SNI name each client sends, on a real twistd process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from .pki import Issued, issue, seed_recipe, write_pair
from .proxyprocess import ProxyFactory, ProxyProcess


def _der(issued: Issued) -> bytes:
    return issued.cert.public_bytes(serialization.Encoding.DER)


def _served(proxy: ProxyProcess, ca_path: Path, server_name: str | None) -> bytes:
    """The certificate (DER) a handshake sending ``server_name`` as SNI gets; None: no SNI."""
    context = ssl.create_default_context(cafile=str(ca_path))
    context.check_hostname = False  # which certificate came is the question, not its name
    with (
        socket.create_connection((proxy.host, proxy.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def _status(proxy: ProxyProcess, ca_path: Path, server_name: str) -> bytes:
    """The status code of a GET / sent over a connection made with ``server_name`` as SNI."""
    context = ssl.create_default_context(cafile=str(ca_path))
    with (
        socket.create_connection((proxy.host, proxy.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    return answer.split(b" ", 2)[1]


class Sites:
    """A CA and three sites: a default, an exact name and a wildcard."""

    def __init__(self, directory: Path) -> None:
        self.ca = issue("tlsproxy SNI test CA", ca=True)
        self.ca_path = directory / "ca.pem"
        self.ca_path.write_bytes(self.ca.cert_pem())
        self.default = issue("default.test", issuer=self.ca, names=("default.test",))
        self.exact = issue("app.example.test", issuer=self.ca, names=("app.example.test",))
        self.wildcard = issue("wild", issuer=self.ca, names=("*.example.test",))


@pytest.fixture
def sites(tmp_path: Path) -> Sites:
    return Sites(tmp_path)


def _cert_args(directory: Path, sites: Sites) -> list[str]:
    args = []
    for stem, issued in (
        ("default", sites.default),
        ("wild", sites.wildcard),
        ("app", sites.exact),
    ):
        cert, key = write_pair(directory, issued, stem)
        args += ["--cert", str(cert), "--key", str(key)]
    return args


def test_certificate_is_chosen_by_name_exact_before_wildcard(
    proxy_factory: ProxyFactory, sites: Sites, tmp_path: Path
) -> None:
    """Exact name, then wildcard (listed earlier, still loses to the exact one), then default."""
    proxy = proxy_factory(*_cert_args(tmp_path, sites), trust=sites.ca_path)
    assert _served(proxy, sites.ca_path, "app.example.test") == _der(sites.exact)
    assert _served(proxy, sites.ca_path, "APP.Example.test") == _der(sites.exact)
    assert _served(proxy, sites.ca_path, "other.example.test") == _der(sites.wildcard)
    assert _served(proxy, sites.ca_path, "a.b.example.test") == _der(sites.default)
    assert _served(proxy, sites.ca_path, "unknown.test") == _der(sites.default)
    assert _served(proxy, sites.ca_path, None) == _der(sites.default)
    assert "certificate 1 of 3 (default" in proxy.output()


def test_sni_default_names_the_default(
    proxy_factory: ProxyFactory, sites: Sites, tmp_path: Path
) -> None:
    """--sni-default picks the certificate for clients that send no name or an unknown one."""
    args = [*_cert_args(tmp_path, sites), "--sni-default", "app.example.test"]
    proxy = proxy_factory(*args, trust=sites.ca_path)
    assert _served(proxy, sites.ca_path, None) == _der(sites.exact)
    assert _served(proxy, sites.ca_path, "unknown.test") == _der(sites.exact)
    assert _served(proxy, sites.ca_path, "default.test") == _der(sites.default)


def test_strict_sni_refuses_unknown_names_only(
    proxy_factory: ProxyFactory, sites: Sites, tmp_path: Path
) -> None:
    """--strict-sni: an unknown name gets the unrecognized_name alert; no name gets the default."""
    proxy = proxy_factory(*_cert_args(tmp_path, sites), "--strict-sni", trust=sites.ca_path)
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        _served(proxy, sites.ca_path, "unknown.test")
    assert _served(proxy, sites.ca_path, None) == _der(sites.default)
    assert _served(proxy, sites.ca_path, "x.example.test") == _der(sites.wildcard)
    assert _status(proxy, sites.ca_path, "app.example.test") == b"200"  # unharmed by refusals


def test_unknown_names_do_no_file_system_work(
    proxy_factory: ProxyFactory, sites: Sites, tmp_path: Path
) -> None:
    """With every certificate file gone, every name is still served from memory."""
    files = tmp_path / "files"
    files.mkdir()
    proxy = proxy_factory(*_cert_args(files, sites), trust=sites.ca_path)
    shutil.rmtree(files)
    for name, expected in (
        ("app.example.test", sites.exact),
        ("x.example.test", sites.wildcard),
        ("nobody.test", sites.default),
        (None, sites.default),
    ):
        assert _served(proxy, sites.ca_path, name) == _der(expected), name


def test_certs_dir_pairs_are_found_by_content(
    proxy_factory: ProxyFactory, sites: Sites, tmp_path: Path
) -> None:
    """mkcert names, a combined PEM and certbot's live/NAME/ layout, all found in --certs-dir."""
    certs = tmp_path / "served"
    certs.mkdir()
    # mkcert: NAME.pem + NAME-key.pem
    (certs / "app.example.test.pem").write_bytes(sites.exact.cert_pem())
    (certs / "app.example.test-key.pem").write_bytes(sites.exact.key_pem())
    # HAProxy/hitch: one file holding the certificate and its key
    (certs / "default.pem").write_bytes(sites.default.cert_pem() + sites.default.key_pem())
    # certbot: live/NAME/{cert,chain,fullchain,privkey}.pem
    live = certs / "wild.example.test"
    live.mkdir()
    (live / "cert.pem").write_bytes(sites.wildcard.cert_pem())
    (live / "chain.pem").write_bytes(sites.ca.cert_pem())
    (live / "fullchain.pem").write_bytes(sites.wildcard.cert_pem() + sites.ca.cert_pem())
    (live / "privkey.pem").write_bytes(sites.wildcard.key_pem())
    for key in certs.rglob("*key*"):
        key.chmod(0o600)
    proxy = proxy_factory(
        "--certs-dir", str(certs), "--sni-default", "default.test", trust=sites.ca_path
    )
    assert _served(proxy, sites.ca_path, "app.example.test") == _der(sites.exact)
    assert _served(proxy, sites.ca_path, "w.example.test") == _der(sites.wildcard)
    assert _served(proxy, sites.ca_path, None) == _der(sites.default)
    assert "fullchain.pem" in proxy.output()  # the longer chain serves, not cert.pem
    assert not (certs / "ca.pem").exists()  # no development CA was made beside them


def test_a_pair_added_to_certs_dir_serves_after_sighup(
    proxy_factory: ProxyFactory, sites: Sites, tmp_path: Path
) -> None:
    """SIGHUP scans --certs-dir again: a new site's pair serves its name from then on."""
    certs = tmp_path / "served"
    certs.mkdir()
    write_pair(certs, sites.default, "default")
    args = ["--certs-dir", str(certs), "--sni-default", "default.test"]
    proxy = proxy_factory(*args, trust=sites.ca_path)
    assert _served(proxy, sites.ca_path, "app.example.test") == _der(sites.default)
    write_pair(certs, sites.exact, "app")
    os.kill(proxy.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while _served(proxy, sites.ca_path, "app.example.test") != _der(sites.exact):
        assert time.monotonic() < deadline, proxy.output()
        time.sleep(0.05)
    assert _served(proxy, sites.ca_path, None) == _der(sites.default)


def test_the_tutorial_pair_in_certs_dir_is_served(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    """``openssl genrsa`` + ``req -x509`` (CA:TRUE, no key usage) dropped in --certs-dir serves."""
    certs = tmp_path / "served"
    certs.mkdir()
    _, cert = seed_recipe(certs)
    proxy = proxy_factory("--certs-dir", str(certs), trust=cert)
    assert _served(proxy, cert, "localhost") == (ssl.PEM_cert_to_DER_cert(cert.read_text()))
    assert "no subjectAltName" in proxy.output()


def test_client_certificates_are_required_whichever_certificate_sni_chose(
    proxy_factory: ProxyFactory, sites: Sites, tmp_path: Path
) -> None:
    """--client-ca applies after the SNI switch too: no client certificate, no connection."""
    from tests.certfactory import make_ca, write_pem

    from .test_mtls import make_client_cert

    client_ca = make_ca("SNI client CA")
    ca_file = write_pem(tmp_path / "client-ca.pem", client_ca.cert, mode=0o644)
    alice = make_client_cert(client_ca, "alice")
    alice_file = write_pem(tmp_path / "alice.pem", alice.cert, alice.key)
    proxy = proxy_factory(
        *_cert_args(tmp_path, sites), "--client-ca", str(ca_file), trust=sites.ca_path
    )
    anonymous = ssl.create_default_context()
    anonymous.check_hostname = False
    anonymous.verify_mode = ssl.CERT_NONE  # only the client's missing certificate may fail it
    for name in ("app.example.test", "x.example.test", "nobody.test", None):
        with (
            socket.create_connection((proxy.host, proxy.port), timeout=10) as raw,
            anonymous.wrap_socket(raw, server_hostname=name) as tls,
        ):
            # TLS 1.3: the server's refusal arrives after the client's handshake returns.
            tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
                tls.recv(65536)
    context = ssl.create_default_context(cafile=str(sites.ca_path))
    context.load_cert_chain(alice_file)
    with (
        socket.create_connection((proxy.host, proxy.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="app.example.test") as tls,
    ):
        tls.sendall(b"GET / HTTP/1.1\r\nHost: app.example.test\r\nConnection: close\r\n\r\n")
        assert tls.recv(65536).startswith(b"HTTP/1.1 200 ")
        assert tls.getpeercert(binary_form=True) == _der(sites.exact)


def test_a_non_ascii_name_fails_quietly(
    proxy_factory: ProxyFactory, sites: Sites, tmp_path: Path
) -> None:
    """SNI allows ASCII names only: a raw UTF-8 name fails its handshake with no log noise."""
    proxy = proxy_factory(*_cert_args(tmp_path, sites), trust=sites.ca_path)
    for _ in range(3):
        done = subprocess.run(
            [
                *("openssl", "s_client", "-connect", f"{proxy.host}:{proxy.port}"),
                *("-servername", "bücher.example.test", "-brief"),
            ],
            input=b"",
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert done.returncode != 0
        assert b"alert internal error" in done.stderr
    assert _served(proxy, sites.ca_path, "app.example.test") == _der(sites.exact)
    output = proxy.output()
    assert "UnicodeDecodeError" not in output
    assert "Exception ignored" not in output

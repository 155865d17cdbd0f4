"""Certificates: user PEM pairs served or refused with the fix; the development CA; TLS policy."""

from __future__ import annotations

import datetime
import re
import socket
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from .backend import Backend
from .pki import UTC, der_certificate, issue, openssl, seed_recipe, write_pair
from .proxyprocess import ProxyFactory, ProxyProcess, free_port, run_to_exit, trusting_context

pytestmark = pytest.mark.e2e


def served_certificate(proxy: ProxyProcess, server_hostname: str = "localhost") -> bytes:
    """The DER certificate the proxy presents (without verifying it)."""
    context = trusting_context(None)
    with (
        socket.create_connection((proxy.host, proxy.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def get_through(proxy: ProxyProcess, context: ssl.SSLContext, hostname: str = "localhost") -> bytes:
    """Send one GET over a fresh TLS connection made with ``context``; the raw response."""
    with (
        socket.create_connection((proxy.host, proxy.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=hostname) as tls,
    ):
        tls.sendall(b"GET /tls HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        return tls.recv(65536)


def refuse(workdir: Path, backend: Backend, *args: str) -> str:
    """Run tlsproxy expecting a refusal; the single error line (checked for the contract)."""
    port = free_port()
    result = run_to_exit(
        ["--backend", backend.url, "--listen", f"tcp:{port}:interface=127.0.0.1", *args],
        cwd=workdir,
    )
    assert result.returncode != 0, result.output
    assert "Traceback" not in result.output
    lines = result.error_lines()
    assert len(lines) == 1, f"expected one error line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("tlsproxy: error:"), lines[0]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    return lines[0]


def test_seed_recipe_pair_is_served(proxy_factory: ProxyFactory, workdir: Path) -> None:
    """``openssl genrsa 2048`` + ``openssl req -x509 -new`` works as it is, with a SAN warning."""
    key, cert = seed_recipe(workdir)
    proxy = proxy_factory("--cert", str(cert), "--key", str(key))
    assert served_certificate(proxy) == der_certificate(cert)
    response = get_through(proxy, trusting_context(None))
    assert response.startswith(b"HTTP/1.1 200 ")
    assert re.search(r"subjectAltName|\bSAN\b", proxy.output(), re.IGNORECASE), (
        "no warning that the certificate has no subjectAltName"
    )


def test_seed_recipe_with_1024_bit_key_is_refused_with_the_fix(
    workdir: Path, backend: Backend
) -> None:
    """A 1024-bit RSA key is refused, and the message gives the command for a good key."""
    key, cert = seed_recipe(workdir, bits=1024)
    message = refuse(workdir, backend, "--cert", str(cert), "--key", str(key))
    assert "1024" in message
    assert "openssl" in message, f"no command to make a good key in: {message}"
    assert "2048" in message or "ec" in message.lower()


@pytest.mark.parametrize("missing", ["--cert", "--key"])
def test_missing_file_is_refused_naming_it(workdir: Path, backend: Backend, missing: str) -> None:
    """A --cert or --key path that does not exist is named with its flag."""
    cert, key = write_pair(workdir, issue("localhost"))
    paths = {"--cert": str(cert), "--key": str(key)}
    paths[missing] = str(workdir / "nowhere.pem")
    message = refuse(workdir, backend, "--cert", paths["--cert"], "--key", paths["--key"])
    assert paths[missing] in message
    assert missing in message


def test_der_certificate_is_refused(workdir: Path, backend: Backend) -> None:
    """A DER certificate is refused with a message about PEM."""
    cert, key = write_pair(workdir, issue("localhost"))
    der = workdir / "server.der"
    openssl("x509", "-in", str(cert), "-outform", "DER", "-out", str(der), cwd=workdir)
    message = refuse(workdir, backend, "--cert", str(der), "--key", str(key))
    assert "PEM" in message
    assert str(der) in message


def test_certificate_request_instead_of_certificate_is_refused(
    workdir: Path, backend: Backend
) -> None:
    """A CSR given as --cert is recognised and refused."""
    _, key = write_pair(workdir, issue("localhost"))
    csr = workdir / "server.csr"
    openssl(
        "req", "-new", "-key", str(key), "-subj", "/CN=localhost", "-out", str(csr), cwd=workdir
    )
    message = refuse(workdir, backend, "--cert", str(csr), "--key", str(key))
    assert re.search(r"CSR|signing request|certificate request", message, re.IGNORECASE), message


def test_key_and_certificate_swapped_are_refused(workdir: Path, backend: Backend) -> None:
    """--cert given the key and --key given the certificate is refused."""
    cert, key = write_pair(workdir, issue("localhost"))
    message = refuse(workdir, backend, "--cert", str(key), "--key", str(cert))
    assert re.search(r"swap|--cert|--key", message), message


def test_key_not_matching_certificate_is_refused(workdir: Path, backend: Backend) -> None:
    """A key from another pair is refused: it does not match the certificate."""
    cert, _ = write_pair(workdir, issue("localhost"), "one")
    _, other_key = write_pair(workdir, issue("localhost"), "two")
    message = refuse(workdir, backend, "--cert", str(cert), "--key", str(other_key))
    assert "match" in message.lower()


def test_expired_certificate_is_refused(workdir: Path, backend: Backend) -> None:
    """An expired certificate is refused, saying it expired."""
    now = datetime.datetime.now(UTC)
    cert, key = write_pair(
        workdir,
        issue(
            "localhost",
            not_before=now - datetime.timedelta(days=30),
            not_after=now - datetime.timedelta(days=1),
        ),
    )
    message = refuse(workdir, backend, "--cert", str(cert), "--key", str(key))
    assert "expired" in message.lower()


def test_not_yet_valid_certificate_is_refused(workdir: Path, backend: Backend) -> None:
    """A certificate whose validity starts in the future is refused."""
    now = datetime.datetime.now(UTC)
    cert, key = write_pair(
        workdir,
        issue(
            "localhost",
            not_before=now + datetime.timedelta(days=2),
            not_after=now + datetime.timedelta(days=30),
        ),
    )
    message = refuse(workdir, backend, "--cert", str(cert), "--key", str(key))
    assert re.search(r"not (yet )?valid|before|until|future", message, re.IGNORECASE), message


def test_encrypted_key_needs_passphrase_file(
    proxy_factory: ProxyFactory, workdir: Path, backend: Backend
) -> None:
    """An encrypted key is refused pointing at --key-passphrase-file, and served with it."""
    cert, plain_key = write_pair(workdir, issue("localhost"))
    encrypted = workdir / "encrypted.key"
    openssl(
        "pkey",
        "-in",
        str(plain_key),
        "-aes256",
        "-passout",
        "pass:s3cret",
        "-out",
        str(encrypted),
        cwd=workdir,
    )
    message = refuse(workdir, backend, "--cert", str(cert), "--key", str(encrypted))
    assert "--key-passphrase-file" in message
    passphrase = workdir / "passphrase.txt"
    passphrase.write_text("s3cret\n")
    passphrase.chmod(0o600)
    proxy = proxy_factory(
        "--cert", str(cert), "--key", str(encrypted), "--key-passphrase-file", str(passphrase)
    )
    assert served_certificate(proxy) == der_certificate(cert)


def test_wrong_passphrase_is_refused(workdir: Path, backend: Backend) -> None:
    """A passphrase file that does not open the key is refused, naming the flag."""
    cert, plain_key = write_pair(workdir, issue("localhost"))
    encrypted = workdir / "encrypted.key"
    openssl(
        "pkey",
        "-in",
        str(plain_key),
        "-aes256",
        "-passout",
        "pass:s3cret",
        "-out",
        str(encrypted),
        cwd=workdir,
    )
    passphrase = workdir / "passphrase.txt"
    passphrase.write_text("wrong\n")
    message = refuse(
        workdir,
        backend,
        "--cert",
        str(cert),
        "--key",
        str(encrypted),
        "--key-passphrase-file",
        str(passphrase),
    )
    assert "passphrase" in message.lower()


def test_chain_following_leaf_is_served(proxy_factory: ProxyFactory, workdir: Path) -> None:
    """A cert file holding leaf then intermediate serves the chain to a client trusting the root."""
    root = issue("Test Root", ca=True)
    intermediate = issue("Test Intermediate", ca=True, issuer=root)
    leaf = issue("localhost", issuer=intermediate)
    chain = workdir / "chain.pem"
    chain.write_bytes(leaf.cert_pem() + intermediate.cert_pem())
    key = workdir / "leaf.key"
    key.write_bytes(leaf.key_pem())
    key.chmod(0o600)
    root_pem = workdir / "root.pem"
    root_pem.write_bytes(root.cert_pem())
    proxy = proxy_factory("--cert", str(chain), "--key", str(key), trust=root_pem)
    response = get_through(proxy, trusting_context(root_pem))
    assert response.startswith(b"HTTP/1.1 200 ")


def test_chain_out_of_order_is_refused(workdir: Path, backend: Backend) -> None:
    """A cert file with the intermediate before the leaf is refused, saying so."""
    root = issue("Test Root", ca=True)
    intermediate = issue("Test Intermediate", ca=True, issuer=root)
    leaf = issue("localhost", issuer=intermediate)
    chain = workdir / "chain.pem"
    chain.write_bytes(intermediate.cert_pem() + leaf.cert_pem())
    key = workdir / "leaf.key"
    key.write_bytes(leaf.key_pem())
    key.chmod(0o600)
    message = refuse(workdir, backend, "--cert", str(chain), "--key", str(key))
    assert "order" in message.lower()


def test_key_and_certificate_in_one_file(proxy_factory: ProxyFactory, workdir: Path) -> None:
    """One PEM file holding key and certificate works given as --cert alone."""
    issued = issue("localhost")
    both = workdir / "both.pem"
    both.write_bytes(issued.key_pem() + issued.cert_pem())
    both.chmod(0o600)
    proxy = proxy_factory("--cert", str(both))
    assert served_certificate(proxy) == der_certificate(both)


def test_key_readable_by_others_is_a_warning(proxy_factory: ProxyFactory, workdir: Path) -> None:
    """A key file readable by group or others is served, with a warning naming the file."""
    cert, key = write_pair(workdir, issue("localhost"))
    key.chmod(0o644)
    proxy = proxy_factory("--cert", str(cert), "--key", str(key))
    assert served_certificate(proxy) == der_certificate(cert)
    output = proxy.output()
    assert re.search(r"readable|permission|chmod", output, re.IGNORECASE), output
    assert str(key) in output


def test_development_ca_works_with_curl(
    proxy_factory: ProxyFactory, workdir: Path, backend: Backend
) -> None:
    """With no --cert, ``curl --cacert certs/ca.pem https://localhost:PORT/`` just works."""
    port = free_port()
    proxy_factory("--port", str(port), "--interface", "127.0.0.1", default_certs_dir=True)
    ca = workdir / "certs" / "ca.pem"
    result = subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--max-time",
            "10",
            "--cacert",
            str(ca),
            f"https://localhost:{port}/from-curl",
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"GET /from-curl\n"


def test_development_ca_defaults_to_cwd_certs_with_private_keys(
    proxy_factory: ProxyFactory, workdir: Path
) -> None:
    """With neither --cert nor --certs-dir, the CA is made in ./certs with owner-only keys."""
    proxy = proxy_factory(default_certs_dir=True)
    certs = workdir / "certs"
    assert (certs / "ca.pem").is_file()
    keys = [path for path in certs.iterdir() if b"PRIVATE KEY" in path.read_bytes()]
    assert keys, "no private key files in ./certs"
    for path in keys:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path.name} is readable by others ({oct(mode)})"
    assert get_through(proxy, proxy.ssl_context()).startswith(b"HTTP/1.1 200 ")


def test_development_certificates_are_reused(proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    """A second start with the same --certs-dir keeps the CA and the leaf."""
    certs = tmp_path / "own-certs"
    first = proxy_factory("--certs-dir", str(certs))
    ca_before = (certs / "ca.pem").read_bytes()
    leaf_before = served_certificate(first)
    first.stop()
    second = proxy_factory("--certs-dir", str(certs))
    assert (certs / "ca.pem").read_bytes() == ca_before
    assert served_certificate(second) == leaf_before


def test_hostname_adds_a_name_and_keeps_the_ca(proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    """Repeated ``--hostname`` issues a leaf for the new names from the same CA."""
    certs = tmp_path / "own-certs"
    first = proxy_factory("--certs-dir", str(certs))
    ca_before = (certs / "ca.pem").read_bytes()
    first.stop()
    proxy = proxy_factory(
        "--certs-dir", str(certs), "--hostname", "myapp.test", "--hostname", "api.myapp.test"
    )
    assert (certs / "ca.pem").read_bytes() == ca_before
    for name in ("myapp.test", "api.myapp.test", "localhost"):
        response = get_through(proxy, proxy.ssl_context(), hostname=name)
        assert response.startswith(b"HTTP/1.1 200 "), name


def test_development_leaf_is_p256_for_local_names(proxy: ProxyProcess) -> None:
    """The generated leaf has an ECDSA P-256 key and names localhost, 127.0.0.1 and ::1."""
    cert = x509.load_der_x509_certificate(served_certificate(proxy))
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    addresses = {str(address) for address in names.get_values_for_type(x509.IPAddress)}
    assert {"127.0.0.1", "::1"} <= addresses


def s_client(proxy: ProxyProcess, *options: str) -> subprocess.CompletedProcess[str]:
    """``openssl s_client`` against the proxy with ``options``; stdin closed at once."""
    assert proxy.ca_path is not None
    return subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{proxy.port}",
            "-servername",
            "localhost",
            "-CAfile",
            str(proxy.ca_path),
            *options,
        ],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_tls_policy_with_openssl_s_client(proxy: ProxyProcess) -> None:
    """openssl s_client: TLS 1.1 is refused; TLS 1.2 verifies and negotiates ALPN http/1.1."""
    old = s_client(proxy, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert old.returncode != 0 or "Cipher is (NONE)" in old.stdout, old.stdout
    modern = s_client(proxy, "-tls1_2", "-alpn", "http/1.1")
    assert modern.returncode == 0, modern.stderr
    assert "Verify return code: 0 (ok)" in modern.stdout
    assert re.search(r"Protocol\s*:\s*TLSv1\.2", modern.stdout), modern.stdout
    assert "ALPN protocol: http/1.1" in modern.stdout
    tls13 = s_client(proxy, "-tls1_3", "-alpn", "http/1.1")
    assert tls13.returncode == 0, tls13.stderr
    assert "ALPN protocol: http/1.1" in tls13.stdout

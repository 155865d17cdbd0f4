"""tlsproxy.config: every bad flag is refused once, in one line that names the flag and the fix."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.certfactory import NOW, make_ca, make_leaf, write_pair, write_pem
from tlsproxy.backendoptions import parse_backend
from tlsproxy.config import Config, build_config
from tlsproxy.configerror import ConfigError
from tlsproxy.listenoptions import Listener
from tlsproxy.tap import Options
from tlsproxy.tls.client import BackendTLS

BACKEND = "http://127.0.0.1:8000"


def configure(tmp_path: Path, *argv: str) -> Config:
    """Parse ``argv`` as ``twistd tlsproxy`` would and build the Config (dev certs in tmp_path)."""
    options = Options()
    options.parseOptions(["--certs-dir", str(tmp_path / "certs"), *argv])
    values = {name.replace("-", "_"): value for name, value in options.items()}
    return build_config(values, now=NOW)


def refusal(tmp_path: Path, *argv: str) -> str:
    """The ConfigError message for ``argv``, checked to be a single line."""
    with pytest.raises(ConfigError) as caught:
        configure(tmp_path, *argv)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- a good configuration -------------------------------------------------------------------


def test_backend_alone_is_a_complete_configuration(tmp_path: Path) -> None:
    """Only --backend: both loopback listeners on 8443, default limits, a development cert."""
    config = configure(tmp_path, "--backend", BACKEND)
    assert (config.backend.host, config.backend.port, config.backend.path_prefix) == (
        "127.0.0.1",
        8000,
        b"",
    )
    assert config.listeners == (
        Listener("tcp:8443:interface=127.0.0.1", optional=True),
        Listener(r"tcp6:8443:interface=\:\:1", optional=True),
    )
    assert config.limits.max_header_bytes == 64 * 1024
    assert config.dev_certificates is not None
    assert config.certificates.default.cert_path == config.dev_certificates.cert_path
    assert config.trusted_proxies == ()
    assert config.access_log is None


def test_given_certificate_pair_is_loaded_instead_of_a_development_one(tmp_path: Path) -> None:
    """--cert and --key are loaded and checked; no development CA is made."""
    cert, key = write_pair(tmp_path, make_leaf())
    config = configure(tmp_path, "--backend", BACKEND, "--cert", str(cert), "--key", str(key))
    assert config.dev_certificates is None
    assert config.certificates.default.cert_path == cert
    assert not (tmp_path / "certs").exists()


def test_explicit_interfaces_and_port_must_all_listen(tmp_path: Path) -> None:
    """--interface given by the user is not optional, and IPv6 colons are escaped for Twisted."""
    config = configure(
        tmp_path,
        "--backend",
        BACKEND,
        "--port",
        "9443",
        "--interface",
        "::",
        "--interface",
        "0.0.0.0",
    )
    assert config.listeners == (
        Listener(r"tcp6:9443:interface=\:\:"),
        Listener("tcp:9443:interface=0.0.0.0"),
    )


def test_listen_replaces_port_and_interface(tmp_path: Path) -> None:
    """--listen endpoints are used as given, instead of --port/--interface."""
    config = configure(
        tmp_path,
        "--backend",
        BACKEND,
        "--port",
        "1",
        "--listen",
        "unix:/run/p.sock",
        "--listen",
        "tcp:9000",
    )
    assert config.listeners == (Listener("unix:/run/p.sock"), Listener("tcp:9000"))


def test_trusted_proxies_and_limits_are_parsed(tmp_path: Path) -> None:
    """Repeatable --trusted-proxy ranges (host bits allowed) and numeric limits become values."""
    config = configure(
        tmp_path,
        "--backend",
        BACKEND,
        "--trusted-proxy",
        "10.1.2.3/8",
        "--trusted-proxy",
        "2001:db8::1",
        "--backend-timeout",
        "2.5",
        "--max-header-bytes",
        "8192",
    )
    assert config.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("2001:db8::1/128"),
    )
    assert config.limits.backend_timeout == 2.5
    assert config.limits.max_header_bytes == 8192


@pytest.mark.parametrize(
    ("url", "host", "port", "prefix"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1", 8000, b""),
        ("http://localhost", "localhost", 80, b""),
        ("http://[::1]:8000/", "::1", 8000, b""),
        ("http://app.internal:9000/api/v1/", "app.internal", 9000, b"/api/v1"),
        ("HTTP://Example.COM:8000/x", "example.com", 8000, b"/x"),
    ],
)
def test_backend_urls_are_parsed(url: str, host: str, port: int, prefix: bytes) -> None:
    """Host, port (80 by default) and a path prefix without its trailing slash."""
    backend = parse_backend(url)
    assert (backend.host, backend.port, backend.path_prefix, backend.url) == (
        host,
        port,
        prefix,
        url,
    )


# --- bad flags: each names the flag and the fix ---------------------------------------------


def test_missing_backend_says_it_is_required(tmp_path: Path) -> None:
    """No --backend: say it is required and show one."""
    message = refusal(tmp_path)
    assert "--backend is required" in message
    assert "e.g. --backend http://127.0.0.1:8000" in message


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://127.0.0.1:8443", "an http://, https:// or unix:/path URL"),
        ("127.0.0.1:8000", "an http://, https:// or unix:/path URL"),
        ("localhost:8000", "an http://, https:// or unix:/path URL"),
        ("http://:8000", "has no host"),
        ("http://127.0.0.1:99999", "not a valid URL"),
        ("http://127.0.0.1:http", "not a valid URL"),
        ("http://127.0.0.1:8000/?x=1", "only scheme, host, port and a path prefix"),
        ("http://127.0.0.1:8000/#top", "only scheme, host, port and a path prefix"),
        ("http://user:pw@127.0.0.1:8000", "only scheme, host, port and a path prefix"),
    ],
)
def test_bad_backend_url_is_explained(tmp_path: Path, url: str, says: str) -> None:
    """Each malformed --backend is refused with what is wrong and an example of a good one."""
    message = refusal(tmp_path, "--backend", url)
    assert message.startswith(f"--backend {url!r}")
    assert says in message
    assert "e.g. --backend http://127.0.0.1:8000" in message


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://a..b:8000", "is not a valid host name"),
        ("http://.example:8000", "is not a valid host name"),
        ("http://" + "x" * 64 + ".example:8000", "is not a valid host name"),
        ("http://127.0.0.1:0", "port 0"),
        ("http://localhost:0/app", "port 0"),
    ],
)
def test_backend_that_cannot_be_connected_to_is_refused(
    tmp_path: Path, url: str, says: str
) -> None:
    """A --backend host that is not a valid name, or port 0, is a ConfigError naming the flag at
    startup, not a traceback or a 502 on the first request."""
    message = refusal(tmp_path, "--backend", url)
    assert message.startswith(f"--backend {url!r}")
    assert says in message


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/caf\u00e9", "http://127.0.0.1:8000/a b"])
def test_backend_path_that_cannot_be_sent_is_refused(tmp_path: Path, url: str) -> None:
    """A path prefix that would not make a valid request line (non-ASCII, a space) is a
    ConfigError naming --backend, not a traceback or a broken request later."""
    message = refusal(tmp_path, "--backend", url)
    assert "--backend" in message


@pytest.mark.parametrize(
    "flag", ["--header-timeout", "--idle-timeout", "--backend-timeout", "--connect-timeout"]
)
@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("soon", "is not a number of seconds"),
        ("0", "must be greater than 0"),
        ("-3", "must be greater than 0"),
        ("inf", "must be greater than 0"),
        ("nan", "must be greater than 0"),
    ],
)
def test_bad_timeouts_are_explained(tmp_path: Path, flag: str, value: str, says: str) -> None:
    """Every timeout must be a positive, finite number of seconds."""
    message = refusal(tmp_path, "--backend", BACKEND, flag, value)
    assert message.startswith(flag + " ")
    assert says in message


@pytest.mark.parametrize("flag", ["--max-header-bytes", "--max-connections"])
@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("lots", "is not a whole number"),
        ("1.5", "is not a whole number"),
        ("0", "must be greater than 0"),
    ],
)
def test_bad_counts_are_explained(tmp_path: Path, flag: str, value: str, says: str) -> None:
    """Limits that count things must be positive whole numbers."""
    message = refusal(tmp_path, "--backend", BACKEND, flag, value)
    assert message.startswith(flag + " ")
    assert says in message


def test_tiny_max_header_bytes_is_refused(tmp_path: Path) -> None:
    """A head limit below 1 KiB would break ordinary browsers: refused, saying so."""
    message = refusal(tmp_path, "--backend", BACKEND, "--max-header-bytes", "512")
    assert message.startswith("--max-header-bytes")
    assert "browser" in message


@pytest.mark.parametrize(
    ("value", "says"),
    [("https", "is not a port number"), ("70000", "use 1-65535"), ("-1", "use 1-65535")],
)
def test_bad_port_is_explained(tmp_path: Path, value: str, says: str) -> None:
    """--port must be a number in the TCP range."""
    message = refusal(tmp_path, "--backend", BACKEND, "--port", value)
    assert message.startswith("--port")
    assert says in message


def test_interface_must_be_an_address(tmp_path: Path) -> None:
    """--interface takes an IP address; a name gets an example of what to give instead."""
    message = refusal(tmp_path, "--backend", BACKEND, "--interface", "localhost")
    assert message.startswith("--interface 'localhost' is not an IP address")
    assert "e.g. --interface 127.0.0.1" in message


@pytest.mark.parametrize("description", ["ssl:8443", "tls:8443", "TLS:8443", "le:/tmp:tcp:443"])
def test_tls_listen_endpoints_are_refused(tmp_path: Path, description: str) -> None:
    """tlsproxy adds TLS itself, so --listen wants a plain endpoint and says so."""
    message = refusal(tmp_path, "--backend", BACKEND, "--listen", description)
    assert message.startswith(f"--listen {description!r}")
    assert "give a plain endpoint such as tcp:8443" in message


def test_unknown_listen_endpoint_lists_the_known_ones(tmp_path: Path) -> None:
    """An unknown endpoint type is refused with the list of those supported."""
    message = refusal(tmp_path, "--backend", BACKEND, "--listen", "udp:53")
    assert message.startswith("--listen 'udp:53'")
    assert "tcp:, tcp6:, unix:, systemd:" in message


@pytest.mark.parametrize("value", ["10.0.0.0/33", "ten", "10.0.0.0/8/8"])
def test_bad_trusted_proxy_is_explained(tmp_path: Path, value: str) -> None:
    """--trusted-proxy takes an address or a CIDR range, with an example."""
    message = refusal(tmp_path, "--backend", BACKEND, "--trusted-proxy", value)
    assert message.startswith(f"--trusted-proxy {value!r}")
    assert "e.g. --trusted-proxy 10.0.0.0/8" in message


@pytest.mark.parametrize("value", ["bad name", "-leading.example", "a..b", "x" * 64 + ".example"])
def test_bad_hostname_is_explained(tmp_path: Path, value: str) -> None:
    """--hostname must be a DNS name or an IP address."""
    message = refusal(tmp_path, "--backend", BACKEND, "--hostname", value)
    assert message.startswith(f"--hostname {value!r}")


def test_access_log_in_a_missing_directory_is_refused(tmp_path: Path) -> None:
    """--access-log into a directory that does not exist names the directory."""
    path = tmp_path / "nowhere" / "access.log"
    message = refusal(tmp_path, "--backend", BACKEND, "--access-log", str(path))
    assert message.startswith(f"--access-log {path}")
    assert str(tmp_path / "nowhere") in message


def test_access_log_naming_a_directory_is_refused(tmp_path: Path) -> None:
    """--access-log pointing at a directory is refused at startup, asking for a file in it."""
    message = refusal(tmp_path, "--backend", BACKEND, "--access-log", str(tmp_path))
    assert message.startswith(f"--access-log {tmp_path}")
    assert "is a directory" in message


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory this process cannot create files in.

    A read-only mode is enough for an ordinary user; root (or CAP_DAC_OVERRIDE) writes anyway,
    so then Linux's /proc/self stands in: procfs creates no files, whoever asks.
    """
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):
            yield locked
        elif Path("/proc/self").is_dir() and not os.access("/proc/self", os.W_OK):
            yield Path("/proc/self")
        else:
            pytest.skip("this user can write to any directory and there is no /proc to use")
    finally:
        locked.chmod(0o700)


def test_access_log_in_an_unwritable_directory_is_refused(
    tmp_path: Path, unwritable_dir: Path
) -> None:
    """--access-log where this user cannot create the file is refused at startup, not when the
    first request is logged."""
    path = unwritable_dir / "access.log"
    message = refusal(tmp_path, "--backend", BACKEND, "--access-log", str(path))
    assert message.startswith(f"--access-log {path}")
    assert "not writable" in message


def test_access_log_file_that_is_read_only_is_refused(tmp_path: Path) -> None:
    """An existing --access-log file this user cannot write to is refused at startup."""
    path = tmp_path / "access.log"
    path.write_text("")
    path.chmod(0o400)
    if os.access(path, os.W_OK):
        pytest.skip("this user (root) can write to read-only files")
    message = refusal(tmp_path, "--backend", BACKEND, "--access-log", str(path))
    assert message.startswith(f"--access-log {path}")
    assert "not writable" in message


def test_writable_access_log_is_accepted(tmp_path: Path) -> None:
    """An --access-log file in a writable directory passes the checks, whether or not it
    exists yet."""
    path = tmp_path / "access.log"
    assert configure(tmp_path, "--backend", BACKEND, "--access-log", str(path)).access_log
    path.write_text("")
    assert configure(tmp_path, "--backend", BACKEND, "--access-log", str(path)).access_log


def test_access_log_to_stdout_is_accepted(tmp_path: Path) -> None:
    """--access-log - means standard output."""
    assert configure(tmp_path, "--backend", BACKEND, "--access-log", "-").access_log == "-"


def test_key_without_cert_is_refused(tmp_path: Path) -> None:
    """--key alone is refused, offering both ways out."""
    _, key = write_pair(tmp_path, make_leaf())
    message = refusal(tmp_path, "--backend", BACKEND, "--key", str(key))
    assert message == "--key needs --cert too (or give neither for a development certificate)"


def test_missing_certificate_file_is_a_config_error(tmp_path: Path) -> None:
    """A --cert that does not exist stops startup with a one-line message naming the file."""
    missing = tmp_path / "missing.pem"
    message = refusal(tmp_path, "--backend", BACKEND, "--cert", str(missing))
    assert str(missing) in message


def test_unreadable_passphrase_file_is_explained(tmp_path: Path) -> None:
    """--key-passphrase-file that cannot be read says so and why."""
    cert, key = write_pair(tmp_path, make_leaf())
    missing = tmp_path / "pass.txt"
    message = refusal(
        tmp_path,
        "--backend",
        BACKEND,
        "--cert",
        str(cert),
        "--key",
        str(key),
        "--key-passphrase-file",
        str(missing),
    )
    assert message.startswith(f"--key-passphrase-file {missing}: cannot read it")
    assert "No such file" in message


def test_backend_error_is_found_before_certificates_are_made(tmp_path: Path) -> None:
    """A bad flag stops everything before any file is written."""
    refusal(tmp_path, "--backend", "ftp://x")
    assert not (tmp_path / "certs").exists()


# --- https:// and unix: backends, and their flags ------------------------------------------


def test_https_backend_is_verified_by_default_for_its_own_host(tmp_path: Path) -> None:
    """https:// defaults to port 443 and verifies its host against the system store."""
    backend = configure(tmp_path, "--backend", "https://app.internal/api/").backend
    assert (backend.host, backend.port, backend.path_prefix) == ("app.internal", 443, b"/api")
    assert backend.tls == BackendTLS(server_name="app.internal", ca_pem=None, verify=True)


def test_backend_ca_and_server_name_are_loaded(tmp_path: Path) -> None:
    """--backend-ca is read at startup; --backend-server-name replaces the name verified."""
    ca = write_pem(tmp_path / "ca.pem", make_ca().cert)
    backend = configure(
        tmp_path,
        "--backend",
        "https://10.0.0.5:8443",
        "--backend-ca",
        str(ca),
        "--backend-server-name",
        "App.Internal",
    ).backend
    assert backend.tls == BackendTLS(server_name="app.internal", ca_pem=ca.read_bytes())


def test_insecure_backend_turns_verification_off(tmp_path: Path) -> None:
    """--insecure-backend keeps TLS (and SNI) but verifies nothing."""
    backend = configure(tmp_path, "--backend", "https://app.internal", "--insecure-backend")
    assert backend.backend.tls == BackendTLS(server_name="app.internal", verify=False)


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("unix:/run/app.sock", "/run/app.sock"),
        ("unix:///run/app.sock", "/run/app.sock"),
        ("UNIX:/run/a b.sock", "/run/a b.sock"),
    ],
)
def test_unix_backends_are_parsed(url: str, path: str) -> None:
    """unix:/path and unix:///path name the socket file; no TLS, no path prefix."""
    backend = parse_backend(url)
    assert (backend.socket_path, backend.tls, backend.path_prefix, backend.url) == (
        path,
        None,
        b"",
        url,
    )


def test_relative_unix_socket_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative socket path is resolved at startup, before twistd may change directory."""
    monkeypatch.chdir(tmp_path)
    assert parse_backend("unix:app.sock").socket_path == str(tmp_path / "app.sock")


@pytest.mark.parametrize("url", ["unix:", "unix:/run/"])
def test_unix_backend_without_a_file_is_refused(tmp_path: Path, url: str) -> None:
    """unix: with no file name is refused with an example."""
    message = refusal(tmp_path, "--backend", url)
    assert message.startswith(f"--backend {url!r}: name the socket file")


@pytest.mark.parametrize(
    "flags",
    [("--backend-ca", "ca.pem"), ("--insecure-backend",), ("--backend-server-name", "a.b")],
)
def test_tls_backend_flags_are_refused_for_a_plain_backend(
    tmp_path: Path, flags: tuple[str, ...]
) -> None:
    """The https-only flags with an http:// backend are refused, naming the flag."""
    message = refusal(tmp_path, "--backend", BACKEND, *flags)
    assert message.startswith(f"{flags[0]} applies to an https:// backend only")


def test_backend_ca_with_insecure_backend_is_refused(tmp_path: Path) -> None:
    """Verifying with a CA and verifying nothing at once is a contradiction, refused."""
    ca = write_pem(tmp_path / "ca.pem", make_ca().cert)
    message = refusal(
        tmp_path, "--backend", "https://a.b", "--backend-ca", str(ca), "--insecure-backend"
    )
    assert "contradict" in message


def test_unreadable_or_empty_backend_ca_is_refused(tmp_path: Path) -> None:
    """A missing --backend-ca, or one with no certificate in it, stops startup naming it."""
    missing = tmp_path / "nope.pem"
    message = refusal(tmp_path, "--backend", "https://a.b", "--backend-ca", str(missing))
    assert message.startswith(f"--backend-ca {missing}: cannot read it")
    empty = tmp_path / "empty.pem"
    empty.write_text("not a certificate\n")
    message = refusal(tmp_path, "--backend", "https://a.b", "--backend-ca", str(empty))
    assert message.startswith(f"--backend-ca {empty}: no PEM certificate in it")


def test_bad_backend_server_name_is_refused(tmp_path: Path) -> None:
    """--backend-server-name must be a DNS name or an IP address."""
    message = refusal(tmp_path, "--backend", "https://a.b", "--backend-server-name", "not a name")
    assert message.startswith("--backend-server-name 'not a name' is neither")


# --- several certificates (SNI) ----------------------------------------------------------------


def _site(tmp_path: Path, name: str) -> tuple[str, str]:
    cert, key = write_pair(
        tmp_path, make_leaf(names=(name,)), cert_name=f"{name}.pem", key_name=f"{name}.key"
    )
    return str(cert), str(key)


def test_each_key_belongs_to_the_cert_before_it(tmp_path: Path) -> None:
    """--cert A --key A.key --cert B (key inside) --cert C --key C.key: three pairs, in order."""
    a, b, c = (_site(tmp_path, n) for n in ("a.test", "b.test", "c.test"))
    combined = tmp_path / "b-combined.pem"
    combined.write_bytes(Path(b[0]).read_bytes() + Path(b[1]).read_bytes())
    combined.chmod(0o600)
    config = configure(
        tmp_path,
        *("--backend", BACKEND, "--cert", a[0], "--key", a[1], "--cert", str(combined)),
        *("--cert", c[0], "--key", c[1]),
    )
    served = config.certificates.certificates
    assert [s.sni_names for s in served] == [("a.test",), ("b.test",), ("c.test",)]
    assert served[1].key_path == combined


def test_one_cert_takes_its_key_in_either_order(tmp_path: Path) -> None:
    cert, key = _site(tmp_path, "a.test")
    config = configure(tmp_path, "--backend", BACKEND, "--key", key, "--cert", cert)
    assert config.certificates.default.key_path == Path(key)


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        (("key", "cert", "cert"), "comes before any --cert; with several certificates"),
        (("cert", "key", "key", "cert"), "has two keys"),
    ],
)
def test_keys_out_of_place_are_refused(
    tmp_path: Path, order: tuple[str, ...], expected: str
) -> None:
    a, b = _site(tmp_path, "a.test"), _site(tmp_path, "b.test")
    argv: list[str] = []
    certs, keys = iter([a[0], b[0]]), iter([a[1], b[1]])
    for flag in order:
        argv += [f"--{flag}", next(certs) if flag == "cert" else next(keys)]
    assert expected in refusal(tmp_path, "--backend", BACKEND, *argv)


def test_two_keys_for_one_cert_are_refused(tmp_path: Path) -> None:
    a, b = _site(tmp_path, "a.test"), _site(tmp_path, "b.test")
    message = refusal(tmp_path, "--backend", BACKEND, "--cert", a[0], "--key", a[1], "--key", b[1])
    assert message == "--key is given twice for one --cert; give one key per certificate"


def test_sni_default_and_strict_sni_reach_the_set(tmp_path: Path) -> None:
    a, b = _site(tmp_path, "a.test"), _site(tmp_path, "b.test")
    config = configure(
        tmp_path,
        *("--backend", BACKEND, "--cert", a[0], "--key", a[1], "--cert", b[0], "--key", b[1]),
        *("--sni-default", "B.test", "--strict-sni"),
    )
    assert config.certificates.default.sni_names == ("b.test",)
    assert config.certificates.strict
    assert config.certificates.index_for("nobody.test") is None


def test_bad_sni_default_is_refused(tmp_path: Path) -> None:
    a = _site(tmp_path, "a.test")
    argv = ["--cert", a[0], "--key", a[1], "--sni-default", "b.test"]
    message = refusal(tmp_path, "--backend", BACKEND, *argv)
    assert message.startswith("--sni-default b.test: no certificate covers that name")
    message = refusal(tmp_path, "--backend", BACKEND, "--sni-default", "not a name")
    assert message == "--sni-default 'not a name' is not a host name, e.g. example.com"


# --- --workers ---------------------------------------------------------------------------------


def test_workers_default_to_one_process(tmp_path: Path) -> None:
    """Without --workers, one process serves, as it always did; --workers 4 is kept."""
    assert configure(tmp_path, "--backend", BACKEND).workers == 1
    assert configure(tmp_path, "--backend", BACKEND, "--workers", "4").workers == 4


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("0", "--workers 0 is out of range; use 1-64"),
        ("65", "--workers 65 is out of range; use 1-64"),
        ("two", "--workers 'two' is not a whole number; e.g. --workers 2"),
        ("1.5", "--workers '1.5' is not a whole number"),
    ],
)
def test_bad_workers_are_explained(tmp_path: Path, value: str, says: str) -> None:
    """A --workers that is not a count of processes is one line naming it and the range."""
    assert says in refusal(tmp_path, "--backend", BACKEND, "--workers", value)

"""tlsproxy.tls.systemstore: which system store a machine has, and the commands for each.

Changing the Debian/Ubuntu store, always under a temporary root, is driven through the command
in tests/unit/tls/test_trust.py and tests/e2e/test_trust.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tlsproxy.tls.systemstore import DebianStore, find_program, system_commands, system_kind

CA_PATH = Path("/home/me/certs/ca.pem")
NAME = "tlsproxy-dev-ca-0123456789abcdef"
SHA1 = "AB" * 20


def commands(kind: str, *, uninstall: bool) -> str:
    """The by-hand commands for ``kind``, for the CA above."""
    return system_commands(kind, ca_path=CA_PATH, name=NAME, sha1=SHA1, uninstall=uninstall)


def test_system_kind_follows_the_platform_and_its_tools(tmp_path: Path) -> None:
    """macOS and Windows by platform; on Linux, Debian or Fedora by their tool or files."""

    def none(_: str) -> str | None:
        return None

    assert system_kind("darwin", none, tmp_path) == "macos"
    assert system_kind("win32", none, tmp_path) == "windows"
    assert system_kind("linux", none, tmp_path) == "unknown"
    fedora_tool = {"update-ca-trust": "/usr/bin/update-ca-trust"}.get
    assert system_kind("linux", fedora_tool, tmp_path) == "fedora"
    debian_tool = {"update-ca-certificates": "/usr/sbin/update-ca-certificates"}.get
    assert system_kind("linux", debian_tool, tmp_path) == "debian"
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "debian_version").write_text("13.0\n")
    assert system_kind("linux", none, tmp_path) == "debian"


def test_commands_by_hand_for_every_system_store() -> None:
    """Each system store has exact install and removal commands naming this CA."""
    assert commands("debian", uninstall=False) == (
        f"sudo install -D -m 644 {CA_PATH} /usr/local/share/ca-certificates/{NAME}.crt"
        " && sudo update-ca-certificates"
    )
    assert commands("debian", uninstall=True) == (
        f"sudo rm -f /usr/local/share/ca-certificates/{NAME}.crt"
        " && sudo update-ca-certificates --fresh"
    )
    assert commands("fedora", uninstall=False) == (
        f"sudo install -D -m 644 {CA_PATH} /etc/pki/ca-trust/source/anchors/{NAME}.pem"
        " && sudo update-ca-trust extract"
    )
    assert commands("macos", uninstall=False) == (
        "sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain "
        f"{CA_PATH}"
    )
    assert f"delete-certificate -Z {SHA1} " in commands("macos", uninstall=True)
    assert commands("windows", uninstall=False).startswith(
        f'certutil -addstore -f ROOT "{CA_PATH}"'
    )
    assert commands("windows", uninstall=True).startswith(f"certutil -delstore ROOT {SHA1}")
    unknown = commands("unknown", uninstall=False)
    assert "update-ca-certificates" in unknown
    assert "update-ca-trust" in unknown


def test_a_path_with_spaces_is_quoted() -> None:
    """A CA path with a space stays one argument in the printed shell command."""
    line = system_commands(
        "debian", ca_path=Path("/my certs/ca.pem"), name=NAME, sha1=SHA1, uninstall=False
    )

    assert line.startswith("sudo install -D -m 644 '/my certs/ca.pem' ")


def test_debian_store_paths_live_under_its_root(tmp_path: Path) -> None:
    """Under another root, the CA's copy, the links and the bundle are all below that root."""
    store = DebianStore(tmp_path, "update-ca-certificates")

    assert store.file(NAME) == tmp_path / f"usr/local/share/ca-certificates/{NAME}.crt"
    assert store.bundle == tmp_path / "etc/ssl/certs/ca-certificates.crt"
    assert not store.trusts(NAME, b"-----BEGIN CERTIFICATE-----\n")
    assert not store.bundles(b"-----BEGIN CERTIFICATE-----\n")


def test_store_tools_are_found_in_sbin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A PATH without sbin still finds update-ca-certificates where Debian puts it."""
    monkeypatch.setenv("PATH", str(tmp_path))

    found = find_program("update-ca-certificates")

    if not Path("/usr/sbin/update-ca-certificates").exists():
        pytest.skip("update-ca-certificates is not installed here")
    assert found == "/usr/sbin/update-ca-certificates"

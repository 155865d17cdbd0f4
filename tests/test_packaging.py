"""The package as users get it: a regular (non-editable) install, found by twistd."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TWISTD = "from twisted.scripts.twistd import run; run()"


@pytest.fixture(scope="module")
def installed_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding a wheel of this checkout, and the test run's dependencies.

    The dependencies come from this interpreter's site-packages through a path entry, which is
    not processed for ``.pth`` files: the editable install of the checkout stays invisible, so
    only the wheel can answer ``import tlsproxy`` and only its copy of the plugin can be found.
    """
    root = tmp_path_factory.mktemp("packaging")
    source = root / "src"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "*.egg-info", "build", "dist", "__pycache__", "certs", ".*_cache"
        ),
    )
    wheels = root / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
        check=True,
    )
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (wheel,) = wheels.glob("tlsproxy-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, str(wheel)],
        check=True,
    )
    return python


def test_wheel_holds_the_plugin_without_init_files(installed_python: Path) -> None:
    """The wheel installs twisted/plugins/tlsproxy_plugin.py and no __init__.py beside it."""
    site = Path(
        subprocess.run(
            [
                str(installed_python),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    assert (site / "twisted" / "plugins" / "tlsproxy_plugin.py").is_file()
    source_packages = {p.parent for p in (REPO / "tlsproxy").rglob("*.py")}
    for package in source_packages:  # every subpackage ships, not only those listed once
        assert (site / package.relative_to(REPO) / "__init__.py").is_file(), package
    assert not (site / "twisted" / "plugins" / "__init__.py").exists()
    assert not (site / "twisted" / "__init__.py").exists()


def test_twistd_finds_the_plugin_from_a_regular_install(
    installed_python: Path, tmp_path: Path
) -> None:
    """``twistd tlsproxy --help`` works from the wheel and lists every option with its default."""
    result = subprocess.run(
        [str(installed_python), "-c", TWISTD, "tlsproxy", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found = subprocess.run(
        [str(installed_python), "-c", "import tlsproxy; print(tlsproxy.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(REPO) not in found  # the wheel, not this checkout, answered
    entries = _help_entries(result.stdout)
    for option, default in [
        ("--backend", None),
        ("--port", "8443"),
        ("--listen", None),
        ("--interface", "127.0.0.1"),
        ("--cert", None),
        ("--key", None),
        ("--key-passphrase-file", None),
        ("--certs-dir", "certs"),
        ("--hostname", None),
        ("--backend-timeout", "60"),
        ("--connect-timeout", "5"),
        ("--idle-timeout", "60"),
        ("--header-timeout", "10"),
        ("--max-header-bytes", "65536"),
        ("--max-connections", "10000"),
        ("--access-log", None),
        ("--trusted-proxy", "none"),
    ]:
        assert option in entries, f"{option} missing from --help"
        if default is not None:
            assert f"[default: {default}" in entries[option], (option, entries[option])


def _help_entries(text: str) -> dict[str, str]:
    """``--flag`` → its help text, joined across wrapped lines."""
    entries: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("--"):
            current = stripped.split()[0].rstrip("=")
            entries[current] = stripped
        elif current is not None and stripped:
            entries[current] += " " + stripped
        else:
            current = None
    return {k: " ".join(v.split()) for k, v in entries.items()}


def test_twistd_lists_tlsproxy(installed_python: Path, tmp_path: Path) -> None:
    """The plugin is listed among twistd's commands, without importing the proxy itself."""
    result = subprocess.run(
        [str(installed_python), "-c", TWISTD, "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "tlsproxy" in result.stdout

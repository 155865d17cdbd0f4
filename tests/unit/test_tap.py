"""tlsproxy.tap: twistd's command line, its one-line errors, and the hand-over to a service."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import twisted.internet
from twisted.application.service import IService
from twisted.internet.testing import MemoryReactorClock

from tlsproxy import tap
from tlsproxy.tap import Options


@pytest.fixture
def reactor(monkeypatch: pytest.MonkeyPatch) -> MemoryReactorClock:
    """What ``from twisted.internet import reactor`` gives makeService, instead of a real one."""
    fake = MemoryReactorClock()
    monkeypatch.setitem(sys.modules, "twisted.internet.reactor", fake)
    monkeypatch.setattr(twisted.internet, "reactor", fake, raising=False)
    return fake


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def usage_error(*argv: str) -> str:
    """The SystemExit message for ``argv``, checked to be one line and non-zero."""
    with pytest.raises(SystemExit) as caught:
        parse(*argv)
    message = caught.value.code
    assert isinstance(message, str)  # a string exit code: printed, status 1
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--bogus"], "bogus"),
        (["--backend"], "backend"),
        (["--port"], "port"),
    ],
)
def test_usage_errors_are_one_line_naming_the_flag(argv: list[str], names: str) -> None:
    """A usage error exits non-zero with one line that names the flag and where help is,
    instead of twistd's pages of help."""
    message = usage_error(*argv)
    assert message.startswith("tlsproxy: error: ")
    assert names in message
    assert message.endswith("(see: twistd tlsproxy --help)")


def test_stray_argument_is_named() -> None:
    """A stray positional argument (``tlsproxy http://127.0.0.1:8000`` without --backend) is
    named in the one-line error, so the user sees what was not understood."""
    message = usage_error("http://127.0.0.1:8000")
    assert message.startswith("tlsproxy: error: ")
    assert "http://127.0.0.1:8000" in message


def test_repeatable_flags_collect_every_value() -> None:
    """--listen, --interface, --hostname and --trusted-proxy may be given more than once."""
    options = parse(
        "--listen",
        "tcp:1",
        "--listen",
        "unix:/s",
        "--interface",
        "::1",
        "--interface",
        "::2",
        "--hostname",
        "a",
        "--hostname",
        "b",
        "--trusted-proxy",
        "10.0.0.0/8",
        "--trusted-proxy",
        "::1",
    )
    assert options["listen"] == ["tcp:1", "unix:/s"]
    assert options["interface"] == ["::1", "::2"]
    assert options["hostname"] == ["a", "b"]
    assert options["trusted_proxy"] == ["10.0.0.0/8", "::1"]


def test_repeatable_flags_do_not_leak_between_parses() -> None:
    """Each Options starts with empty lists (no shared class-level default)."""
    parse("--listen", "tcp:1", "--hostname", "a")
    options = parse()
    assert options["listen"] == []
    assert options["hostname"] == []


@pytest.mark.parametrize(
    ("flag", "default"),
    [
        ("--port", "8443"),
        ("--certs-dir", "certs"),
        ("--backend-timeout", "60"),
        ("--connect-timeout", "5"),
        ("--idle-timeout", "60"),
        ("--header-timeout", "10"),
        ("--max-header-bytes", "65536"),
        ("--max-connections", "10000"),
        ("--interface", "127.0.0.1 and ::1"),
        ("--trusted-proxy", "none"),
    ],
)
def test_help_shows_each_default(flag: str, default: str) -> None:
    """--help lists each option with its default next to it."""
    entries = re.split(r"^ {6}(?=--)", str(Options()), flags=re.MULTILINE)
    [entry] = [e for e in entries if e.startswith(flag + "=")]
    assert f"[default: {default}]" in " ".join(entry.split())  # undo the line wrapping


def test_help_lists_every_option() -> None:
    """Every documented flag of the command line appears in --help."""
    help_text = str(Options())
    for flag in [
        "backend",
        "port",
        "interface",
        "listen",
        "cert",
        "key",
        "key-passphrase-file",
        "certs-dir",
        "hostname",
        "backend-timeout",
        "connect-timeout",
        "idle-timeout",
        "header-timeout",
        "max-header-bytes",
        "max-connections",
        "access-log",
        "trusted-proxy",
    ]:
        assert f"--{flag}=" in help_text


def test_bad_configuration_exits_2_with_one_line_on_stderr(
    reactor: MemoryReactorClock, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A value error found by config stops twistd with status 2 and one line, starting nothing."""
    options = parse("--backend", "ftp://127.0.0.1:8000", "--certs-dir", str(tmp_path / "c"))
    with pytest.raises(SystemExit) as caught:
        tap.makeService(options)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("tlsproxy: error: --backend 'ftp://127.0.0.1:8000'")
    assert err.count("\n") == 1
    assert reactor.tcpServers == []
    assert not (tmp_path / "c").exists()


def test_good_command_line_becomes_a_service_that_has_not_listened_yet(
    reactor: MemoryReactorClock, tmp_path: Path
) -> None:
    """makeService validates and builds the service; listening waits for twistd to start it."""
    options = parse("--backend", "http://127.0.0.1:8000", "--certs-dir", str(tmp_path / "c"))
    service = tap.makeService(options)
    assert IService.providedBy(service)
    assert reactor.tcpServers == []
    assert (tmp_path / "c").is_dir()


def test_workers_make_a_supervisor_that_passes_the_command_line_on(
    reactor: MemoryReactorClock, tmp_path: Path
) -> None:
    """--workers 2: the service is a supervisor whose workers get the same arguments; the
    default (1) stays the single proxy process of before."""
    from tlsproxy.service import ProxyService
    from tlsproxy.workers.supervisor import Supervisor

    argv = ["--backend", "http://127.0.0.1:8000", "--certs-dir", str(tmp_path / "c")]
    single = tap.makeService(parse(*argv))
    assert isinstance(single, ProxyService)
    supervisor = tap.makeService(parse(*argv, "--workers=2"))
    assert isinstance(supervisor, Supervisor)
    assert supervisor.pool.count == 2
    assert supervisor.arguments == [*argv, "--workers=2"]

"""The framework hints printed at startup are the ones the docs show."""

from __future__ import annotations

from pathlib import Path

from tlsproxy.frameworks import HINTS, hint_lines

DOC = Path(__file__).resolve().parents[2] / "docs" / "frameworks.md"


def test_docs_show_exactly_the_startup_lines() -> None:
    """docs/frameworks.md's block is what the banner prints for port 8443, line for line."""
    text = DOC.read_text()
    block = text.split("<!-- frameworks:start -->", 1)[1].split("<!-- frameworks:end -->", 1)[0]
    shown = [line for line in block.strip().strip("`").strip().splitlines() if line]
    assert shown == hint_lines(8443)


def test_port_is_filled_in() -> None:
    """The Vite line names the port the browser uses, whatever it is."""
    (vite,) = [line for line in hint_lines(9443) if line.startswith("Vite")]
    assert "clientPort: 9443" in vite
    assert all("{port}" not in line for line in hint_lines(9443))


def test_every_framework_has_one_line() -> None:
    """One line per framework, named first, so a user can find theirs at a glance."""
    lines = hint_lines(8443)
    assert len(lines) == len(HINTS)
    assert [line.split(":", 1)[0] for line in lines] == [hint.framework for hint in HINTS]

"""One check's outcome, and the report made of them: status words, fix lines, exit status.

Rules:

1. Every finding that is not ``ok`` carries a fix (for ``skipped``: what would let the check
   run, or why nothing is needed), so the report never leaves the reader with a bare complaint.
2. Only a ``problem`` fails the run: warnings are things that work through tlsproxy but will
   surprise some client, and skipped checks had nothing to look at.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

_T = TypeVar("_T")


class Status(enum.Enum):
    """How a check came out, worst last (the order the summary counts them in)."""

    OK = "ok"
    SKIPPED = "skipped"
    WARNING = "warning"
    PROBLEM = "problem"


@dataclass(frozen=True)
class Finding:
    """What one check found, in plain words, and what to do about it."""

    status: Status
    check: str  # a short name the reader can find again: "certificate names"
    detail: str
    fix: str = ""

    def __post_init__(self) -> None:
        if self.status is not Status.OK and not self.fix:
            raise ValueError(f"a {self.status.value} finding needs a fix: {self.check}")


def ok(check: str, detail: str) -> Finding:
    return Finding(Status.OK, check, detail)


def skipped(check: str, detail: str, fix: str) -> Finding:
    return Finding(Status.SKIPPED, check, detail, fix)


def warning(check: str, detail: str, fix: str) -> Finding:
    return Finding(Status.WARNING, check, detail, fix)


def problem(check: str, detail: str, fix: str) -> Finding:
    return Finding(Status.PROBLEM, check, detail, fix)


Report = Callable[[Finding], None]  # prints a finding as soon as it is known


def guarded(check: str, work: Callable[[], _T]) -> _T | Finding:
    """``work()``, or a problem line for ``check`` if it raises anything.

    One check's failure must not hide the others, and doctor prints a report, never a traceback.
    """
    try:
        return work()
    except Exception as exc:  # see the docstring: anything at all becomes this check's line
        return unexpected(check, exc)


def unexpected(check: str, exc: Exception) -> Finding:
    """The problem line for a check that failed in a way doctor did not foresee: a bug."""
    return problem(
        check,
        f"the check failed unexpectedly ({type(exc).__name__}: {exc})",
        "this is a bug in tlsproxy doctor: please report it with this line; the other checks "
        "still ran",
    )


_WIDTH = max(len(status.value) for status in Status) + 1


def render(findings: Sequence[Finding]) -> list[str]:
    """The report: one line per finding, its fix indented under it, then the summary."""
    return [*(line for finding in findings for line in finding_lines(finding)), summary(findings)]


def finding_lines(finding: Finding) -> list[str]:
    """``STATUS  check: detail``, and under it ``fix: ...`` when there is one."""
    lines = [f"{finding.status.value:<{_WIDTH}}{finding.check}: {finding.detail}"]
    if finding.fix:
        lines.append(f"{'':<{_WIDTH}}fix: {finding.fix}")
    return lines


def summary(findings: Sequence[Finding]) -> str:
    """One closing line: the counts, and whether tlsproxy should work as set up."""
    counts = dict.fromkeys(Status, 0)
    for finding in findings:
        counts[finding.status] += 1
    plural = {Status.PROBLEM: "problems", Status.WARNING: "warnings"}
    parts = []
    for status in reversed(Status):
        word = status.value if counts[status] == 1 else plural.get(status, status.value)
        parts.append(f"{counts[status]} {word}")
    if counts[Status.PROBLEM]:
        verdict = "fix the problems above"
    elif counts[Status.WARNING]:
        verdict = "tlsproxy will work; the warnings say which clients may still complain"
    else:
        verdict = "all good"
    return f"summary: {', '.join(parts)}: {verdict}"


def exit_status(findings: Sequence[Finding]) -> int:
    """0 when nothing is a problem (warnings allowed), 1 otherwise."""
    return 1 if any(finding.status is Status.PROBLEM for finding in findings) else 0

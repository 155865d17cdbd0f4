"""``python -m tlsproxy doctor``: check certificate, trust and backend, and say what to fix."""

from __future__ import annotations

from tlsproxy.doctor.command import run

__all__ = ["run"]

"""The one exception a user's mistake becomes: raised by every options module, caught by tap."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the flag and the fix, in one line."""

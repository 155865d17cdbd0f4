"""``python -m tlsproxy check-config ARGS…``: validate a command line as startup would, then exit.

Like ``nginx -t``: the same options, the same rules and the same messages as
``twistd tlsproxy ARGS…``, with nothing started. Certificates are loaded and checked; without
``--cert`` the development CA is made or reused exactly as startup would.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TextIO

from twisted.python import usage

from tlsproxy.config import build_config
from tlsproxy.configerror import ConfigError
from tlsproxy.tap import Options


def run(argv: list[str], *, out: TextIO, err: TextIO, now: datetime | None = None) -> int:
    """0 when ``argv`` would start, 2 with the one-line reason when it would not."""
    options = Options()
    try:
        options.parseOptions(argv)
    except SystemExit as stop:  # Options turns usage errors into one line; --help exits 0
        if stop.code in (None, 0):
            return 0
        print(stop.code, file=err)
        return 2
    except usage.UsageError as e:
        print(f"tlsproxy: error: {e}", file=err)
        return 2
    values = options.config_values()
    try:
        config = build_config(values, now=now or datetime.now(UTC))
    except ConfigError as e:
        print(f"tlsproxy: error: {e}", file=err)
        return 2
    print("configuration OK", file=out)
    print(f"  backend: {config.backend.url}", file=out)
    if config.workers > 1:
        print(f"  workers: {config.workers} processes", file=out)
    for route in config.routes:
        print(f"  route: {route.host} → {route.backend.url}", file=out)
    for listener in config.listeners:
        print(f"  listen: {listener.description} (TLS)", file=out)
    for listener in config.redirect_listeners:
        print(f"  listen: {listener.description} (plain HTTP, redirects to https)", file=out)
    certificates = config.certificates
    for line in certificates.describe():
        print(f"  {line}", file=out)
    for warning in certificates.all_warnings:
        print(f"  warning: {warning}", file=out)
    return 0

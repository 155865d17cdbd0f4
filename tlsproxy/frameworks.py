"""The one setting each web framework needs before it believes tlsproxy's forwarded headers.

Without it an app behind tlsproxy thinks it is served over plain HTTP: it builds ``http://``
links, refuses secure cookies and redirects to HTTPS forever. The same lines are printed at
startup and listed in docs/frameworks.md; a test keeps the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FrameworkHint:
    framework: str
    setting: str  # may contain {port}: the port the browser uses


HINTS = (
    FrameworkHint(
        "Django",
        'SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https"); '
        "USE_X_FORWARDED_HOST = True",
    ),
    FrameworkHint(
        "Flask/Werkzeug",
        "app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1, x_port=1)",
    ),
    FrameworkHint("Rails", "config.assume_ssl = true (Rails 7.1+; config.force_ssl for redirects)"),
    FrameworkHint("Express", 'app.set("trust proxy", "loopback")'),
    FrameworkHint("Uvicorn/FastAPI", "uvicorn --proxy-headers --forwarded-allow-ips 127.0.0.1"),
    FrameworkHint("Vite", "server: { hmr: { clientPort: {port} } } in vite.config"),
)


def hint_lines(port: int | str) -> list[str]:
    """One line per framework, for the startup banner and the docs."""
    return [f"{hint.framework}: {hint.setting.replace('{port}', str(port))}" for hint in HINTS]

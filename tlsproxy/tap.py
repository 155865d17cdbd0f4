"""twistd glue: command-line ``Options`` → a validated ``Config`` → the running service."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from typing import Any, ClassVar

from twisted.application.service import IService
from twisted.python import usage

from tlsproxy.config import Limits, build_config
from tlsproxy.configerror import ConfigError
from tlsproxy.listenoptions import DEFAULT_PORT

_LIMITS = Limits()


def _default(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


class Options(usage.Options):
    """``twistd tlsproxy`` options; every rule about their values lives in ``tlsproxy.config``."""

    synopsis = "[options] --backend URL"
    longdesc = (
        "HTTPS in front of a plain-HTTP app. Without --cert/--key, a development CA and a "
        "certificate for localhost are made in --certs-dir. Example: "
        "twistd -n tlsproxy --backend http://127.0.0.1:8000"
    )
    optParameters: ClassVar[list[list[str | None]]] = [
        [
            "backend",
            None,
            None,
            "URL of the app: http://host:port[/prefix], https://host[:port][/prefix] or "
            "unix:/path/to.sock (required); with --mode tcp: tcp://host:port or unix:/path.",
        ],
        [
            "backend-ca",
            None,
            None,
            "PEM CA certificate(s) that verify an https:// backend [default: the system store].",
        ],
        [
            "backend-server-name",
            None,
            None,
            "Name to send (SNI) and verify for an https:// backend [default: its URL's host].",
        ],
        [
            "client-ca",
            None,
            None,
            "PEM CA certificate(s) that sign client certificates: ask clients for one "
            "(mTLS; docs/mtls.md).",
        ],
        [
            "client-auth",
            None,
            None,
            "With --client-ca: required (no certificate, no connection) or optional "
            "[default: required].",
        ],
        ["port", None, str(DEFAULT_PORT), "TLS port on each --interface."],
        ["key-passphrase-file", None, None, "File holding the passphrase of an encrypted --key."],
        [
            "certs-dir",
            None,
            "certs",
            "Without --cert: the certificate/key pairs in it are served (by SNI name); with "
            "none, a development CA and certificate are made in it.",
        ],
        [
            "sni-default",
            None,
            None,
            "Serve the certificate for this name to clients that send no SNI name or an "
            "unknown one [default: the first --cert].",
        ],
        [
            "backend-timeout",
            None,
            _default(_LIMITS.backend_timeout),
            "Seconds the backend may go without progress (before its response head: 504).",
        ],
        [
            "connect-timeout",
            None,
            _default(_LIMITS.connect_timeout),
            "Seconds to open a connection to the backend (502 after).",
        ],
        [
            "idle-timeout",
            None,
            _default(_LIMITS.idle_timeout),
            "Seconds an idle client keep-alive connection stays open.",
        ],
        [
            "header-timeout",
            None,
            _default(_LIMITS.header_timeout),
            "Seconds a client has to send a complete request head (slowloris defence).",
        ],
        [
            "max-header-bytes",
            None,
            str(_LIMITS.max_header_bytes),
            "Largest request head accepted (431 above).",
        ],
        [
            "max-connections",
            None,
            str(_LIMITS.max_connections),
            "Most client connections open at once; more wait to be accepted.",
        ],
        ["access-log", None, None, "Combined Log Format access log: a file PATH, or - for stdout."],
        [
            "access-log-format",
            None,
            None,
            "combined (Combined Log Format) or json (a JSON object per line) [default: combined].",
        ],
        [
            "metrics-listen",
            None,
            None,
            "Serve Prometheus metrics at /metrics over plain HTTP on this Twisted endpoint, "
            "e.g. tcp:9100:interface=127.0.0.1 (docs/metrics.md) [default: none].",
        ],
        [
            "redirect-http",
            None,
            None,
            "Also listen for plain HTTP on this port (same --interface) and answer 308 to https.",
        ],
        ["hsts", None, None, "Add Strict-Transport-Security: max-age=SECONDS to every response."],
        [
            "drain-timeout",
            None,
            "30",
            "Seconds SIGTERM lets in-flight requests finish before cutting them off.",
        ],
        [
            "workers",
            None,
            "1",
            "Processes that serve the same listeners (one per CPU core; docs/workers.md).",
        ],
        [
            "mode",
            None,
            "http",
            "http: proxy HTTP requests; tcp: relay the decrypted bytes to a tcp://host:port or "
            "unix:/path backend (any protocol; docs/tcp-mode.md).",
        ],
        [
            "send-proxy-protocol",
            None,
            None,
            "With --mode tcp: send a PROXY protocol header (v1 or v2) naming the client first.",
        ],
        [
            "tunnel-idle-timeout",
            None,
            None,
            "Seconds a websocket, other upgraded connection or --mode tcp connection may stay "
            "silent [default: no limit].",
        ],
    ]

    optFlags: ClassVar[list[list[str | None]]] = [
        ["no-http2", None, "Offer only HTTP/1.1 (no h2 in ALPN)."],
        [
            "strict-sni",
            None,
            "Refuse TLS (alert unrecognized_name) to clients asking for a name no certificate "
            "covers, instead of serving the default certificate.",
        ],
        [
            "watch-certs",
            None,
            "Reload the certificate when its files change (e.g. certbot renewals), as SIGHUP does.",
        ],
        [
            "insecure-backend",
            None,
            "Do not verify an https:// backend's certificate (testing only; logged as a warning).",
        ],
        [
            "proxy-protocol",
            None,
            "Expect a PROXY protocol v1/v2 header (from a load balancer) before TLS; "
            "accepted only from --trusted-proxy addresses.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["listen"] = []
        self["interface"] = []
        self["hostname"] = []
        self["trusted_proxy"] = []
        self.arguments: list[str] = []  # as given, for --workers (see parseOptions)
        self["cert_files"] = []
        self["route"] = []

    def opt_route(self, rule: str) -> None:
        """HOST=BACKEND: requests for HOST (or *.DOMAIN) go to BACKEND instead of --backend; repeatable."""  # noqa: E501
        self["route"].append(rule)

    def opt_cert(self, path: str) -> None:
        """PEM certificate (its chain may follow; may hold the key too); repeatable: one per site, chosen by SNI name, the first is the default."""  # noqa: E501
        self["cert_files"].append(("cert", path))

    def opt_key(self, path: str) -> None:
        """PEM private key for the --cert before it [default: look in the --cert file]."""
        self["cert_files"].append(("key", path))

    def opt_listen(self, description: str) -> None:
        """Twisted endpoint to listen on, e.g. tcp:8443:interface=0.0.0.0, tcp6:, unix:PATH (TLS added by tlsproxy); repeatable; replaces --port/--interface."""  # noqa: E501
        self["listen"].append(description)

    def opt_interface(self, address: str) -> None:
        """Address to listen on; repeatable [default: 127.0.0.1 and ::1]."""
        self["interface"].append(address)

    def opt_hostname(self, name: str) -> None:
        """Extra name (or IP) for the development certificate; repeatable."""
        self["hostname"].append(name)

    def opt_trusted_proxy(self, cidr: str) -> None:
        """Address range whose X-Forwarded-*/Forwarded headers are believed; repeatable [default: none]."""  # noqa: E501
        self["trusted_proxy"].append(cidr)

    def config_values(self) -> dict[str, Any]:
        """The parsed options as ``build_config`` takes them (``key-passphrase-file`` →
        ``key_passphrase_file``)."""
        return {name.replace("-", "_"): value for name, value in self.items()}

    def parseArgs(self, *args: str) -> None:
        if args:
            hint = " (did you mean --backend?)" if "://" in args[0] else ""
            raise usage.UsageError(f"unexpected argument {args[0]!r}{hint}")

    def parseOptions(self, options: Any = None) -> None:
        # --workers: each worker parses these same arguments (tlsproxy.workers).
        self.arguments = list(sys.argv[1:] if options is None else options)
        # twistd answers a usage error with pages of help; one line that names the flag is kinder.
        try:
            super().parseOptions(options)  # type: ignore[no-untyped-call]
        except usage.UsageError as e:
            raise SystemExit(f"tlsproxy: error: {e} (see: twistd tlsproxy --help)") from None


def makeService(options: Options) -> IService:
    # Imported here, not at the top: twistd imports this module for --help (the plugin is lazy),
    # and installing the reactor belongs to twistd, before makeService runs.
    from twisted.internet import reactor  # noqa: PLC0415

    from tlsproxy.service import build_service  # noqa: PLC0415

    try:
        values = options.config_values()
        config = build_config(values, now=datetime.now(UTC), environ=os.environ)
    except ConfigError as e:
        print(f"tlsproxy: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if config.workers > 1:
        from tlsproxy.workers.supervisor import build_supervisor  # noqa: PLC0415

        return build_supervisor(
            config,
            reactor=reactor,
            arguments=options.arguments,
            environ=os.environ,
            cwd=os.getcwd(),
        )
    return build_service(config, reactor=reactor)

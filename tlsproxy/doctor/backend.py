"""The backend as tlsproxy reaches it: which addresses answer, and how it answers a request
forwarded from HTTPS. Decisions only: the sockets are in ``tlsproxy.doctor.backendprobe`` and
``tlsproxy.doctor.tlschannel``.

Rules:

1. Addresses are probed as tlsproxy uses them: ``localhost`` is 127.0.0.1 and ::1 (tlsproxy
   tries both); a name is resolved, both families; a loopback literal also probes the other
   loopback, because a dev server bound to ::1 only is the usual reason 127.0.0.1 refuses.
   An ``https://`` backend is probed the same way (its TLS is judged by
   ``tlsproxy.doctor.backendtls``); a ``unix:`` one has a socket file instead of addresses
   (``tlsproxy.doctor.socketfile``).
2. Every network step is bounded: resolving and connecting 2 s, the TLS handshake 3 s, the
   response head 3 s.
3. The request is the one tlsproxy forwards for ``https://localhost:PORT/`` (its headers are
   built by ``tlsproxy.http.headers``), so the answer is the one a browser would get; it goes
   over the transport tlsproxy would use (TCP, TLS over TCP, or the unix socket).
4. The redirect-loop signature: a redirect to the same page on ``https://`` (the app believes it
   was reached over plain HTTP and sends the browser back to where it already is) or to
   ``http://`` on the same host.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from tlsproxy.backend import BackendAddress
from tlsproxy.doctor.finding import Finding, ok, problem, skipped, warning
from tlsproxy.http.headers import ClientInfo, check_request_head

CONNECT_TIMEOUT = 2.0
HANDSHAKE_TIMEOUT = 3.0
READ_TIMEOUT = 3.0
RESOLVE_TIMEOUT = 2.0

ADDRESS = "backend address"
IPV4 = "backend over IPv4"
IPV6 = "backend over IPv6"
TLS = "backend TLS"
FORWARDED = "forwarded HTTPS request"

_LOOPBACKS = ("127.0.0.1", "::1")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

# From docs/headers.md: the one setting each framework needs to believe X-Forwarded-Proto.
FRAMEWORK_SETTINGS = {
    "Django": 'SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") and '
    "USE_X_FORWARDED_HOST = True",
    "Flask": "app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1, x_port=1)",
    "Rails": "config.assume_ssl = true (Rails 7.1+)",
    "Express": 'app.set("trust proxy", "loopback")',
    "Uvicorn": "uvicorn --proxy-headers --forwarded-allow-ips 127.0.0.1",
}


# --- which addresses -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The addresses to probe: those tlsproxy uses, in its order, and those that only explain."""

    used: tuple[str, ...]
    extra: tuple[str, ...] = ()


def plan_addresses(backend: BackendAddress, resolve: Callable[[str, int], list[str]]) -> Plan:
    """Rule 1; ``resolve`` (host, port) → addresses is called only for a DNS name."""
    host = backend.host
    if host.lower().rstrip(".") == "localhost":
        return Plan(used=_LOOPBACKS)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return Plan(used=tuple(dict.fromkeys(resolve(host, backend.port))))
    address = str(ip)
    if address in _LOOPBACKS:
        return Plan(used=(address,), extra=tuple(a for a in _LOOPBACKS if a != address))
    return Plan(used=(address,))


def _version(address: str) -> int:
    return ipaddress.ip_address(address).version


def host_port(address: str, port: int) -> str:
    """``127.0.0.1:8000`` or ``[::1]:8000``."""
    return f"[{address}]:{port}" if _version(address) == 6 else f"{address}:{port}"


def backend_url(backend: BackendAddress, host: str) -> str:
    """The ``--backend`` (and, for https, the name to keep checking) that connects to ``host``.

    An https backend verifies its certificate for the URL's host, so naming an address instead
    keeps the name it had with ``--backend-server-name``.
    """
    port = backend.port
    authority = f"localhost:{port}" if host == "localhost" else host_port(host, port)
    prefix = backend.path_prefix.decode("ascii")
    if backend.tls is None:
        return f"http://{authority}{prefix}"
    url = f"https://{authority}{prefix}"
    name = backend.tls.server_name
    return url if name == host else f"{url} --backend-server-name {name}"


def reachability_findings(
    backend: BackendAddress, plan: Plan, probes: Mapping[str, str | None]
) -> list[Finding]:
    """One finding per IP family; ``probes`` maps each address to None (connected) or why not."""
    return [
        _family_finding(backend, plan, probes, version, check)
        for version, check in ((4, IPV4), (6, IPV6))
    ]


def _family_finding(
    backend: BackendAddress,
    plan: Plan,
    probes: Mapping[str, str | None],
    version: int,
    check: str,
) -> Finding:
    port, host = backend.port, backend.host
    used = [a for a in plan.used if _version(a) == version]
    extra = [a for a in plan.extra if _version(a) == version]
    answering = [a for a in plan.used if probes.get(a) is None]
    family = f"IPv{version}"
    if used:
        if any(probes.get(a) is None for a in used):
            first = next(a for a in used if probes.get(a) is None)
            return ok(check, f"{host_port(first, port)} accepts connections")
        failures = ", ".join(f"{host_port(a, port)} ({probes.get(a)})" for a in used)
        if answering:
            return _other_family_only(backend, failures, answering[0], version, check)
        extra_answering = [a for a in plan.extra if probes.get(a) is None]
        if extra_answering:
            other = extra_answering[0]
            fix = (
                f"your app listens only on {host_port(other, port)}: use --backend "
                f"{backend_url(backend, other)} (or {backend_url(backend, 'localhost')}, which "
                f"tries both), or bind the app to {used[0]} too"
            )
        else:
            fix = f"start your app, or correct the host and port in --backend {backend.url}"
        return problem(check, f"nothing accepts connections at {failures}", fix)
    if extra:
        other_version = 6 if version == 4 else 4
        also = (
            f"the app answers on {host_port(extra[0], port)} too"
            if probes.get(extra[0]) is None
            else f"nothing answers on {host_port(extra[0], port)} either"
        )
        return skipped(
            check,
            f"not used: --backend names {host}, so tlsproxy connects over "
            f"IPv{other_version} only ({also})",
            f"nothing to do; --backend {backend_url(backend, 'localhost')} would use both",
        )
    if plan.used and all(_version(a) != version for a in plan.used):
        return skipped(
            check,
            f"not used: {host} has no {family} address",
            "nothing to do: tlsproxy connects to the addresses it has",
        )
    return skipped(check, f"{host} has no address at all", "check the name in --backend")


def _other_family_only(
    backend: BackendAddress, failures: str, answering: str, version: int, check: str
) -> Finding:
    port = backend.port
    only = host_port(answering, port)
    if backend.host.lower().rstrip(".") == "localhost":
        if _version(answering) == 4:
            why = (
                "localhost resolves to ::1 first in browsers and Node 17+, and your app listens "
                f"only on {only}"
            )
        else:
            why = (
                f"your app listens only on {only} (Node 17+ servers such as Vite bind "
                "localhost to ::1), so tools that use 127.0.0.1 cannot reach it"
            )
        return warning(
            check,
            f"nothing accepts connections at {failures}: {why}; tlsproxy tries both, so it "
            "works through the proxy, but not for everything that opens localhost directly",
            f"bind your app to both 127.0.0.1 and ::1, or use --backend "
            f"{backend_url(backend, answering)}",
        )
    return warning(
        check,
        f"{backend.host} resolves to {failures}, where nothing answers; tlsproxy falls back "
        f"to {host_port(answering, port)}, after a failed attempt each time it connects",
        f"make the app listen on every address {backend.host} resolves to, or give --backend "
        f"{backend_url(backend, answering)}",
    )


# --- the forwarded request -------------------------------------------------------------------


def public_host(port: int) -> str:
    """The Host a browser sends for https://localhost:PORT/ (no port for 443)."""
    return "localhost" if port == 443 else f"localhost:{port}"


def forwarded_request(backend: BackendAddress, port: int) -> bytes:
    """The request tlsproxy forwards for ``GET https://localhost:PORT/`` from 127.0.0.1."""
    client = ClientInfo.for_peer("127.0.0.1", port, ())
    head = check_request_head(
        [
            (b"Host", public_host(port).encode("ascii")),
            (b"User-Agent", b"tlsproxy-doctor"),
            (b"Accept", b"text/html,*/*;q=0.8"),
        ],
        client,
        http10=False,
    )
    target = backend.path_prefix + b"/"
    return b"GET %s HTTP/1.1\r\n%sConnection: close\r\n\r\n" % (target, head.lines)


@dataclass(frozen=True)
class ResponseHead:
    """A response's status line and header fields (names as sent)."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        """The first value of ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


def parse_response_head(data: bytes) -> ResponseHead:
    """The final response head in ``data`` (1xx heads before it skipped); ValueError if none."""
    while True:
        head, separator, data = data.partition(b"\r\n\r\n")
        if not separator:
            raise ValueError("the answer ended before a complete response head")
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/") or len(code) != 3 or not code.isdigit():
            raise ValueError(f"the answer is not HTTP (it starts {lines[0][:40]!r})")
        if not 100 <= int(code) < 200:
            break
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers.append((name.strip(), value.strip()))
    return ResponseHead(int(code), reason, tuple(headers))


def forwarded_finding(response: ResponseHead, *, backend: BackendAddress, port: int) -> Finding:
    """Judge the backend's answer to the forwarded request (rule 4)."""
    target = (backend.path_prefix + b"/").decode("ascii")
    url = f"https://{public_host(port)}/"
    said = f"answers {response.status} {response.reason}".rstrip()
    location = response.header("Location")
    if response.status in _REDIRECTS and location:
        verdict = redirect_verdict(location, port=port, target=target)
        if verdict == "loop":
            return problem(
                FORWARDED,
                f"{said} with Location: {location} for {url}: a redirect loop. The app does not "
                "believe X-Forwarded-Proto: https, thinks the request came over plain HTTP and "
                "sends the browser back to the page it asked for",
                framework_fix(response),
            )
        if verdict == "http":
            return problem(
                FORWARDED,
                f"{said} with Location: {location} for {url}: the app sends https visitors to "
                "http://, so it does not believe X-Forwarded-Proto: https",
                framework_fix(response),
            )
        if verdict == "port":
            return warning(
                FORWARDED,
                f"{said} with Location: {location} for {url}: the same page on another port, so "
                "the app ignores X-Forwarded-Host/X-Forwarded-Port",
                framework_fix(response),
            )
        return ok(FORWARDED, f"{said} to {location} for {url} (a redirect elsewhere, no loop)")
    if response.status >= 500:
        return warning(
            FORWARDED,
            f"{said} to GET {url} (sent as tlsproxy forwards it)",
            "look at the app's log for the error; doctor sent what tlsproxy would send",
        )
    return ok(FORWARDED, f"{said} to GET {url} (no redirect loop)")


def redirect_verdict(location: str, *, port: int, target: str = "/") -> str:
    """What a redirect from https://localhost:PORT{target} to ``location`` means.

    ``"loop"``: the same page over https; ``"http"``: the same host over http; ``"port"``: the
    same page over https on another port; ``"elsewhere"``: anything else.
    """
    base = f"https://{public_host(port)}{target}"
    try:
        parts = urlsplit(urljoin(base, location.strip()))
        if parts.hostname is None:
            return "elsewhere"
        host, scheme = parts.hostname.lower(), parts.scheme.lower()
        effective_port = parts.port or {"https": 443, "http": 80}.get(scheme)
    except ValueError:  # an unparseable port or host
        return "elsewhere"
    if host != "localhost":
        return "elsewhere"
    if scheme == "http":
        return "http"
    if scheme != "https" or (parts.path or "/") not in {target, "/"}:
        return "elsewhere"
    return "loop" if effective_port == port else "port"


def framework_fix(response: ResponseHead) -> str:
    """The setting that makes the app believe the forwarded headers, for the framework it runs."""
    server = (response.header("Server") or "").lower()
    powered = (response.header("X-Powered-By") or "").lower()
    if "express" in powered:
        names = ["Express"]
    elif "werkzeug" in server:
        names = ["Flask"]
    elif "wsgiserver" in server:
        names = ["Django"]
    elif "uvicorn" in server:
        names = ["Uvicorn"]
    else:
        names = ["Django", "Flask", "Rails", "Express"]
    settings = "; ".join(f"{name}: {FRAMEWORK_SETTINGS[name]}" for name in names)
    return f"make the app trust tlsproxy's forwarded headers. {settings} (docs/headers.md)"


def head_complete(data: bytes) -> bool:
    """Whether ``data`` holds a whole final response head (the reading can stop)."""
    try:
        parse_response_head(data)
    except ValueError:
        return False
    return True


def no_answer_finding(backend: BackendAddress, *, where: str, reason: str) -> Finding:
    """The forwarded request reached ``where`` but no HTTP response head came back."""
    if backend.socket_path is not None:
        fix = (
            "check that the socket is your app's HTTP socket (not, say, a database's or a "
            "FastCGI/uwsgi one) and that the app is not stuck"
        )
    elif backend.tls is not None:
        fix = "check that the app behind this TLS port speaks HTTP/1.1 and is not stuck"
    else:
        fix = (
            "check that --backend points at your app's plain-HTTP port (for an https one, "
            "use an https:// --backend) and that the app is not stuck"
        )
    return problem(
        FORWARDED,
        f"{where} accepted the connection but gave no HTTP answer to GET /: {reason}",
        fix,
    )


def first_answering(plan: Plan, probes: Mapping[str, str | None]) -> str | None:
    """The address tlsproxy would end up using: the first of its own that accepted."""
    return next((a for a in plan.used if probes.get(a) is None), None)

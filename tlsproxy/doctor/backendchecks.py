"""The backend checks in the order a request meets them: each network step, then its finding.

Rules:

1. ``http://`` and ``https://``: the addresses, one finding per IP family; for https, the TLS
   handshake with the address tlsproxy would use; then the forwarded request, over that same
   TLS connection. ``unix:``: the socket file, then the forwarded request over it.
2. A check that cannot run because the step before failed is skipped, saying which step.
3. A step that raises what doctor did not foresee becomes that check's problem line (and the
   checks that depend on it are skipped).

The sockets are in ``backendprobe`` and ``tlschannel``; the verdicts in ``backend``,
``backendtls`` and ``socketfile``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime

from tlsproxy.backend import BackendAddress
from tlsproxy.doctor import backendprobe, tlschannel
from tlsproxy.doctor.backend import (
    ADDRESS,
    FORWARDED,
    HANDSHAKE_TIMEOUT,
    TLS,
    first_answering,
    forwarded_finding,
    forwarded_request,
    host_port,
    no_answer_finding,
    parse_response_head,
    plan_addresses,
    reachability_findings,
)
from tlsproxy.doctor.backendtls import (
    Handshake,
    Outcome,
    handshake_finding,
    handshake_timeout_finding,
)
from tlsproxy.doctor.finding import Finding, Report, guarded, problem, skipped
from tlsproxy.doctor.socketfile import socket_finding


def backend_checks(backend: BackendAddress, port: int, *, now: datetime, report: Report) -> None:
    """Run the backend checks for ``--backend``, reporting each finding as it is known."""
    if backend.socket_path is not None:
        _unix_checks(backend, backend.socket_path, port, report=report)
        return
    try:
        plan = plan_addresses(backend, backendprobe.resolve)
    except OSError as exc:
        report(
            problem(
                ADDRESS,
                f"cannot resolve {backend.host} ({exc.strerror or exc})",
                f"check the host in --backend {backend.url}, or give an IP address",
            )
        )
        report(skipped(FORWARDED, "the backend has no address", "fix it first"))
        return
    probes = {a: backendprobe.probe(a, backend.port) for a in (*plan.used, *plan.extra)}
    for finding in reachability_findings(backend, plan, probes):
        report(finding)
    address = first_answering(plan, probes)
    if address is None:
        unreachable = ("the backend is not reachable", "make it reachable first (above)")
        if backend.tls is not None:
            report(skipped(TLS, *unreachable))
        report(skipped(FORWARDED, *unreachable))
        return
    where = host_port(address, backend.port)
    if backend.tls is None:
        report(
            guarded(
                FORWARDED,
                lambda: _forwarded(
                    backend, port, where, lambda: backendprobe.connect_tcp(address, backend.port)
                ),
            )
        )
        return
    _tls_checks(backend, address, port, now=now, report=report)


def _tls_checks(
    backend: BackendAddress, address: str, port: int, *, now: datetime, report: Report
) -> None:
    """Rule 1 for https: the handshake, then the request over the same connection."""
    tls = backend.tls
    assert tls is not None
    where = host_port(address, backend.port)
    try:
        channel = tlschannel.connect_tls(address, backend.port, tls)
    except OSError as exc:
        report(
            problem(
                TLS,
                f"{where} accepted a connection a moment ago, but not now ({_reason(exc)})",
                "check that the app is not restarting or overloaded, then run doctor again",
            )
        )
        report(skipped(FORWARDED, "no connection to the backend", "fix the backend TLS first"))
        return
    with contextlib.closing(channel):
        done = guarded(TLS, lambda: _handshake(channel, where))
        if isinstance(done, Handshake):
            handshake: Handshake = done
            report(
                guarded(
                    TLS,
                    lambda: handshake_finding(handshake, backend=backend, where=where, now=now),
                )
            )
        else:  # it timed out, or failed in a way doctor did not foresee
            report(done)
        if not isinstance(done, Handshake) or done.outcome not in _USABLE:
            report(
                skipped(
                    FORWARDED,
                    "the TLS handshake failed, so tlsproxy cannot send the backend a request",
                    "fix the backend TLS first (above)",
                )
            )
            return
        report(guarded(FORWARDED, lambda: _forwarded(backend, port, where, lambda: channel)))


_USABLE = (Outcome.VERIFIED, Outcome.UNVERIFIED)


def _handshake(channel: tlschannel.TLSChannel, where: str) -> Handshake | Finding:
    try:
        return channel.handshake(HANDSHAKE_TIMEOUT)
    except TimeoutError:
        return handshake_timeout_finding(where=where, seconds=HANDSHAKE_TIMEOUT)


def _unix_checks(backend: BackendAddress, path: str, port: int, *, report: Report) -> None:
    """Rule 1 for unix: the socket file, then the request over a connection to it."""
    found = guarded(ADDRESS, lambda: backendprobe.inspect_socket(path))
    if isinstance(found, Finding):
        report(found)
        accepting = False
    else:
        report(socket_finding(found))
        accepting = found.kind == "socket" and found.connect is None
    if not accepting:
        report(
            skipped(
                FORWARDED,
                "the socket does not accept connections",
                "fix the backend address first (above)",
            )
        )
        return
    report(
        guarded(
            FORWARDED,
            lambda: _forwarded(backend, port, path, lambda: backendprobe.connect_unix(path)),
        )
    )


def _forwarded(
    backend: BackendAddress,
    port: int,
    where: str,
    connect: Callable[[], backendprobe.Channel],
) -> Finding:
    """Send the forwarded request over the connection ``connect`` gives, and judge the answer."""
    request = forwarded_request(backend, port)
    try:
        channel = connect()
        with contextlib.closing(channel):
            data = backendprobe.fetch_head(channel, request)
        response = parse_response_head(data)
    except (OSError, ValueError) as exc:
        return no_answer_finding(backend, where=where, reason=_reason(exc))
    return forwarded_finding(response, backend=backend, port=port)


def _reason(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)

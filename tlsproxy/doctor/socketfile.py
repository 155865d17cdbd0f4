"""A ``unix:`` backend's socket file: is it there, is it a socket, may we connect, does anyone?

Rules:

1. One finding, the first thing in the way: a path that cannot be looked into (a directory
   above it refuses), no file there, a file that is not a socket, then the connection (refused:
   nothing listening; permission denied: the socket's mode). Each says who can fix it.
2. Doctor runs as one user and tlsproxy may run as another (systemd ``User=``): a permission
   finding names the user doctor ran as, so the reader can tell whether it is the same one.
3. The facts are gathered by ``tlsproxy.doctor.backendprobe.inspect_socket``; nothing here
   touches the file system.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from tlsproxy.doctor.backend import ADDRESS
from tlsproxy.doctor.finding import Finding, ok, problem

REFUSED = "refused"
DENIED = "denied"

_APP_BINDS = "e.g. gunicorn --bind unix:{path}, uvicorn --uds {path}"
_OTHER_USER = (
    "if tlsproxy runs as another user, run doctor as that one "
    "(`sudo -u USER python -m tlsproxy doctor ...`)"
)


@dataclass(frozen=True)
class Owner:
    """A file's mode and owner, as ``ls -l`` shows them."""

    mode: str  # "srw-rw----"
    user: str
    group: str

    def __str__(self) -> str:
        return f"{self.mode} {self.user}:{self.group}"


@dataclass(frozen=True)
class SocketFile:
    """What doctor found at a ``unix:`` backend's path, and what connecting to it said."""

    path: str
    user: str  # who doctor runs as
    kind: str | None = None  # "socket", "regular file", "directory", ...; None: nothing there
    owner: Owner | None = None  # of the file, when there is one
    blocked: str | None = None  # a directory above the path that doctor may not search
    blocked_owner: Owner | None = None  # ...and its mode and owner, when doctor could see them
    missing_directory: str | None = None  # the first directory on the path that does not exist
    sockets_nearby: tuple[str, ...] = ()  # other socket files in the same directory
    connect: str | None = None  # None: accepted; REFUSED, DENIED, or why not in words


def socket_finding(found: SocketFile) -> Finding:
    """The address check for a ``unix:`` backend (rule 1)."""
    path, user = found.path, found.user
    flag = f"--backend unix:{path}"
    if found.blocked is not None:
        directory, owner = found.blocked, found.blocked_owner
        if owner is None:
            who, fix = "", "its owner (or root) can let the user tlsproxy runs as search it"
        else:
            who = f" ({owner})"
            fix = (
                f"{owner.user} (or root) can let the user tlsproxy runs as through: "
                f"`chmod g+x {directory}` and add that user to group {owner.group} "
                f"(`sudo usermod -aG {owner.group} USER`), or run tlsproxy as {owner.user}"
            )
        return problem(
            ADDRESS,
            f"permission denied: {user} may not look inside {directory}{who}, so cannot reach "
            f"{path}",
            f"{fix}. doctor ran as {user}: {_OTHER_USER}",
        )
    if found.kind is None:
        if found.missing_directory is not None:
            where = f"the directory {found.missing_directory} does not exist"
        else:
            where = f"no file by that name in {posixpath.dirname(path)}"
            if found.sockets_nearby:
                where += f" (the socket files there: {', '.join(found.sockets_nearby)})"
        return problem(
            ADDRESS,
            f"no socket at {path}: {where}",
            f"start your app (it creates the socket when it starts), or correct the path in "
            f"{flag} to the one the app binds ({_APP_BINDS.format(path=path)})",
        )
    if found.kind != "socket":
        inside = (
            f"; if the app makes its socket in this directory, name the file, e.g. "
            f"--backend unix:{posixpath.join(path, 'app.sock')}"
            if found.kind == "directory"
            else ""
        )
        return problem(
            ADDRESS,
            f"{path} is a {found.kind}, not a socket",
            f"give --backend unix: the path of the socket your app listens on "
            f"({_APP_BINDS.format(path='PATH')}){inside}",
        )
    mode = f" ({found.owner})" if found.owner is not None else ""
    if found.connect is None:
        return ok(ADDRESS, f"{path} is a socket{mode} and accepts connections")
    if found.connect == REFUSED:
        return problem(
            ADDRESS,
            f"{path} is a socket{mode}, but nothing is listening on it (connection refused): "
            "the app that made it has stopped and left the file behind",
            f"start your app; most remove a stale socket file and bind again (if it says the "
            f"address is in use, delete {path} first)",
        )
    if found.connect == DENIED:
        return problem(
            ADDRESS,
            f"permission denied: {user} may not connect to {path}{mode}; connecting needs "
            "write permission on the socket file",
            _denied_fix(found),
        )
    return problem(
        ADDRESS,
        f"{path} is a socket{mode}, but connecting failed: {found.connect}",
        "check that the app is running and not overloaded (its listen queue is full when "
        "connecting times out)",
    )


def _denied_fix(found: SocketFile) -> str:
    """Who can fix a socket doctor may not write to, and how (rule 2)."""
    owner = found.owner
    if owner is None:
        return f"make {found.path} writable by the user tlsproxy runs as"
    return (
        f"{owner.user} (the socket's owner, through the app's settings) or root can fix it: "
        f"have the app create the socket group-writable (e.g. gunicorn --umask 007, or "
        f"UMask=0007 in its systemd unit) and add the user tlsproxy runs as to group "
        f"{owner.group} (`sudo usermod -aG {owner.group} USER`), or run tlsproxy as "
        f"{owner.user}. doctor ran as {found.user}: {_OTHER_USER}"
    )

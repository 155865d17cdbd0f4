"""The request target sent to the backend (RFC 9112 §3.2), as a pure function.

Rules:

1. Origin-form (``/path?query``) passes byte for byte; with a ``--backend`` path prefix it is
   appended to the prefix, and then dot segments (``/../``, ``/./``, percent-encoded, behind
   ``;params`` or backslashes) and fragments are refused: some backend would resolve them to
   paths outside the prefix.
2. Absolute-form (``http://host/path``) must name the same authority as ``Host``; it is sent
   in origin-form, since many app servers understand nothing else.
3. Asterisk-form (``*``) only with OPTIONS, never prefixed. Anything else is refused.
"""

from __future__ import annotations

import re

from tlsproxy.http.headers import HeadRejected

_ABSOLUTE = re.compile(rb"^https?://([^/?#]*)([^#]*)$", re.IGNORECASE)


def _escapes_prefix(path: bytes) -> bool:
    """Whether some backend could read ``path`` as climbing above where it starts.

    Read as the most lenient backends do: percent-decoded dots and slashes, backslashes as
    slashes (Windows servers), ``;params`` cut off segments (Tomcat, Jetty).
    """
    lenient = path.lower()
    for encoded, plain in ((b"%2e", b"."), (b"%2f", b"/"), (b"%5c", b"/"), (b"\\", b"/")):
        lenient = lenient.replace(encoded, plain)
    return any(segment.split(b";", 1)[0] in (b".", b"..") for segment in lenient.split(b"/"))


def backend_target(target: bytes, *, method: bytes, host: bytes | None, prefix: bytes) -> bytes:
    """What to put in the request line to the backend; raise :class:`HeadRejected` if nothing."""
    if target[:1] == b"/":
        if not prefix:
            return target
        if b"#" in target:  # not part of any request target (RFC 9112 §3.2); some servers cut it
            raise HeadRejected(400, "a request target cannot carry a #fragment")
        if _escapes_prefix(target.split(b"?", 1)[0]):
            raise HeadRejected(400, "dot segments in the path would leave the --backend prefix")
        return prefix + target
    if target == b"*":
        if method != b"OPTIONS":
            raise HeadRejected(400, "the asterisk target is only for OPTIONS")
        return target
    absolute = _ABSOLUTE.match(target)
    if absolute is None:
        raise HeadRejected(400, "request target is neither a path nor an absolute URL")
    authority, rest = absolute.groups()
    if host is None or authority.lower() != host.lower():
        raise HeadRejected(400, "the absolute URL names another host than the Host header")
    if rest[:1] != b"/":
        rest = b"/" + rest
    return backend_target(rest, method=method, host=host, prefix=prefix)

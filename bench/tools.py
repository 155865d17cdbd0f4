"""The external programs the bench drives, found on PATH or installed with apt-get."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# Program (or file) -> Debian package that provides it.
PROGRAMS: dict[str, str] = {
    "nginx": "nginx",
    "wrk": "wrk",
    "openssl": "openssl",
    "curl": "curl",
    "taskset": "util-linux",
    "h2load": "nghttp2-client",  # the HTTP/2 load generator (the h2 keep-alive scenario)
}
# The backend's upload sink reads every body byte with ngx.req.socket(); nginx's own
# `return 200` answers before the body is read and discards the rest, which would let a
# proxy skip the upload it is supposed to be measured on.
LUA_MODULE_DIR = Path("/usr/lib/nginx/modules")
LUA_MODULES: dict[str, str] = {
    "ndk_http_module.so": "libnginx-mod-http-ndk",
    "ngx_http_lua_module.so": "libnginx-mod-http-lua",
}


@dataclass(frozen=True)
class Tools:
    """Absolute paths of the programs the bench runs."""

    nginx: str
    wrk: str
    openssl: str
    curl: str
    taskset: str
    h2load: str
    nginx_modules: Path


def _missing() -> list[str]:
    packages = [pkg for prog, pkg in PROGRAMS.items() if shutil.which(prog) is None]
    packages += [pkg for so, pkg in LUA_MODULES.items() if not (LUA_MODULE_DIR / so).exists()]
    return sorted(set(packages))


def ensure_tools(*, install: bool) -> Tools:
    """Find every program, installing the missing ones with apt-get when allowed and possible."""
    missing = _missing()
    if missing and install and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing with apt-get: {' '.join(missing)}", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=False, env=env, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", *missing], check=False, env=env, timeout=900
        )
        missing = _missing()
    if missing:
        raise SystemExit(
            "bench: missing Debian packages: "
            + " ".join(missing)
            + "\n  install them with: apt-get install -y "
            + " ".join(missing)
            + ("" if install else "\n  (or drop --no-install to let the bench do it as root)")
        )

    def path(prog: str) -> str:
        found = shutil.which(prog)
        assert found is not None
        return found

    return Tools(
        nginx=path("nginx"),
        wrk=path("wrk"),
        openssl=path("openssl"),
        curl=path("curl"),
        taskset=path("taskset"),
        h2load=path("h2load"),
        nginx_modules=LUA_MODULE_DIR,
    )


def version_of(argv: list[str]) -> str:
    """First line a program prints about its version (stdout or stderr)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError as e:
        return f"unavailable ({e})"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"

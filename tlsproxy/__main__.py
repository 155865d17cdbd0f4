"""``python -m tlsproxy``: the commands that work without starting the proxy."""

from __future__ import annotations

import importlib
import sys

USAGE = """usage: python -m tlsproxy COMMAND [options]

commands:
  certs     create or inspect the development CA and certificate, or explain a PEM pair
  trust     install the development CA where this machine's browsers and tools look
  doctor    check certificate, trust and backend, and explain what to fix
  check-config ARGS...
            validate twistd tlsproxy's options as startup would, and exit (like nginx -t)

Each command has --help. The proxy itself runs under twistd:
  twistd -n tlsproxy --backend http://127.0.0.1:8000
"""

# Imported only when named, so that one command's dependencies never slow another.
COMMANDS = {
    "certs": "tlsproxy.tls.command",
    "trust": "tlsproxy.tls.trust",
    "doctor": "tlsproxy.doctor",
    "check-config": "tlsproxy.check",
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"tlsproxy: error: unknown command {command!r}\n\n{USAGE}", end="", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command])
    result: int = module.run(rest, out=sys.stdout, err=sys.stderr)
    return result


if __name__ == "__main__":
    sys.exit(main())

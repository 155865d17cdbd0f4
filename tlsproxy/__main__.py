"""``python -m tlsproxy``: the commands that work without starting the proxy."""

from __future__ import annotations

import sys

USAGE = """usage: python -m tlsproxy COMMAND [options]

commands:
  certs     create or inspect the development CA and certificate, or explain a PEM pair
            (python -m tlsproxy certs --help)

The proxy itself runs under twistd:  twistd -n tlsproxy --backend http://127.0.0.1:8000
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "certs":
        from tlsproxy.tls import command as certs_command  # noqa: PLC0415 (keep --help light)

        return certs_command.run(rest, out=sys.stdout, err=sys.stderr)
    print(f"tlsproxy: error: unknown command {command!r}\n\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""The ``secret-audit`` command: helpers for people who read the audit trail."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from secret_audit.hashing import hash_name
from secret_audit.version import __version__

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="secret-audit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    hn = sub.add_parser(
        "hash-name",
        help="print the hmac-sha256 form of secret names, to search a hashed audit trail",
    )
    hn.add_argument("names", nargs="+", help="secret names (Redis keys or GCP secret ids)")
    args = parser.parse_args(argv)
    if args.command == "hash-name":
        try:
            for name in args.names:
                print(f"{name}\t{hash_name(name)}")
        except ValueError as exc:
            print(f"secret-audit: {exc}", file=sys.stderr)
            return 2
        return 0
    return 2  # pragma: no cover - argparse enforces the choice


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

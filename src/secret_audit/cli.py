"""The ``secret-audit`` command: helpers for people who read the audit trail, and the store's controls."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from secret_audit.hashing import hash_name
from secret_audit.version import __version__

__all__ = ["build_parser", "main"]

_FILTERS = (
    ("secret", "secret name (secret.name)"),
    ("source", "secret source (redis, gcp_secret_manager, ...)"),
    ("operation", "read, write, delete, metadata or admin"),
    ("outcome", "success, not_found, denied or error"),
    ("principal", "service principal (audit.principal)"),
    ("enduser", "end user (enduser.id)"),
    ("client-address", "caller IP address (client.address)"),
    ("trace-id", "32 hex digits"),
    ("event-name", "secret.access, audit.query, ..."),
    ("stream-id", "audit.stream.id"),
    ("tenant", "service.namespace"),
)


def _add_filters(p: argparse.ArgumentParser, *, window: bool = True) -> None:
    for name, text in _FILTERS:
        p.add_argument(f"--{name}", help=text)
    if window:
        p.add_argument("--start", help="ISO time, inclusive (e.g. 2026-11-25T00:00:00Z)")
        p.add_argument("--end", help="ISO time, exclusive")


def _add_client(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url",
                   help="store URL (default $OTEL_PYTHON_SECRET_AUDIT_STORE_URL or http://127.0.0.1:4318)")
    p.add_argument("--token-env", default="OTEL_PYTHON_SECRET_AUDIT_STORE_TOKEN",
                   help="environment variable holding the bearer token (never pass a token as an argument)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree, so docs and tests can inspect it."""
    parser = argparse.ArgumentParser(prog="secret-audit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    hn = sub.add_parser(
        "hash-name", help="print the hmac-sha256 form of secret names, to search a hashed audit trail"
    )
    hn.add_argument("names", nargs="+", help="secret names (Redis keys or GCP secret ids)")

    keygen = sub.add_parser(
        "keygen", help="make an Ed25519 key pair for signed checkpoints: PATH (0600) and PATH.pub"
    )
    keygen.add_argument("path", help="where the private key goes; the public key goes to PATH.pub")

    store = sub.add_parser("store", help="run or migrate the audit store")
    ssub = store.add_subparsers(dest="store_command", required=True)
    serve = ssub.add_parser("serve", help="serve OTLP/HTTP ingest and the query API")
    serve.add_argument("--host", help="listen address (default $..._STORE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default $..._STORE_PORT or 4318)")
    serve.add_argument("--workers", type=int,
                       help="server processes sharing the port (default $..._STORE_WORKERS or 1)")
    ssub.add_parser("migrate", help="create or upgrade the schema, then exit")

    tokens = sub.add_parser("tokens", help="manage bearer tokens for the store")
    tsub = tokens.add_subparsers(dest="tokens_command", required=True)
    create = tsub.add_parser("create", help="create a token; it is printed once and never stored")
    create.add_argument("--name", required=True, help="who or what holds the token")
    create.add_argument("--role", required=True, choices=("ingest", "auditor", "admin"))
    create.add_argument("--tenant", help="limit the token to one service.namespace")
    tsub.add_parser("list", help="list tokens (ids, names, roles; never secrets)")
    revoke = tsub.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("token_id", help="the 12-hex-digit id shown by `tokens list`")

    verify = sub.add_parser("verify", help="re-check every stored chain offline; exit 1 on any break")
    verify.add_argument("--start", help="ISO time, inclusive")
    verify.add_argument("--end", help="ISO time, exclusive")
    verify.add_argument("--tenant", help="only this service.namespace")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.add_argument("--archive", nargs="+", metavar="FILE",
                        help="check retention archives (.jsonl.gz) instead of the database")
    verify.add_argument("--public-key", action="append", metavar="FILE",
                        help="check signed checkpoints with this Ed25519 public key (PEM; repeatable, or a "
                             "keyring file of several)")
    verify.add_argument("--strict", action="store_true",
                        help="unattested records and streams without a final checkpoint fail too")
    verify.add_argument("--against", nargs="+", metavar="FILE",
                        help="compare with the collector's file copy (OTLP/JSON lines, .gz or not)")
    verify.add_argument("--allow-empty", action="store_true",
                        help="with --public-key, accept a trail with no producer stream")

    retention = sub.add_parser("retention", help="archive and drop partitions past the retention period")
    rsub = retention.add_subparsers(dest="retention_command", required=True)
    apply = rsub.add_parser("apply", help="export old monthly partitions to .jsonl.gz, then drop them")
    apply.add_argument("--days", type=int,
                       help="retention in days (default $..._STORE_RETENTION_DAYS or 365)")
    apply.add_argument("--archive-dir", help="where archives go (default $..._STORE_ARCHIVE_DIR)")
    apply.add_argument("--dry-run", action="store_true", help="say what would be archived and dropped")

    query = sub.add_parser("query", help="search the audit log through the store's API")
    _add_filters(query)
    _add_client(query)
    query.add_argument("--limit", type=int, default=50, help="events to show (default 50)")
    query.add_argument("--all", action="store_true", help="follow cursors to the last page")

    tail = sub.add_parser("tail", help="follow the live audit stream")
    _add_filters(tail, window=False)
    _add_client(tail)
    tail.add_argument("--max-events", type=int, help="stop after this many events")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "hash-name":
        try:
            for name in args.names:
                print(f"{name}\t{hash_name(name)}")
        except ValueError as exc:
            print(f"secret-audit: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "keygen":
        return _keygen(args.path)
    try:
        from secret_audit.store import _cli
    except ImportError as exc:  # pragma: no cover - depends on the install
        print(f"secret-audit: the store needs the 'store' extra ({exc.name} missing): "
              "pip install 'otel-secret-audit[store]'", file=sys.stderr)
        return 2
    return _cli.run(args)


def _keygen(path: str) -> int:
    from secret_audit.signing import KeyFileError, generate_key

    try:
        kid = generate_key(path)
    except KeyFileError as exc:
        print(f"secret-audit: {exc}", file=sys.stderr)
        return 2
    print(f"key {kid}: private key {path} (mode 0600), public key {path}.pub")
    print(f"sign with OTEL_PYTHON_SECRET_AUDIT_SIGNING_KEY_FILE={path}; verify with "
          f"secret-audit verify --public-key {path}.pub", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``secret-audit`` command: helpers for people who read the audit trail, and the store's controls."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Sequence
from typing import Any

from secret_audit._arguments import (
    OPERATIONS,
    OUTCOMES,
    Parser,
    between,
    event_name,
    filter_text,
    iso_time,
    trace_id,
)
from secret_audit.hashing import hash_name
from secret_audit.version import __version__

__all__ = ["build_parser", "main"]

_FILTERS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("secret", "secret name (secret.name)", {"type": filter_text}),
    ("source", "secret source (redis, gcp_secret_manager, ...)", {"type": filter_text}),
    ("operation", "access type", {"choices": OPERATIONS}),
    ("outcome", "outcome", {"choices": OUTCOMES}),
    ("principal", "service principal (audit.principal)", {"type": filter_text}),
    ("enduser", "end user (enduser.id)", {"type": filter_text}),
    ("client-address", "caller address (client.address)", {"type": filter_text}),
    ("trace-id", "32 hexadecimal digits", {"type": trace_id}),
    ("event-name", "secret.access, or audit.<type> such as audit.query", {"type": event_name}),
    ("stream-id", "audit.stream.id", {"type": filter_text}),
    ("tenant", "service.namespace", {"type": filter_text}),
)


def _add_filters(p: argparse.ArgumentParser, *, window: bool = True) -> None:
    for name, text, kind in _FILTERS:
        p.add_argument(f"--{name}", help=text, **kind)
    if window:
        _add_window(p)


def _add_window(p: argparse.ArgumentParser) -> None:
    p.add_argument("--start", type=iso_time, help="ISO 8601 time, inclusive (e.g. 2026-11-25T00:00:00Z; UTC "
                                                  "when no offset is given)")
    p.add_argument("--end", type=iso_time, help="ISO 8601 time, exclusive")


def _add_client(p: argparse.ArgumentParser, formats: tuple[str, ...], usual: str) -> None:
    p.add_argument("--url",
                   help="store URL (default $OTEL_PYTHON_SECRET_AUDIT_STORE_URL or http://127.0.0.1:4318)")
    p.add_argument("--token-env", default="OTEL_PYTHON_SECRET_AUDIT_STORE_TOKEN",
                   help="environment variable holding the bearer token (never pass a token as an argument)")
    p.add_argument("--format", choices=formats,
                   help=f"output layout; default: {usual} on a terminal, json (JSON lines) otherwise")
    p.add_argument("--json", action="store_const", const="json", dest="format", help="same as --format json")


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree, so docs and tests can inspect it."""
    parser = Parser(prog="secret-audit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    hn = sub.add_parser(
        "hash-name", help="print the hmac-sha256 form of secret names, to search a hashed audit trail"
    )
    hn.add_argument("names", nargs="+", help="secret names (Redis keys or GCP secret ids)")

    spool = sub.add_parser("spool", help="see and drain a spool an app left while its endpoint was down")
    psub = spool.add_subparsers(dest="spool_command", required=True)
    where = "the spool directory (the app's OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR)"
    status = psub.add_parser("status", help="records, bytes, the oldest entry and the streams waiting")
    status.add_argument("directory", help=where)
    status.add_argument("--json", action="store_true", help="print it as JSON")
    replay = psub.add_parser("replay", help="send what waits to the endpoint the app's settings name, oldest "
                                            "first and once, also beside running apps")
    replay.add_argument("directory", help=where)
    keygen = sub.add_parser(
        "keygen", help="make an Ed25519 key pair for signed checkpoints: PATH (0600) and PATH.pub"
    )
    keygen.add_argument("path", help="where the private key goes; the public key goes to PATH.pub")

    store = sub.add_parser("store", help="run or migrate the audit store")
    ssub = store.add_subparsers(dest="store_command", required=True)
    serve = ssub.add_parser("serve", help="serve OTLP/HTTP ingest and the query API")
    serve.add_argument("--host", help="listen address (default $..._STORE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=between(0, 65535), help="listen port (default $..._STORE_PORT or 4318)")
    serve.add_argument("--workers", type=between(1, 64),
                       help="server processes sharing the port (default $..._STORE_WORKERS or 1)")
    ssub.add_parser("migrate", help="create or upgrade the schema, then exit")
    wait = ssub.add_parser("wait", help="wait until the store at --url answers ready, for scripts")
    wait.add_argument("--url", help="the store (default $..._STORE_URL or http://127.0.0.1:4318)")
    wait.add_argument("--timeout", type=between(1, 3600), default=60, help="seconds (default 60)")

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
    _add_window(verify)
    verify.add_argument("--tenant", type=filter_text, help="only this service.namespace")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.add_argument("--archive", nargs="+", metavar="FILE",
                        help="check retention archives (.jsonl.gz) instead of the database")
    verify.add_argument("--allow-empty", action="store_true",
                        help="exit 0 even with nothing to verify (no stream, no record in the window, "
                             "or with --public-key no producer stream)")
    verify.add_argument("--public-key", action="append", metavar="FILE",
                        help="check signed checkpoints with this Ed25519 public key (PEM; repeatable, or a "
                             "keyring file of several)")
    verify.add_argument("--strict", action="store_true",
                        help="unattested records and streams without a final checkpoint fail too")
    verify.add_argument("--against", nargs="+", metavar="FILE",
                        help="compare with the collector's file copy (OTLP/JSON lines, .gz or not)")

    retention = sub.add_parser("retention", help="archive and drop partitions past the retention period")
    rsub = retention.add_subparsers(dest="retention_command", required=True)
    apply = rsub.add_parser("apply", help="export old monthly partitions to .jsonl.gz, then drop them")
    apply.add_argument("--days", type=between(1, 36500),
                       help="retention in days (default $..._STORE_RETENTION_DAYS or 365)")
    apply.add_argument("--archive-dir", help="where archives go (default $..._STORE_ARCHIVE_DIR)")
    apply.add_argument("--dry-run", action="store_true", help="say what would be archived and dropped")

    query = sub.add_parser("query", help="search the audit log through the store's API")
    _add_filters(query)
    _add_client(query, ("table", "vertical", "json", "ocsf"),
                "a table, or vertical where the table is wider than it")
    query.add_argument("--limit", type=between(1, 1000), default=50,
                       help="events to show, 1 to 1000 (default 50); with --all, events per page")
    query.add_argument("--all", action="store_true", help="follow cursors to the last page")
    query.add_argument("--order", choices=("desc", "asc"), default="desc",
                       help="desc: newest first (default); asc: oldest first")

    tail = sub.add_parser("tail", help="follow the live audit stream")
    _add_filters(tail, window=False)
    _add_client(tail, ("line", "vertical", "json", "ocsf"), "one line per event")
    tail.add_argument("--max-events", type=between(1, 1_000_000), help="stop after this many events")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    start, end = getattr(args, "start", None), getattr(args, "end", None)
    if start and end and dt.datetime.fromisoformat(end) <= dt.datetime.fromisoformat(start):
        parser.error(f"--end {end} is not after --start {start}: the window would hold nothing")
    try:
        return _run(args)
    except BrokenPipeError:
        # The reader went away (`secret-audit query | head`): stop quietly, and keep the interpreter
        # from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
    if args.command == "hash-name":
        try:
            for name in args.names:
                print(f"{name}\t{hash_name(name)}")
        except ValueError as exc:
            print(f"secret-audit: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "spool":  # the base package is enough: it runs where the app runs
        from secret_audit._internal import spool_cli

        return spool_cli.run(args)
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

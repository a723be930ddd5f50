"""The store's commands behind ``secret-audit``: serve, migrate, tokens, verify, retention, query, tail."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import psycopg

from secret_audit.exceptions import ConfigurationError
from secret_audit.store import _client, _layout
from secret_audit.store._proofs import open_proofs, render
from secret_audit.store.config import STORE, StoreConfig, default_data_dir, load_store_config

__all__ = ["run"]


def _err(message: str) -> int:
    print(f"secret-audit: {message}", file=sys.stderr)
    return 2


def _when(value: str | None, name: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigurationError(name, value, "an ISO 8601 time such as 2026-11-25T00:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


class _NoStore(Exception):
    """The data directory or database a command was pointed at holds no usable audit store."""


def _opened(config: StoreConfig) -> str:
    """What a command opens, in words: the data directory or the database, and which setting named it."""
    if config.database_url:
        try:
            info = psycopg.conninfo.conninfo_to_dict(config.database_url)
        except psycopg.ProgrammingError:
            raise ConfigurationError("DATABASE_URL", "<not shown>",
                                     "a PostgreSQL URL such as postgresql://user@host:5432/dbname") from None
        host = f"{info.get('host') or 'localhost'}" + (f":{info['port']}" if info.get("port") else "")
        return f"database {info.get('dbname') or 'postgres'} on {host} (DATABASE_URL)"
    named = "the default" if config.data_dir == default_data_dir() else STORE + "DATA_DIR"
    return f"{config.data_dir} ({named}; DATABASE_URL unset)"


@contextmanager
def _owner(config: StoreConfig, *, create: bool = False) -> Iterator[psycopg.Connection[Any]]:
    """A connection as the schema owner, starting the embedded server when no DATABASE_URL is set.

    Only ``create`` (``store migrate``) makes or upgrades a store; every other command opens an
    existing one, so a wrong directory or URL is an error instead of a new, empty, "verified" store.
    """
    from secret_audit.store.migrations import SCHEMA_VERSION, migrate, schema_version
    from secret_audit.store.service import resolve_database

    where = _opened(config)
    fix = "create one with `secret-audit store migrate` (or `store serve`), or point DATABASE_URL or " \
          f"{STORE}DATA_DIR at an existing store"
    if not create and not config.database_url and not (config.data_dir / "PG_VERSION").is_file():
        raise _NoStore(f"no audit store in {where}: no PostgreSQL data directory there; {fix}")
    url, embedded = resolve_database(config)
    if embedded is not None:
        print(f"secret-audit: embedded PostgreSQL, data directory {embedded.data_dir}", file=sys.stderr)
    with psycopg.connect(url, autocommit=True) as conn:
        if create:
            migrate(conn, config.app_role)
        else:
            version = schema_version(conn)
            if version == 0:
                raise _NoStore(f"no audit store in {where}: it has no audit schema; {fix}")
            if version < SCHEMA_VERSION:
                raise _NoStore(f"the audit store in {where} is at schema version {version}; this "
                               f"secret-audit needs {SCHEMA_VERSION}: run `secret-audit store migrate`")
        yield conn


def run(args: argparse.Namespace) -> int:
    """Dispatch a parsed store command; returns the exit code."""
    try:
        config = load_store_config()
        handler = _HANDLERS[args.command]
        return handler(args, config)
    except (ConfigurationError, _NoStore, _client.StoreUnusable) as exc:
        return _err(str(exc))
    except psycopg.Error as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        try:
            where = _opened(config)
        except ConfigurationError as bad:
            return _err(str(bad))
        return _err(f"cannot use the database ({where}): {first}")


def _store(args: argparse.Namespace, config: StoreConfig) -> int:
    if args.store_command == "wait":
        return _client.wait(args)
    if args.store_command == "migrate":
        from secret_audit.store.migrations import SCHEMA_VERSION

        with _owner(config, create=True):
            print(f"schema at version {SCHEMA_VERSION}")
        return 0
    host = args.host or config.host
    port = config.port if args.port is None else args.port
    workers = config.workers if args.workers is None else args.workers
    if not 1 <= workers <= 64:
        return _err(f"--workers must be between 1 and 64, got {workers}")
    if workers > 1 and "prometheus" in config.metrics:
        return _err("--workers > 1 needs OTEL_PYTHON_SECRET_AUDIT_STORE_METRICS=otlp (a scrape sees one)")
    busy = _cannot_listen(host, port)
    if busy is not None:  # said now, before a database is started and "listening" is printed
        return _err(f"cannot listen on {host}:{port}: {busy} (another store? choose --port or "
                    f"{STORE}PORT)")
    if workers > 1:
        return _serve_workers(config, host, port, workers)
    import uvicorn

    from secret_audit.store._heap import settle_heap
    from secret_audit.store.app import create_app
    from secret_audit.store.service import Store

    store = Store(config)
    store.open()
    print(f"secret-audit store: listening on http://{host}:{port} ({_where(store.embedded)})",
          file=sys.stderr)
    try:
        app = create_app(store, manage_store=True)
        settle_heap()
        # The app closes the store (and an embedded PostgreSQL) during uvicorn's graceful shutdown:
        # uvicorn re-raises SIGTERM/SIGINT afterwards, so the finally below may never run.
        uvicorn.run(app, host=host, port=port, log_level="info", proxy_headers=False)
    finally:
        store.close()
    return 0


def _cannot_listen(host: str, port: int) -> str | None:
    """Why the address cannot be bound, as uvicorn would bind it; None when it can."""
    import socket

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _where(data_dir: Path | None) -> str:
    return "DATABASE_URL" if data_dir is None else f"embedded PostgreSQL, data directory {data_dir}"


def _serve_workers(config: StoreConfig, host: str, port: int, workers: int) -> int:
    """Several server processes on one port, so ingest uses more than one core despite the GIL.

    This process starts the database if embedded and migrates it, then hands its URL to the workers
    through DATABASE_URL; each worker has its own pool, and the live bus joins their live streams.
    """
    import uvicorn

    from secret_audit.store.migrations import migrate
    from secret_audit.store.service import resolve_database

    url, embedded = resolve_database(config)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn, config.app_role)
        os.environ["DATABASE_URL"] = url
        print(f"secret-audit store: listening on http://{host}:{port} with {workers} worker processes "
              f"({_where(None if embedded is None else embedded.data_dir)})", file=sys.stderr)
        uvicorn.run("secret_audit.store.app:from_environment", factory=True, workers=workers, host=host,
                    port=port, log_level="info", proxy_headers=False)
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def _tokens(args: argparse.Namespace, config: StoreConfig) -> int:
    from secret_audit.store import tokens

    with _owner(config) as conn:
        if args.tokens_command == "create":
            try:
                raw, principal = tokens.create_token(conn, args.name, args.role, args.tenant)
            except ValueError as exc:
                return _err(str(exc))
            print(f"created token {principal.token_id} ({principal.role}"
                  f"{', tenant ' + principal.tenant if principal.tenant else ''}) for {principal.name}",
                  file=sys.stderr)
            print("store it now; it cannot be shown again:", file=sys.stderr)
            print(raw)
            return 0
        if args.tokens_command == "list":
            rows = [{**t, "created_at": f"{t['created_at']:%Y-%m-%d %H:%M}",
                     "revoked_at": f"{t['revoked_at']:%Y-%m-%d %H:%M}" if t["revoked_at"] else None}
                    for t in tokens.list_tokens(conn)]
            _layout.table(rows, (("id", "token_id"), ("name", "name"), ("role", "role"), ("tenant", "tenant"),
                                 ("created", "created_at"), ("revoked", "revoked_at")))
            return 0
        if tokens.revoke_token(conn, args.token_id):
            print(f"revoked {args.token_id}")
            return 0
        return _err(f"no live token with id {args.token_id}")


def _progress(total: int, label: str) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    transient=True, disable=total < 5000 or not sys.stderr.isatty(),
                    console=_stderr_console())


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _verify(args: argparse.Namespace, config: StoreConfig) -> int:
    from secret_audit.store._gaps import open_gaps
    from secret_audit.store._ingest import Ingestor
    from secret_audit.store._query import Filters, and_all, where_clause
    from secret_audit.store._selfaudit import SelfAudit
    from secret_audit.store.verify import verify

    if args.archive:
        from secret_audit.store.retention import verify_archives

        missing = [p for p in args.archive if not Path(p).is_file()]
        if missing:
            return _err(f"no such archive: {missing[0]}")
        try:
            archived = verify_archives([Path(p) for p in args.archive])
        except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
            return _err(f"cannot verify {', '.join(args.archive)}: not a readable retention archive "
                        f"({type(exc).__name__}: {exc})")
        if archived.rows == 0 and not args.allow_empty:
            return _nothing("no audit records in the archives")
        return _report(archived, args.json)
    start, end = _when(args.start, "--start"), _when(args.end, "--end")
    with _owner(config) as conn:
        proofs = open_proofs(args, conn, start, end)
        conds, params = where_clause(Filters(start=start, end=end), args.tenant)
        count = psycopg.sql.SQL("SELECT count(*) FROM audit_events WHERE {}").format(and_all(conds))
        row = conn.execute(count, params).fetchone()
        total = int(row[0]) if row else 0
        with _progress(total, "verifying") as bar:
            task = bar.add_task("verify", total=total)
            report = verify(conn, start=start, end=end, tenant=args.tenant,
                            progress=lambda n: bar.advance(task, n), also=proofs)
        sections = proofs.finish() if proofs is not None else {}
        gaps = [
            {"finding_id": g.finding_id, "stream_id": g.stream_id, "missing": g.missing,
             "ranges": [list(r) for r in g.ranges]}
            for g in open_gaps(conn, args.tenant)
        ]
        SelfAudit(Ingestor()).record(
            conn, event_name="audit.query", action="secret-audit verify",
            outcome="success", principal=f"os-user:{getpass.getuser()}", client_address=None,
            body=f"Audit log verified offline: {report.total_breaks} breaks in {report.rows} rows",
            extra={"audit.verify.rows": report.rows, "audit.verify.breaks": report.total_breaks},
        )
        empty = None if args.allow_empty else _nothing_verified(conn, start, end, args.tenant)
    if empty is not None:
        if args.json:
            doc = {**report.as_dict(), **{name: part.as_dict() for name, part in sections.items()},
                   "ok": False, "empty": True}
            print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return _nothing(empty)
    return _report(report, args.json, gaps, sections)


def _nothing(reason: str) -> int:
    """A verify run that checked nothing: said, and not a pass."""
    print(f"secret-audit: {reason}: nothing to verify (--allow-empty accepts that)", file=sys.stderr)
    return 1


def _nothing_verified(conn: psycopg.Connection[Any], start: dt.datetime | None, end: dt.datetime | None,
                      tenant: str | None) -> str | None:
    """Why a run checked no producer's record, if it did not: an empty store is not a verified one.

    The store's own stream (its audit of reads, this verify run included) does not count.
    """
    from secret_audit.store._query import Filters, and_all, where_clause
    from secret_audit.store._selfaudit import STORE_SERVICE

    scope = f" for tenant {tenant}" if tenant else ""
    if start is None and end is None:
        found = conn.execute(
            "SELECT 1 FROM audit_streams WHERE service_name IS DISTINCT FROM %s "
            "AND (%s::text IS NULL OR tenant = %s) LIMIT 1", (STORE_SERVICE, tenant, tenant),
        ).fetchone()
        return None if found else f"the store holds no audit streams{scope}"
    conds, params = where_clause(Filters(start=start, end=end), tenant)
    query = psycopg.sql.SQL("SELECT 1 FROM audit_events WHERE {} "
                            "AND service_name IS DISTINCT FROM %s LIMIT 1")
    found = conn.execute(query.format(and_all(conds)), [*params, STORE_SERVICE]).fetchone()
    return None if found else f"no audit records in the window{scope}"


def _report(report: Any, as_json: bool, gaps: list[dict[str, Any]] | None = None,
            sections: dict[str, Any] | None = None) -> int:
    doc = report.as_dict()
    if gaps is not None:
        doc["open_gaps"] = gaps  # found on ingest and not (wholly) filled by late records since
    for name, section in (sections or {}).items():
        doc[name] = section.as_dict()
        doc["ok"] = doc["ok"] and section.ok
    if as_json:
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        print(f"{doc['rows']} rows in {doc['streams']} streams: "
              + ("OK, every chain verifies" if doc["ok"] else f"{doc['breaks']} breaks"))
        if doc["reported_losses"]:
            print(f"{doc['reported_losses']} records reported lost by their producer (audit.dropped)")
        if doc.get("rebuilt"):
            print(f"{doc['rebuilt']} records built twice: sent by an audit agent that died before it saw "
                  "them acknowledged, and built again in the stream that continues its own")
        first = doc["first_break"]
        if first:
            print("first break:")
            for k, v in first.items():
                print(f"  {k}: {v}")
        if gaps:
            missing = sum(g["missing"] for g in gaps)
            print(f"open gaps found on ingest: {len(gaps)} ({missing} records missing)")
            for g in gaps[:20]:
                ranges = ", ".join(f"{a}..{b}" if a != b else str(a) for a, b in g["ranges"])
                print(f"  {g['stream_id']}: {ranges}")
            if len(gaps) > 20:
                print(f"  ... and {len(gaps) - 20} more (--json lists them all)")
        for name, section in (sections or {}).items():
            print("\n".join(render(name, section)))
    return 0 if doc["ok"] else 1


def _retention(args: argparse.Namespace, config: StoreConfig) -> int:
    from secret_audit.store.retention import apply_retention, expired_partitions

    days = args.days if args.days is not None else config.retention_days
    if days < 1:
        return _err("--days must be at least 1")
    archive = Path(args.archive_dir).expanduser() if args.archive_dir else config.archive_dir
    with _owner(config) as conn:
        parts = expired_partitions(conn, days)
        if not parts:
            print(f"nothing older than {days} days")
            return 0
        with _progress(10_000, "archiving") as bar:
            task = bar.add_task("archive", total=None)
            done = apply_retention(conn, days, archive, dry_run=args.dry_run,
                                   progress=lambda n: bar.advance(task, n))
    for p in done:
        verb = "would archive and drop" if args.dry_run else "archived and dropped"
        print(f"{verb} {p.name} ({p.start:%Y-%m} , {p.rows} rows)"
              + (f" -> {p.archive} sha256 {p.sha256}" if p.archive else ""))
    return 0


def _query(args: argparse.Namespace, config: StoreConfig) -> int:
    return _client.query(args)


def _tail(args: argparse.Namespace, config: StoreConfig) -> int:
    return _client.tail(args)


_HANDLERS = {
    "store": _store,
    "tokens": _tokens,
    "verify": _verify,
    "retention": _retention,
    "query": _query,
    "tail": _tail,
}

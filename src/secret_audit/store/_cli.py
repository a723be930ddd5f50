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

from secret_audit._internal.config import ConfigurationError
from secret_audit.store.config import STORE, StoreConfig, load_store_config

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


@contextmanager
def _owner(config: StoreConfig) -> Iterator[psycopg.Connection[Any]]:
    """A connection as the schema owner, starting the embedded server when no DATABASE_URL is set."""
    from secret_audit.store.migrations import migrate
    from secret_audit.store.service import resolve_database

    url, embedded = resolve_database(config)
    if embedded is not None:
        print(f"secret-audit: embedded PostgreSQL, data directory {embedded.data_dir}", file=sys.stderr)
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn, config.app_role)
        yield conn


def run(args: argparse.Namespace) -> int:
    """Dispatch a parsed store command; returns the exit code."""
    try:
        config = load_store_config()
        handler = _HANDLERS[args.command]
        return handler(args, config)
    except ConfigurationError as exc:
        return _err(str(exc))
    except psycopg.OperationalError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return _err(f"cannot reach the database: {first}")


def _store(args: argparse.Namespace, config: StoreConfig) -> int:
    if args.store_command == "migrate":
        from secret_audit.store.migrations import SCHEMA_VERSION

        with _owner(config):
            print(f"schema at version {SCHEMA_VERSION}")
        return 0
    host = args.host or config.host
    port = config.port if args.port is None else args.port
    workers = config.workers if args.workers is None else args.workers
    if not 1 <= workers <= 64:
        return _err(f"--workers must be between 1 and 64, got {workers}")
    if workers > 1 and "prometheus" in config.metrics:
        return _err("--workers > 1 needs OTEL_PYTHON_SECRET_AUDIT_STORE_METRICS=otlp (a scrape sees one)")
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
            from rich.console import Console
            from rich.table import Table

            table = Table("id", "name", "role", "tenant", "created", "revoked")
            for t in tokens.list_tokens(conn):
                table.add_row(t["token_id"], t["name"], t["role"], t["tenant"] or "",
                              f"{t['created_at']:%Y-%m-%d %H:%M}",
                              f"{t['revoked_at']:%Y-%m-%d %H:%M}" if t["revoked_at"] else "")
            Console().print(table)
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
        return _report(verify_archives([Path(p) for p in args.archive]), args.json)
    start, end = _when(args.start, "--start"), _when(args.end, "--end")
    with _owner(config) as conn:
        conds, params = where_clause(Filters(start=start, end=end), args.tenant)
        count = psycopg.sql.SQL("SELECT count(*) FROM audit_events WHERE {}").format(and_all(conds))
        row = conn.execute(count, params).fetchone()
        total = int(row[0]) if row else 0
        with _progress(total, "verifying") as bar:
            task = bar.add_task("verify", total=total)
            report = verify(conn, start=start, end=end, tenant=args.tenant,
                            progress=lambda n: bar.advance(task, n))
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
    return _report(report, args.json, gaps)


def _report(report: Any, as_json: bool, gaps: list[dict[str, Any]] | None = None) -> int:
    doc = report.as_dict()
    if gaps is not None:
        doc["open_gaps"] = gaps  # found on ingest and not (wholly) filled by late records since
    if as_json:
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        print(f"{doc['rows']} rows in {doc['streams']} streams: "
              + ("OK, every chain verifies" if doc["ok"] else f"{doc['breaks']} breaks"))
        if doc["reported_losses"]:
            print(f"{doc['reported_losses']} records reported lost by their producer (audit.dropped)")
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


def _client_settings(args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    url = (args.url or os.environ.get(STORE + "URL") or "http://127.0.0.1:4318").rstrip("/")
    token = os.environ.get(args.token_env)
    if not token:
        raise ConfigurationError(args.token_env, "",
                                 "a bearer token (make one with `secret-audit tokens create`)")
    return url, {"Authorization": f"Bearer {token}"}


def _filter_params(args: argparse.Namespace) -> dict[str, str]:
    params = {}
    for name in ("secret", "source", "operation", "outcome", "principal", "enduser", "client_address",
                 "trace_id", "event_name", "stream_id", "tenant", "start", "end"):
        value = getattr(args, name, None)
        if value is not None:
            params[name] = value
    return params


_COLUMNS = ("time", "secret_name", "secret_source", "operation", "action", "outcome", "principal",
            "enduser_id", "client_address", "integrity")


def _query(args: argparse.Namespace, config: StoreConfig) -> int:
    import httpx

    url, headers = _client_settings(args)
    params: dict[str, Any] = {**_filter_params(args), "limit": min(max(args.limit, 1), 1000)}
    events: list[dict[str, Any]] = []
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        while True:
            resp = client.get("/api/audit-logs", params=params)
            if resp.status_code != 200:
                return _err(f"{resp.status_code} {_detail(resp)}")
            page = resp.json()
            events += page["events"]
            if args.json:
                for e in page["events"]:
                    print(orjson.dumps(e).decode())
            if not args.all or not page["next_cursor"]:
                break
            params["cursor"] = page["next_cursor"]
    if not args.json:
        from rich.console import Console
        from rich.table import Table

        table = Table(*_COLUMNS)
        for e in events:
            table.add_row(*(str(e.get(c) or "") for c in _COLUMNS))
        Console().print(table)
    return 0


def _detail(resp: Any) -> str:
    try:
        return str(resp.json().get("detail") or resp.json().get("message"))
    except ValueError:
        return str(resp.text[:200])


def _tail(args: argparse.Namespace, config: StoreConfig) -> int:
    import httpx

    url, headers = _client_settings(args)
    params: dict[str, Any] = _filter_params(args)
    if args.max_events:
        params["max_events"] = args.max_events
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=httpx.Timeout(30, read=None)) as client, \
                client.stream("GET", "/api/audit-logs/stream", params=params) as resp:
            if resp.status_code != 200:
                resp.read()
                return _err(f"{resp.status_code} {_detail(resp)}")
            for line in resp.iter_lines():
                if not line.startswith("data: "):
                    continue
                event = orjson.loads(line[6:])
                if args.json:
                    print(orjson.dumps(event).decode(), flush=True)
                else:
                    print("  ".join(str(event.get(c) or "-") for c in _COLUMNS), flush=True)
    except KeyboardInterrupt:
        return 0
    return 0


_HANDLERS = {
    "store": _store,
    "tokens": _tokens,
    "verify": _verify,
    "retention": _retention,
    "query": _query,
    "tail": _tail,
}

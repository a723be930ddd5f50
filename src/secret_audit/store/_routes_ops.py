"""Operations: statistics for auditors, and liveness and readiness probes that need no token."""

import os
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from psycopg import sql

from secret_audit.store._gaps import open_gaps
from secret_audit.store._web import READ, Api, json_response
from secret_audit.store.tokens import Principal

__all__ = ["mount"]


def mount(app: FastAPI, api: Api) -> None:
    """Add /stats, /healthz and /readyz."""
    store = api.store
    authorize = api.authorize
    _json = json_response

    @app.get("/stats", tags=["operations"], summary="Ingest rate, queue depth, findings, stream heads")
    def stats(
        request: Request, caller: Annotated[Principal, Depends(authorize(READ, "read store statistics"))]
    ) -> Response:
        scope = sql.SQL("WHERE tenant = %s" if caller.tenant else "")
        params = [caller.tenant] if caller.tenant else []
        with store.connection() as conn:
            kinds = conn.execute(
                sql.SQL("SELECT kind, count(*) FROM audit_findings {} GROUP BY kind").format(scope), params
            ).fetchall()
            gaps = open_gaps(conn, caller.tenant)
            streams = conn.execute(
                sql.SQL(
                    "SELECT stream_id, tenant, service_name, last_sequence, record_count, findings, "
                    "last_seen FROM audit_stream_state {} ORDER BY last_seen DESC LIMIT 1000"
                ).format(scope),
                params,
            ).fetchall()
            api.audit(conn, caller, request, "GET /stats", "success",
                      f"Store statistics read by {caller.name}: {len(streams)} streams")
        out = store.counters.snapshot()
        pool = store.pool.get_stats() if store.pool is not None else {}
        out["queue_depth"] += int(pool.get("requests_waiting", 0))
        out["live_streams"] = store.hub.active
        out["pid"] = os.getpid()  # the counters above are this process's (store serve --workers N)
        out["settings"] = {  # what this process runs with, as operators set it (never the database URL)
            "native": store.ingestor.native, "pool_size": store.config.pool_size,
            "ingest_concurrency": store.config.ingest_concurrency, "non_audit": store.config.non_audit,
            "max_body_bytes": store.config.max_body_bytes, "app_role": store.role or None,
            "workers": store.config.workers, "max_clock_skew_seconds": store.config.max_clock_skew_s,
            "max_record_age_days": store.config.max_record_age_days,
        }
        recorded = {str(k): int(n) for k, n in kinds}
        # open problems: a gap counts while any of its sequences is still missing; fills are not problems
        problems = {k: n for k, n in recorded.items() if k not in ("gap", "gap_filled")}
        if gaps:
            problems["gap"] = len(gaps)
        by_stream: dict[str, list[list[int]]] = {}
        for g in gaps:
            by_stream.setdefault(g.stream_id, []).extend([a, b] for a, b in g.ranges)
        out["integrity_findings"] = problems
        out["findings_recorded"] = recorded
        out["open_gaps"] = {"gaps": len(gaps), "missing": sum(g.missing for g in gaps)}
        out["streams"] = [
            {
                "stream_id": s[0], "tenant": s[1], "service_name": s[2], "last_sequence": s[3],
                "records": s[4], "missing": max(0, int(s[3]) - int(s[4])), "findings": s[5],
                "open_gaps": by_stream.get(s[0], [])[:100], "last_seen": s[6],
            }
            for s in streams
        ]
        return _json(out)

    @app.get("/healthz", tags=["operations"], summary="Liveness: the process answers")
    def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz", tags=["operations"], summary="Readiness: the database answers")
    def readyz() -> Response:
        try:
            with store.connection() as conn:
                conn.execute("SELECT 1")
        except Exception as exc:
            return _json({"status": "unavailable", "reason": type(exc).__name__}, 503)
        return _json({"status": "ready"})

"""The HTTP service: OTLP/HTTP ingest, the query API, live stream, stats and health, behind bearer tokens."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from secret_audit.store import _events, _routes_ingest, _routes_ops, _routes_query
from secret_audit.store._heap import settle_heap
from secret_audit.store._limit import BodyLimit
from secret_audit.store._web import Api, json_response
from secret_audit.store.config import load_store_config
from secret_audit.store.service import Store
from secret_audit.version import __version__

__all__ = ["create_app", "from_environment"]


def create_app(store: Store, *, manage_store: bool = True) -> FastAPI:
    """Build the ASGI app around a Store; with manage_store it opens and closes the store itself."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_store and store.pool is None:
            await run_in_threadpool(store.open)
        try:
            yield
        finally:
            if manage_store:
                await run_in_threadpool(store.close)

    app = FastAPI(
        title="secret-audit store",
        version=__version__,
        description="Append-only, verifiable store of secret-access audit records (OTLP/HTTP logs in).",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(BodyLimit, limit=store.config.max_body_bytes)

    @app.exception_handler(psycopg.OperationalError)
    async def database_unavailable(request: Request, exc: psycopg.OperationalError) -> Response:
        # The database is down or the pool is exhausted: a retryable condition, never a bare 500.
        store.counters.bump("failed_requests")
        return json_response({"detail": f"database unavailable ({type(exc).__name__}); retry"}, 503,
                             {"Retry-After": "1"})

    api = Api(store)
    _routes_ingest.mount(app, api)
    _events.mount(app, api)
    _routes_query.mount(app, api)
    _routes_ops.mount(app, api)
    return app


def from_environment() -> FastAPI:
    """The app of one worker process of ``store serve --workers N``: settings and database from the
    environment the parent prepared."""
    app = create_app(Store(load_store_config()), manage_store=True)
    settle_heap()
    return app

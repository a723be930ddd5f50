"""A small secret service in the seed-000 style, audited without a line of audit plumbing.

- **Internal access**: the server reads its own credentials directly at start-up and in a
  background refresher (never through its own HTTP API).
- **External access**: API clients read and rotate secrets through ``/api/secrets/{name}``; the
  middleware puts the caller (``X-User``) and its IP address into ``secret_audit.audit_context``.

Run it under the launcher; every Redis and Secret Manager access lands in the audit trail::

    opentelemetry-instrument python examples/secret_service/app.py

Settings (environment): ``REDIS_URL``, ``GCP_PROJECT`` (or ``GOOGLE_CLOUD_PROJECT``),
``SECRET_MANAGER_GRPC_TARGET`` (a local stand-in; unset means Google's endpoint and your
credentials), ``SECRET_CACHE_TTL`` (300), ``STARTUP_SECRETS`` (read once at start-up, default
``ses-credentials``), ``REFRESH_SECRETS`` and ``REFRESH_INTERVAL`` (seconds; background re-reads,
off when empty or 0), ``TRUSTED_PROXIES`` (comma-separated addresses whose ``X-Forwarded-For``
is believed), ``HOST`` (127.0.0.1) and ``PORT`` (8080).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from secret_audit import audit_context

if __package__ in (None, ""):  # run as a script: make `secret_service` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from secret_service.fetcher import SecretFetcher, SecretNotFound, fetcher_from_env

log = logging.getLogger("secret_service")
_tracer = trace.get_tracer("secret_service")


def _names(var: str, default: str = "") -> list[str]:
    return [n.strip() for n in os.environ.get(var, default).split(",") if n.strip()]


def client_address(scope: Scope, trusted_proxies: frozenset[str]) -> str | None:
    """The caller's IP: the socket peer, or the nearest untrusted X-Forwarded-For hop behind a trusted proxy."""
    peer = (scope.get("client") or (None, None))[0]
    if peer not in trusted_proxies:
        return peer
    for name, value in scope.get("headers") or []:
        if name == b"x-forwarded-for":
            hops = [h.strip() for h in value.decode("latin-1").split(",") if h.strip()]
            for hop in reversed(hops):
                if hop not in trusted_proxies:
                    return hop
    return peer


class AuditContextMiddleware:
    """Every API request: a server span, and the end user and client IP in the audit context."""

    def __init__(self, app: ASGIApp, trusted_proxies: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.trusted_proxies = trusted_proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        # X-User stands in for whatever your authentication established (a session, a JWT's sub, ...).
        user = headers.get(b"x-user", b"").decode("utf-8", "replace") or None
        # With opentelemetry-instrumentation-starlette installed, its span is already current and
        # this one nests under it; without it, this is the request's root span.
        with _tracer.start_as_current_span(f"{scope['method']} {scope['path']}", kind=SpanKind.SERVER), \
                audit_context(enduser=user, client_address=client_address(scope, self.trusted_proxies),
                              access_path="external"):
            await self.app(scope, receive, send)


def create_app(fetcher: SecretFetcher | None = None) -> Starlette:
    state: dict[str, Any] = {"fetcher": fetcher}

    def get_fetcher() -> SecretFetcher:
        if state["fetcher"] is None:
            state["fetcher"] = fetcher_from_env()
        return state["fetcher"]  # type: ignore[no-any-return]

    def internal_read(name: str) -> None:
        """Server code reading its own credentials: directly, never through the HTTP API."""
        with audit_context(access_path="internal"):
            try:
                got = get_fetcher().get_secret(name)
                log.info("internal read of %s: %d bytes from %s", name, len(got.value), got.source)
            except SecretNotFound:
                log.warning("internal read of %s: not found", name)

    async def refresher(names: list[str], interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            for name in names:
                await run_in_threadpool(internal_read, name)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for name in _names("STARTUP_SECRETS", "ses-credentials"):
            await run_in_threadpool(internal_read, name)
        interval = float(os.environ.get("REFRESH_INTERVAL", "0") or 0)
        task = None
        if interval > 0 and _names("REFRESH_SECRETS"):
            task = asyncio.create_task(refresher(_names("REFRESH_SECRETS"), interval))
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def read_secret(request: Request) -> Response:
        name = request.path_params["name"]
        if not request.headers.get("x-user"):
            return JSONResponse({"error": "X-User required"}, status_code=401)
        try:
            got = await run_in_threadpool(get_fetcher().get_secret, name)
        except SecretNotFound:
            return JSONResponse({"error": f"secret {name} not found"}, status_code=404)
        return JSONResponse({"name": name, "source": got.source, "value": got.value.decode("utf-8", "replace")})

    async def put_secret(request: Request) -> Response:
        name = request.path_params["name"]
        if not request.headers.get("x-user"):
            return JSONResponse({"error": "X-User required"}, status_code=401)
        version = await run_in_threadpool(get_fetcher().put_secret, name, await request.body())
        return JSONResponse({"name": name, "version": version}, status_code=201)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/api/secrets/{name}", read_secret, methods=["GET"]),
            Route("/api/secrets/{name}", put_secret, methods=["PUT"]),
        ],
        lifespan=lifespan,
    )
    trusted = frozenset(_names("TRUSTED_PROXIES"))
    app.add_middleware(AuditContextMiddleware, trusted_proxies=trusted)
    return app


def main() -> None:
    import signal

    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it. Make that a normal interpreter exit,
    # so atexit hooks run: the OTel SDK flushes its last spans, and the audit pipeline its last records.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run(create_app(), host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8080")),
                log_level="warning", proxy_headers=False)


if __name__ == "__main__":
    main()

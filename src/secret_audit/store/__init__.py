"""The audit store: OTLP/HTTP logs in, PostgreSQL, a query API with access control, verification."""

from __future__ import annotations

from secret_audit.store.config import StoreConfig, load_store_config

__all__ = ["StoreConfig", "create_app", "load_store_config"]


def create_app(config: StoreConfig | None = None, database_url: str | None = None) -> object:
    """Build the ASGI app (imported lazily, so the CLI starts fast and the extra stays optional)."""
    from secret_audit.store.app import create_app as _create
    from secret_audit.store.service import Store

    return _create(Store(config or load_store_config(), database_url))

"""The store's OpenAPI document, generated from the app so the checked-in copy can be compared with it."""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["openapi_document", "openapi_json"]


def openapi_document() -> dict[str, Any]:
    """Build the OpenAPI document without opening a database."""
    from secret_audit.store.app import create_app
    from secret_audit.store.config import StoreConfig
    from secret_audit.store.service import Store

    app = create_app(Store(StoreConfig()), manage_store=False)
    return app.openapi()


def openapi_json() -> str:
    """The document as stable, indented JSON (what docs/openapi.json holds)."""
    return orjson.dumps(openapi_document(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n"


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.stdout.write(openapi_json())

"""Audit every google-cloud-secret-manager call: sync and async clients, grpc, grpc_asyncio and rest.

Usage::

    from secret_audit.gcp import GcpSecretManagerSecretAuditInstrumentor

    GcpSecretManagerSecretAuditInstrumentor().instrument()

Or, with no code change: ``opentelemetry-instrument python app.py``.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from secret_audit._internal.bootstrap import pipeline_for
from secret_audit._internal.patching import unwrap_ours, when_imported, wrap
from secret_audit.gcp.package import _instruments

__all__ = ["GcpSecretManagerSecretAuditInstrumentor"]

# v1 is the API; the beta surfaces share its method names, so covering them costs nothing extra.
_APIS = ("v1", "v1beta2", "v1beta1")


def _service(api: str) -> str:
    return f"google.cloud.secretmanager_{api}.services.secret_manager_service"


def _installed() -> bool:
    """Whether any API version is installed, found without importing it (nor grpc)."""
    try:
        return any(importlib.util.find_spec(f"google.cloud.secretmanager_{api}") for api in _APIS)
    except (ImportError, ValueError):
        return False


def _targets(mod: Any) -> list[tuple[Any, str, bool]]:
    """(client class, method, is_async) for both client flavours of one loaded API version."""
    # The async client calls its transport directly, not the sync client: both need wrapping.
    from secret_audit._internal.gcp_source import RPCS

    clients = ((mod.SecretManagerServiceClient, False), (mod.SecretManagerServiceAsyncClient, True))
    return [(cls, method, is_async) for cls, is_async in clients for method in RPCS if method in cls.__dict__]


class GcpSecretManagerSecretAuditInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """An OpenTelemetry instrumentor that emits an audit span and record per Secret Manager call.

    Keyword arguments to ``instrument()``: ``tracer_provider``, ``audit_exporter`` (a
    ``LogRecordExporter`` replacing OTLP, e.g. for tests) and ``settings`` (a ``Settings``
    replacing the environment).
    """

    _disarms: tuple[Callable[[], None], ...] = ()

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        # The launcher skips our dependency check when the distribution's passes, so the
        # library may be missing here: then there is nothing to wrap and no pipeline to start.
        if not _installed():
            return
        pipeline = pipeline_for(kwargs)
        if pipeline is None:
            return
        built: list[Any] = []

        def patch(mod: Any) -> None:
            # The wrappers' module is imported with the client, not at start-up: an app that never
            # uses Secret Manager never pays for it (issue 19's start-up goal).
            if not built:
                from secret_audit._internal.gcp_source import SOURCE_NAME, GcpWrappers

                closed = pipeline.settings.mode_for(SOURCE_NAME) == "closed"
                built.append(GcpWrappers(pipeline.handoff, closed=closed))
            wrappers = built[0]
            for owner, method, is_async in _targets(mod):
                wrap(owner, method, wrappers.for_method(method, is_async))

        # Wrapped when the app imports the client (at once if it has): importing it ourselves
        # would load google-api-core and grpc into every process, used or not.
        self._disarms = tuple(when_imported(_service(api), patch) for api in _APIS)

    def _uninstrument(self, **kwargs: Any) -> None:
        for disarm in self._disarms:
            disarm()
        self._disarms = ()
        for api in _APIS:
            mod = sys.modules.get(_service(api))
            if mod is not None:
                for owner, method, _ in _targets(mod):
                    unwrap_ours(owner, method)

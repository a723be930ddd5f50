"""Audit every google-cloud-secret-manager call: sync and async clients, grpc, grpc_asyncio and rest.

Usage::

    from secret_audit.gcp import GcpSecretManagerSecretAuditInstrumentor

    GcpSecretManagerSecretAuditInstrumentor().instrument()

Or, with no code change: ``opentelemetry-instrument python app.py``.
"""

from __future__ import annotations

import importlib
from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from secret_audit._internal.bootstrap import pipeline_for
from secret_audit._internal.gcp_source import RPCS, SOURCE_NAME, GcpWrappers
from secret_audit._internal.patching import unwrap_ours, wrap
from secret_audit.gcp.package import _instruments

__all__ = ["GcpSecretManagerSecretAuditInstrumentor"]

# v1 is the API; the beta surfaces share its method names, so covering them costs nothing extra.
_APIS = ("v1", "v1beta2", "v1beta1")


def _targets() -> list[tuple[Any, str, bool]]:
    """(client class, method, is_async) for every API version and client flavour installed."""
    targets: list[tuple[Any, str, bool]] = []
    for api in _APIS:
        try:
            mod = importlib.import_module(f"google.cloud.secretmanager_{api}.services.secret_manager_service")
        except ImportError:
            continue
        # The async client calls its transport directly, not the sync client: both need wrapping.
        for cls, is_async in (
            (mod.SecretManagerServiceClient, False),
            (mod.SecretManagerServiceAsyncClient, True),
        ):
            targets += [(cls, method, is_async) for method in RPCS if method in cls.__dict__]
    return targets


class GcpSecretManagerSecretAuditInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """An OpenTelemetry instrumentor that emits an audit span and record per Secret Manager call.

    Keyword arguments to ``instrument()``: ``tracer_provider``, ``audit_exporter`` (a
    ``LogRecordExporter`` replacing OTLP, e.g. for tests) and ``settings`` (a ``Settings``
    replacing the environment).
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        # The launcher skips our dependency check when the distribution's passes, so the
        # library may be missing here: then there is nothing to wrap and no pipeline to start.
        targets = _targets()
        if not targets:
            return
        pipeline = pipeline_for(kwargs)
        if pipeline is None:
            return
        closed = pipeline.settings.mode_for(SOURCE_NAME) == "closed"
        wrappers = GcpWrappers(pipeline.submit, pipeline if closed else None)
        for owner, method, is_async in targets:
            wrap(owner, method, wrappers.for_method(method, is_async))

    def _uninstrument(self, **kwargs: Any) -> None:
        for owner, method, _ in _targets():
            unwrap_ours(owner, method)

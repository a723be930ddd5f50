"""Turning ``instrument()`` keyword arguments and the environment into the shared pipeline."""

from __future__ import annotations

import logging
import sys
from typing import Any

from secret_audit._internal import meters
from secret_audit._internal.config import ConfigurationError, Settings, load_settings
from secret_audit._internal.pipeline import AuditPipeline, get_pipeline, peek_pipeline, set_pipeline

__all__ = ["pipeline_for"]

_log = logging.getLogger("secret_audit")


def _under_launcher() -> bool:
    return "opentelemetry.instrumentation.auto_instrumentation" in sys.modules


def pipeline_for(kwargs: dict[str, Any]) -> AuditPipeline | None:
    """Validate settings and return the process pipeline, or None when auditing is disabled.

    Under ``opentelemetry-instrument`` a bad setting exits the process: the launcher would
    otherwise log the error and run the application unaudited.
    """
    settings = kwargs.get("settings")
    if not isinstance(settings, Settings):
        try:
            settings = load_settings()
        except ConfigurationError as exc:
            if _under_launcher():
                _log.critical("otel-secret-audit: %s", exc)
                raise SystemExit(f"otel-secret-audit: refusing to start: {exc}") from exc
            raise
    if not settings.enabled:
        _log.warning("otel-secret-audit: disabled by OTEL_PYTHON_SECRET_AUDIT_ENABLED")
        return None
    # the pipeline's metrics, through the app's MeterProvider (or one given, as contrib instrumentors take)
    meters.observe(kwargs.get("meter_provider"))
    exporter = kwargs.get("audit_exporter")
    provider = kwargs.get("tracer_provider")
    if exporter is not None or "settings" in kwargs or provider is not None:
        current = peek_pipeline()
        if current is not None and current.wired_as(settings, exporter, provider):
            return current  # the second instrumentor of the same wiring shares the stream
        # Explicit wiring (tests, embedding apps) replaces the process pipeline; wrappers still
        # holding the old one are forwarded to the new one (see AuditPipeline.submit).
        fresh = AuditPipeline(settings, exporter=exporter, tracer_provider=provider)
        old = set_pipeline(fresh)
        if old is not None:
            old.shutdown()
        return fresh
    return get_pipeline(settings)

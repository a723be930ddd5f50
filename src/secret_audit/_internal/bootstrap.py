"""Turning ``instrument()`` keyword arguments and the environment into the shared pipeline."""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import replace
from typing import Any

from secret_audit._internal import lifecycle, meters
from secret_audit._internal.config import SOURCES, ConfigurationError, Settings, load_settings
from secret_audit._internal.current import peek_pipeline, set_pipeline

__all__ = ["checked_settings", "pipeline_for"]

_log = logging.getLogger("secret_audit")


def checked_settings(kwargs: dict[str, Any], *, announce: bool = True) -> Settings:
    """The settings to run with, the spool folder checked; ConfigurationError when they would lose records."""
    if kwargs.get("logger_provider") is not None:
        raise ConfigurationError(
            "instrument(logger_provider=...)", type(kwargs["logger_provider"]).__name__,
            "no logger_provider: audit records never go through the application's logs pipeline "
            "(its processors drop records when full). Pass audit_exporter=<a LogRecordExporter> "
            "to choose where they go",
        )
    settings = kwargs.get("settings")
    if not isinstance(settings, Settings):
        settings = load_settings()
    if settings.enabled and settings.spool_dir and kwargs.get("audit_exporter") is None:
        settings = _with_spool(settings, announce)
    return settings


def _with_spool(settings: Settings, announce: bool = True) -> Settings:
    """Create the spool folder now, so that an unwritable one is known before the first record."""
    from secret_audit._internal.config import PREFIX, resolve_endpoint
    from secret_audit._internal.spooldir import prepare_spool_dir

    assert settings.spool_dir is not None
    endpoint, _ = resolve_endpoint(settings.otlp_protocol, settings.otlp_endpoint, os.environ)
    problem = prepare_spool_dir(settings.spool_dir, settings.otlp_protocol, endpoint)
    if problem is None:
        return settings
    closed = [s for s in SOURCES if settings.mode_for(s) == "closed"]
    if not settings.spool_default or closed:
        why = "fail-closed mode needs a spool" if closed else "the spool you chose must be usable"
        variable = PREFIX + "SPOOL_DIR" + (" (unset: the per-user default)" if settings.spool_default else "")
        raise ConfigurationError(
            variable, settings.spool_dir,
            f"a directory this process can create and write ({problem}; {why}); or 'off'",
        )
    global _WARNED_NO_SPOOL
    if announce and not _WARNED_NO_SPOOL:
        _WARNED_NO_SPOOL = True
        sys.stderr.write(
            f"otel-secret-audit: starting without a spool ({problem}): records made while the audit "
            f"endpoint is unreachable are lost. Set {PREFIX}SPOOL_DIR to a writable directory, or to "
            "'off' to silence this.\n"
        )
    return replace(settings, spool_dir=None, spool_default=False)


_WARNED_NO_SPOOL = False
_SAID_DISABLED = False


def _under_launcher() -> bool:
    return "opentelemetry.instrumentation.auto_instrumentation" in sys.modules


def pipeline_for(kwargs: dict[str, Any]) -> Any:
    """Validate settings and return the process pipeline, or None when auditing is disabled.

    Under ``opentelemetry-instrument`` a bad setting exits the process: the launcher would
    otherwise log the error and run the application unaudited.
    """
    try:
        settings = checked_settings(kwargs)
    except ConfigurationError as exc:
        if _under_launcher():
            # One line and status 1: a SystemExit raised inside the launcher's sitecustomize
            # becomes "Fatal Python error: init_import_site" and a long traceback.
            sys.stderr.write(f"otel-secret-audit: refusing to start: {exc}\n")
            sys.stderr.flush()
            os._exit(1)
        raise
    if not settings.enabled:
        global _SAID_DISABLED
        if not _SAID_DISABLED:  # once, not once per instrumentor
            _SAID_DISABLED = True
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
        # holding the old one are forwarded to the new one (see Handoff.submit).
        fresh = _started(settings, exporter, provider)
        old = set_pipeline(fresh)
        if old is not None:
            old.shutdown()
        return fresh
    with _LOCK:  # sources share one stream: the first to start makes the pipeline
        current = peek_pipeline()
        if current is None or current.closed:
            current = _started(settings)
            set_pipeline(current)
        return current


_LOCK = threading.Lock()


def _started(settings: Settings, exporter: Any = None, provider: Any = None) -> Any:
    """A new pipeline with its lifecycle hooks (exit, SIGTERM, fork); the agent's twin when asked."""
    if exporter is None and provider is None:
        return lifecycle.start(settings)
    from secret_audit._internal.pipeline import AuditPipeline  # wired in code: always in-process

    pipeline = AuditPipeline(settings, exporter=exporter, tracer_provider=provider)
    lifecycle.install(pipeline)
    return pipeline

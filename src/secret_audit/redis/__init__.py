"""Audit every redis-py call that touches a secret key: sync, async, pipelines and cluster clients.

Usage::

    from secret_audit.redis import RedisSecretAuditInstrumentor

    RedisSecretAuditInstrumentor().instrument()

Or, with no code change: ``opentelemetry-instrument python app.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from secret_audit._internal.bootstrap import pipeline_for
from secret_audit._internal.matcher import KeyMatcher
from secret_audit._internal.patching import unwrap_ours, when_imported, wrap
from secret_audit._internal.redis_calls import Wrappers
from secret_audit.redis.package import _instruments

__all__ = ["RedisSecretAuditInstrumentor"]


def _targets() -> list[tuple[Any, str, str]]:
    """(class, method, wrapper name) for every client flavour this redis-py has."""
    import redis
    import redis.client

    targets: list[tuple[Any, str, str]] = [
        (redis.client.Redis, "execute_command", "execute_command"),
        (redis.client.Pipeline, "execute", "pipeline_execute"),
        (redis.client.Pipeline, "immediate_execute_command", "execute_command"),
    ]
    if hasattr(redis.client.Pipeline, "raise_first_error"):
        targets.append((redis.client.Pipeline, "raise_first_error", "pipeline_first_error"))
    try:
        import redis.cluster

        targets += [
            (redis.cluster.RedisCluster, "execute_command", "execute_command"),
            (redis.cluster.ClusterPipeline, "execute", "pipeline_execute"),
        ]
        # redis-py >= 6: commands between WATCH and MULTI in a cluster transaction run here
        strategy = getattr(redis.cluster, "TransactionStrategy", None)
        if strategy is not None and hasattr(strategy, "_immediate_execute_command"):
            targets.append((strategy, "_immediate_execute_command", "strategy_execute_command"))
        if strategy is not None and hasattr(strategy, "_raise_first_error"):
            targets.append((strategy, "_raise_first_error", "strategy_first_error"))
    except ImportError:  # pragma: no cover - old redis-py
        pass
    try:
        import redis.asyncio.client

        targets += [
            (redis.asyncio.client.Redis, "execute_command", "async_execute_command"),
            (redis.asyncio.client.Pipeline, "execute", "async_pipeline_execute"),
            (
                redis.asyncio.client.Pipeline,
                "immediate_execute_command",
                "async_execute_command",
            ),
        ]
        if hasattr(redis.asyncio.client.Pipeline, "raise_first_error"):
            targets.append(
                (redis.asyncio.client.Pipeline, "raise_first_error", "pipeline_first_error")
            )
    except ImportError:  # pragma: no cover
        pass
    try:
        import redis.asyncio.cluster

        targets += [
            (redis.asyncio.cluster.RedisCluster, "execute_command", "async_execute_command"),
            (redis.asyncio.cluster.ClusterPipeline, "execute", "async_pipeline_execute"),
        ]
        strategy = getattr(redis.asyncio.cluster, "TransactionStrategy", None)
        if strategy is not None and hasattr(strategy, "_immediate_execute_command"):
            targets.append(
                (strategy, "_immediate_execute_command", "async_strategy_execute_command")
            )
        if strategy is not None and hasattr(strategy, "_raise_first_error"):
            targets.append((strategy, "_raise_first_error", "strategy_first_error"))
    except ImportError:  # pragma: no cover
        pass
    return targets


class RedisSecretAuditInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """An OpenTelemetry instrumentor that emits an audit span and record per secret-key access.

    Keyword arguments to ``instrument()``: ``tracer_provider``, ``audit_exporter`` (a
    ``LogRecordExporter`` replacing OTLP, e.g. for tests) and ``settings`` (a ``Settings``
    replacing the environment).
    """

    _disarm: Callable[[], None] | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        pipeline = pipeline_for(kwargs)
        if pipeline is None:
            return
        settings = pipeline.settings
        matcher = KeyMatcher(
            settings.redis_key_patterns,
            case_sensitive=settings.redis_key_patterns_case_sensitive,
        )
        closed = settings.mode_for("redis") == "closed"
        unknown = settings.redis_unknown_commands == "audit"
        wrappers = Wrappers(pipeline.handoff, matcher, closed=closed, unknown_commands=unknown)

        def patch(_redis: Any) -> None:
            for owner, method, factory in _targets():
                wrap(owner, method, getattr(wrappers, factory))

        # Wrapped when the app imports redis (at once if it has): we never import it ourselves.
        self._disarm = when_imported("redis", patch)

    def _uninstrument(self, **kwargs: Any) -> None:
        if self._disarm is not None:
            self._disarm()
            self._disarm = None
        if "redis" not in sys.modules:
            return  # never imported, so never wrapped
        for owner, method, _ in _targets():
            unwrap_ours(owner, method)

"""Our own threads' sends kept out of other instrumentations' sight, without loading the API for it."""

from __future__ import annotations

import sys

__all__ = ["suppress_instrumentation"]


def suppress_instrumentation() -> None:
    """Mark this thread's context so that no instrumentation traces or audits what it sends.

    Instrumentations are built on the OpenTelemetry API: where nothing loaded it, as in the audit agent
    (whose environment drops the launcher's sitecustomize), none can see our sends, and importing the
    API only for this would cost the agent about 1 MiB.
    """
    context = sys.modules.get("opentelemetry.context")
    if context is not None:
        context.attach(context.set_value(context._SUPPRESS_INSTRUMENTATION_KEY, True))

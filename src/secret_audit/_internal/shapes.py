"""Shapes: what repeats between records of one kind of access, worked out once.

A shape holds a record's static attributes (named, HMAC'd where asked), its summary around the
duration, its severity and its attributes pre-encoded as OTLP bytes; ``fill`` adds what varies per
access. The record builder (``builder``) makes shapes and audit spans in the app; the audit agent
reads shapes alone (its engine stamps and encodes from a shape's plan), so this module imports
nothing of the OpenTelemetry API, which the agent does not load (section 20 of
docs/design/pipeline.md). It owns no stream state (the stream stamps) and no delivery.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from secret_audit import contract

__all__ = [
    "NO_IDS", "SCOPE", "SEVERITY", "Ids", "Shape", "echo_line", "fill", "span_start", "summary", "worst",
]

SCOPE = "secret_audit"
SEVERITY = {outcome: (int(n), text) for outcome, (n, text) in contract.SEVERITY.items()}  # OTLP's numbers

_VERB = {
    "read": ("Secret accessed", "from"),
    "write": ("Secret stored", "to"),
    "delete": ("Secret deleted", "from"),
    "metadata": ("Secret metadata read", "from"),
    "admin": ("Secret administered", "on"),
    "unknown": ("Secret touched by an unclassified command", "in"),
}
_FAILED = {
    "read": "Secret access failed",
    "write": "Secret store failed",
    "delete": "Secret delete failed",
    "metadata": "Secret metadata read failed",
    "admin": "Secret administration failed",
}

_echo = logging.getLogger("secret_audit.audit")
_echo_ready = False


def echo_line(body: str) -> None:
    """Write the ``[AUDIT]`` line; asked-for lines go to stderr if logging was never configured."""
    global _echo_ready
    if not _echo_ready:
        _echo_ready = True
        if not _echo.hasHandlers():
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))
            _echo.addHandler(handler)
        if _echo.getEffectiveLevel() > logging.INFO:
            _echo.setLevel(logging.INFO)
    _echo.info("[AUDIT] %s", body)


def _fmt_ms(ms: float) -> str:
    return f"{ms:.0f}ms" if ms >= 10 else f"{ms:.2f}ms"


# Control characters in a key name must not let it forge a second line in a grep-able log.
_ESCAPES = {i: f"\\x{i:02x}" for i in (*range(0x20), 0x7F)}
_ESCAPES |= {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}
_ESCAPES |= {c: f"\\u{c:04x}" for c in (0x85, 0x2028, 0x2029)}


def summary(attrs: dict[str, Any], took: str | None = None) -> str:
    """Render the seed-000 one-line summary; it only ever names identifiers, never values."""
    op = attrs["audit.operation"]
    name = str(attrs["secret.name"]).translate(_ESCAPES)
    source = attrs["secret.source"]
    outcome = attrs["audit.outcome"]
    if took is None:
        took = _fmt_ms(attrs["audit.duration_ms"])
    if outcome == "not_found":
        return f"Secret not found: {name} in {source} ({took})"
    if outcome in ("error", "denied"):
        reason = attrs.get("audit.error") or attrs.get("error.type") or outcome
        return f"{_FAILED.get(op, 'Secret access failed')}: {name} {_VERB[op][1]} {source}: {reason}"
    verb, prep = _VERB.get(op, ("Secret accessed", "from"))
    result = attrs.get("audit.result")
    extra = f" ({result})" if result in ("created", "updated", "deleted", "unchanged") else ""
    return f"{verb}: {name} {prep} {source}{extra} ({took})"


class Shape(NamedTuple):
    """What repeats between records of one kind of access: static attributes, body, their bytes."""

    attrs: dict[str, Any]
    body: str  # the whole body, or its part before the duration when ``tail`` is set
    tail: str | None
    severity: int
    severity_text: str
    encoded: bytes  # ``attrs`` as OTLP LogRecord attribute fields
    skip: int  # how many attributes ``encoded`` holds
    kind: tuple[str, Any, Any]  # what the metrics count it by: event, secret.source, audit.outcome
    plan: Any = None  # the engine's Plan, where the agent made one (engine.plan_of)


# A record's trace fields: trace id, span id, flags, and the two ids in hex for the chain hash.
Ids = tuple[int, int, int, str, str]
NO_IDS: Ids = (0, 0, 0, "", "")


_RANK = {"success": 0, "not_found": 1, "denied": 2, "error": 3}


def worst(records: list[dict[str, Any]]) -> str:
    """The worst outcome among an access's records: its span's outcome and status."""
    return str(max((r["audit.outcome"] for r in records), key=lambda o: _RANK.get(o, 3)))


def fill(shapes: list[Shape], start_ns: int, end_ns: int) -> tuple[list[dict[str, Any]], list[str]]:
    """What varies per access: each record's attributes with the duration, and its body."""
    duration_ms = (end_ns - start_ns) / 1e6
    took = None
    records: list[dict[str, Any]] = []
    bodies: list[str] = []
    for shape in shapes:
        attrs = shape.attrs.copy()
        attrs["audit.duration_ms"] = duration_ms
        records.append(attrs)
        if shape.tail is None:
            bodies.append(shape.body)
        else:
            if took is None:
                took = _fmt_ms(duration_ms)
            bodies.append(f"{shape.body}{took}{shape.tail}")
    return records, bodies


def span_start(records: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """An access's audit span as started: named by its operation, with its records' common facts."""
    first = records[0]
    ops = {r["audit.operation"] for r in records}
    name = f"secret.{first['audit.operation']}" if len(ops) == 1 else "secret.access"
    attrs: dict[str, Any] = {
        "secret.source": first["secret.source"],
        "audit.action": first["audit.action"],
        "audit.outcome": worst(records),
        "audit.record_count": len(records),
    }
    if "secret.resource" in first:
        attrs["secret.resource"] = first["secret.resource"]
    return name, attrs

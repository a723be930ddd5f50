"""Findings of the checks that go past the unkeyed chain: breaks always fail, warnings fail under --strict."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, fields
from typing import Any

from secret_audit.store.verify import Break

__all__ = ["Findings", "Where", "where_of"]

_MAX_KEPT = 1000

# A row's id and time, for the auditor who looks it up.
Where = tuple[int | None, str | None]


def where_of(row: Any) -> Where:
    """The row id and ISO time of a stored row."""
    when = row["time"]
    return int(row["id"]), when.isoformat() if isinstance(when, dt.datetime) else str(when)


@dataclass
class Findings:
    """Breaks and warnings, each capped in what is kept but counted in full."""

    strict: bool = False
    breaks: list[Break] = field(default_factory=list)
    warnings: list[Break] = field(default_factory=list)
    total_breaks: int = 0
    total_warnings: int = 0

    @property
    def ok(self) -> bool:
        """No break, and under --strict no warning either."""
        return self.total_breaks == 0 and not (self.strict and self.total_warnings)

    def fail(self, kind: str, stream: str, sequence: int | None, detail: str, where: Where = (None, None),
             expected: str | None = None, actual: str | None = None) -> None:
        """Record a break: the stored trail is not what its producer made."""
        self.total_breaks += 1
        if len(self.breaks) < _MAX_KEPT:
            self.breaks.append(Break(kind, stream, sequence, detail, *where, expected, actual))

    def warn(self, kind: str, stream: str, sequence: int | None, detail: str,
             where: Where = (None, None)) -> None:
        """Record a warning: something not proven either way."""
        self.total_warnings += 1
        if len(self.warnings) < _MAX_KEPT:
            self.warnings.append(Break(kind, stream, sequence, detail, *where))

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the CLI: a report's own fields (its counts), in their order, then the findings."""
        mine = {f.name for f in fields(Findings)}
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in mine}
        return {**own, **self.findings_dict()}

    def findings_dict(self) -> dict[str, Any]:
        """The JSON form of the findings, for the CLI."""
        return {
            "ok": self.ok,
            "strict": self.strict,
            "breaks": self.total_breaks,
            "warnings": self.total_warnings,
            "details": [b.as_dict() for b in self.breaks],
            "warning_details": [w.as_dict() for w in self.warnings],
        }

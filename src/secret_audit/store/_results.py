"""What one ingest request did: its findings and counts, for OTLP partial success, /stats and live streams."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from secret_audit.store._prepare import ROW_TIME
from secret_audit.store._rows import COLUMNS, event_json, time_of_stamp
from secret_audit.store.verify import Break

__all__ = ["Finding", "IngestResult"]

_ROW_COLUMNS = ("id", *COLUMNS)
_JSON_SLOTS = tuple(i for i, name in enumerate(_ROW_COLUMNS) if name in ("attributes", "resource"))


@dataclass
class Finding(Break):
    """An integrity problem seen on ingest, with its evidence: a row of audit_findings, so with its tenant."""

    tenant: str | None = None
    range_first: int | None = None  # gap: the missing sequences; gap_filled: the ones that arrived late
    range_last: int | None = None


@dataclass
class IngestResult:
    """What one request did: the counts feed OTLP partial success, /stats and the live stream."""

    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    dropped_non_audit: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # records stored, but not as sent (see _bounds)
    findings: list[Finding] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)  # ("id", *COLUMNS), as sent to COPY
    received_at: Any = None

    def events(self) -> list[dict[str, Any]]:
        """The stored rows in the API's JSON form, built on demand for live subscribers."""
        out = []
        for row in self.rows:
            values = dict(zip(_ROW_COLUMNS, row, strict=True))
            for i in _JSON_SLOTS:
                values[_ROW_COLUMNS[i]] = orjson.loads(row[i][1:])
            values["time"] = time_of_stamp(row[ROW_TIME])
            values["received_at"] = self.received_at
            out.append(event_json(values))
        return out

    def reject(self, index: int, reason: str) -> None:
        """Count one refused record and keep the first few reasons for the response."""
        self.rejected += 1
        if len(self.errors) < 5:
            self.errors.append(f"record {index}: {reason}")

"""The loss ledger: what became of each batch, and the loss reports the stream still owes.

Delivery's verdicts are noted here: records exported, spooled, replayed and lost, by kind for the
metrics; every loss becomes an ``audit.dropped`` (or ``audit.refused``) record in the stream and a
line on stderr. A report travels in its own batch; when that batch is lost too, the report is made
again rather than forgotten. Only the worker thread writes here.
"""

from __future__ import annotations

import logging
from typing import Any

from secret_audit import contract
from secret_audit._internal.config import PREFIX
from secret_audit._internal.delivery import DELIVERED, REFUSED, REPLAYED, SPOOLED, Verdict, records_text

__all__ = ["CREATED", "EXPORTED", "SPOOLED_COLUMN", "Ledger", "Report", "fix_for"]

_log = logging.getLogger("secret_audit")

# A loss report's content: a lost range of sequences, a queue-full count, or ("refused", reason, count).
Report = Any
# What the metrics count records by: event name, secret.source, audit.outcome.
Kind = tuple[str, Any, Any]
CREATED, EXPORTED, SPOOLED_COLUMN = 0, 1, 2

FIX_LOSS = (
    "fix the endpoint, and keep the spool on (OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR) so that an "
    "outage is waited out on disk"
)
FIX_REFUSED = (
    "a refused request is neither retried nor spooled: check the endpoint's path and the token in "
    "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_HEADERS"
)


def fix_for(kind: str, spool_dir: str | None) -> str:
    """The advice a lost batch's line ends with: it depends on why it was lost and where the spool is."""
    if kind == REFUSED:
        return FIX_REFUSED
    if spool_dir is None:
        return FIX_LOSS
    return (
        f"the spool {spool_dir} was full or could not be written: free its disk or raise "
        f"{PREFIX}SPOOL_MAX_BYTES, and fix the endpoint"
    )
_REFUSALS = {
    "unavailable": "audit records could not be made durable",
    "not_durable": "the call's audit record was not durable in time",
    "unbuilt": "the call's audit record could not be built",
}


def _signed(kinds: list[tuple[Kind, list[int]]]) -> int:
    """The created count of the checkpoint kinds among ``kinds``."""
    return sum(row[CREATED] for (event, _, _), row in kinds if event == contract.EVENT_CHECKPOINT)


class Ledger:
    """Tallies by kind, loss counts, and the losses not yet reported in the stream."""

    def __init__(self) -> None:
        self.kinds: dict[Kind, list[int]] = {}  # per kind: records created, exported and spooled
        self.exported = 0
        self.spooled = 0
        self.replayed = 0
        self.lost_export = 0
        self.internal_errors = 0  # accesses the worker failed to build
        self._lost_ranges: list[tuple[int, int]] = []
        self._again_drops = 0  # queue-full counts whose report was lost with its batch
        self._again_refusals: dict[str, int] = {}
        # (reason, count, why): accesses lost before this stream saw them
        self._elsewhere: list[tuple[str, int, str]] = []

    def counts(self) -> dict[str, Any]:
        """The worker's counters, safe to read from any thread (the metrics' callbacks read them)."""
        kinds = list(self.kinds.items())  # one C-level copy: the worker may add a kind meanwhile
        by_kind = []
        for (event, source, outcome), row in kinds:
            attributes = {"event.name": event}
            if source is not None:
                attributes["secret.source"] = source
            if outcome is not None:
                attributes["audit.outcome"] = outcome
            by_kind.append({"attributes": attributes, "created": row[CREATED], "exported": row[EXPORTED],
                            "spooled": row[SPOOLED_COLUMN]})
        return {
            "exported": self.exported,
            "lost_export": self.lost_export,
            "internal_errors": self.internal_errors,
            "spooled": self.spooled,
            "replayed": self.replayed,
            "records": by_kind,
            "checkpoints_signed": _signed(kinds),
        }

    def checkpoints_signed(self) -> int:
        """Signed checkpoints created so far, without building the per-kind rows ``counts`` does."""
        return _signed(list(self.kinds.items()))

    def tally(self, kinds: dict[Kind, int], column: int) -> None:
        """Add a batch's records, by kind, to the created, exported or spooled totals."""
        totals = self.kinds
        for kind, n in kinds.items():
            row = totals.get(kind)
            if row is None:
                row = totals[kind] = [0, 0, 0]
            row[column] += n

    def note(self, verdict: Verdict, stream_id: str, spool_dir: str | None = None) -> None:
        """Count what a verdict says; a lost batch of this stream is reported, with what it reported."""
        batch = verdict.batch
        if verdict.kind == DELIVERED:
            self.exported += batch.records
            self.tally(batch.kinds, EXPORTED)
        elif verdict.kind == SPOOLED:
            self.spooled += batch.records
            self.tally(batch.kinds, SPOOLED_COLUMN)
        elif verdict.kind == REPLAYED:
            self.replayed += batch.records
        elif batch.stream == stream_id:
            if batch.records:
                self._lost(batch.first, batch.last, batch.records, verdict.problem,
                           verdict.kind == REFUSED, fix_for(verdict.kind, spool_dir))
            # What the lost request's own loss reports said is reported again, not lost with it.
            for what in batch.reports.values():
                self._again(what)
        else:
            _log.error(
                "secret-audit: the endpoint refused spooled records %s:%d..%d%s",
                batch.stream, batch.first, batch.last,
                f", which reported earlier losses {sorted(batch.reports.values(), key=str)}"
                if batch.reports else "",
            )

    def elsewhere(self, reason: str, count: int, why: str) -> None:
        """Accesses lost before they reached this stream (an agent that died): reported in the next batch."""
        self._elsewhere.append((reason, count, why))

    def due(
        self, dropped: int, refusals: dict[str, int], principal: str | None
    ) -> list[tuple[str, dict[str, Any], str, Report]]:
        """The loss reports to stamp now, as (event, attributes, body, what each reports)."""
        dropped += self._again_drops
        self._again_drops = 0
        for reason, count in self._again_refusals.items():
            refusals[reason] = refusals.get(reason, 0) + count
        self._again_refusals = {}
        ranges = _merge(self._lost_ranges)
        self._lost_ranges = []
        out: list[tuple[str, dict[str, Any], str, Report]] = []
        if dropped:
            attrs: dict[str, Any] = {
                "audit.outcome": "error",
                "audit.dropped.count": dropped,
                "audit.dropped.reason": "queue_full",
            }
            text = f"Audit records dropped: {dropped} (queue full)"
            out.append((contract.EVENT_DROPPED, attrs, text, dropped))
        elsewhere, self._elsewhere = self._elsewhere, []
        for reason, count, why in elsewhere:
            attrs = {"audit.outcome": "error", "audit.dropped.count": count, "audit.dropped.reason": reason}
            out.append((contract.EVENT_DROPPED, attrs, f"Audit records dropped: {count} ({why})",
                        ("elsewhere", reason, count, why)))
        for first, last in ranges:
            attrs = {
                "audit.outcome": "error",
                "audit.dropped.count": last - first + 1,
                "audit.dropped.reason": "export_failed",
                "audit.dropped.first_sequence": first,
                "audit.dropped.last_sequence": last,
            }
            text = f"Audit records lost: sequence {first}..{last} (export failed)"
            out.append((contract.EVENT_DROPPED, attrs, text, (first, last)))
        for reason, count in refusals.items():
            attrs = {"audit.outcome": "error", "audit.refused.count": count, "audit.refused.reason": reason}
            if principal:
                attrs["audit.principal"] = principal
            text = f"Secret calls refused: {count} (fail-closed, {_REFUSALS.get(reason, reason)})"
            out.append((contract.EVENT_REFUSED, attrs, text, ("refused", reason, count)))
        return out

    def abandoned(self, waiting: int, unsent: int, problem: str | None, spool_dir: str | None = None) -> None:
        """At exit, say on stderr what was neither exported nor spooled: it cannot reach the stream."""
        if waiting or unsent:
            _log.error(
                "secret-audit: lost %s at exit (%d accesses not yet built, %d records not yet sent)%s: "
                "the shutdown timeout (%s) passed; %s",
                records_text(waiting + unsent), waiting, unsent, f" ({problem})" if problem else "",
                PREFIX + "SHUTDOWN_TIMEOUT_MS", FIX_LOSS if spool_dir is None else "raise it",
            )

    def _lost(self, first: int, last: int, count: int, problem: str | None, refused: bool, fix: str) -> None:
        self.lost_export += count
        self._lost_ranges.append((first, last))
        _log.error(
            "secret-audit: lost %s (sequence %d..%d): %s%s; %s",
            records_text(count), first, last,
            "the endpoint refused them" if refused else "the exporter kept failing",
            f" ({problem})" if problem else "", fix,
        )

    def _again(self, what: Report) -> None:
        """A loss report whose own request was lost: a range of sequences, or a count of drops."""
        if isinstance(what, (tuple, list)) and len(what) == 2:
            self._lost_ranges.append((int(what[0]), int(what[1])))
        elif isinstance(what, int):
            self._again_drops += what
        elif isinstance(what, (tuple, list)) and len(what) == 4:  # ("elsewhere", reason, count, why)
            self._elsewhere.append((str(what[1]), int(what[2]), str(what[3])))
        elif isinstance(what, (tuple, list)) and len(what) == 3:  # ("refused", reason, count)
            reason = str(what[1])
            self._again_refusals[reason] = self._again_refusals.get(reason, 0) + int(what[2])


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort and join overlapping or adjacent sequence ranges."""
    out: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out

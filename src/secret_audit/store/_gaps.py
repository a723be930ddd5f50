"""Which gaps found on ingest are still open: gap findings minus the late records that filled them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from secret_audit.store._query import and_all

__all__ = ["OpenGap", "open_gaps"]


@dataclass(slots=True)
class OpenGap:
    """A gap finding some of whose missing sequences have still not arrived."""

    finding_id: int
    stream_id: str
    tenant: str | None
    first: int
    last: int
    ranges: list[tuple[int, int]]  # what is still missing, in order

    @property
    def missing(self) -> int:
        """How many sequences are still missing."""
        return sum(b - a + 1 for a, b in self.ranges)


def open_gaps(
    conn: psycopg.Connection[Any],
    tenant: str | None = None,
    *,
    ids: Sequence[int] | None = None,
) -> list[OpenGap]:
    """Every gap finding not wholly filled (optionally only these finding ids), oldest first."""
    conds: list[sql.Composable] = [sql.SQL("filled < size")]
    params: list[Any] = []
    if ids is not None:
        conds.append(sql.SQL("id = ANY(%s)"))
        params.append(list(ids))
    if tenant is not None:
        conds.append(sql.SQL("tenant = %s"))
        params.append(tenant)
    gaps = conn.execute(
        sql.SQL("SELECT id, stream_id, tenant, first, last FROM audit_gaps WHERE {} ORDER BY id").format(
            and_all(conds)
        ),
        params,
    ).fetchall()
    if not gaps:
        return []
    fills: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for stream, a, b in conn.execute(
        "SELECT stream_id, range_first, range_last FROM audit_findings "
        "WHERE kind = 'gap_filled' AND stream_id = ANY(%s) ORDER BY stream_id, range_first",
        (sorted({g[1] for g in gaps}),),
    ):
        fills[stream].append((int(a), int(b)))
    out = []
    for fid, stream, owner, first, last in gaps:
        ranges = _subtract(int(first), int(last), fills.get(stream, ()))
        if ranges:
            out.append(OpenGap(int(fid), stream, owner, int(first), int(last), ranges))
    return out


def _subtract(first: int, last: int, fills: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of first..last not covered by the (sorted) filled ranges."""
    out = []
    at = first
    for a, b in fills:
        if b < at or a > last:
            continue
        if a > at:
            out.append((at, a - 1))
        at = max(at, b + 1)
        if at > last:
            break
    if at <= last:
        out.append((at, last))
    return out

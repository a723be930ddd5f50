"""Reading the audit tables: one filter model to SQL, stable (time, id) pages, opaque cursors, findings."""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass
from typing import Annotated, Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from pydantic import BaseModel, ConfigDict, Field

from secret_audit.store._rows import event_json
from secret_audit.store.migrations import HASHED_FILTERS, KEY_HASH

__all__ = ["FILTER_COLUMNS", "BadFilter", "Equalities", "Filters", "Page", "and_all", "integrity_findings",
           "search", "since", "where_clause"]

# filter name -> column; every one is an equality match served by an index or a partition scan.
FILTER_COLUMNS = {
    "secret": "secret_name",
    "source": "secret_source",
    "operation": "operation",
    "outcome": "outcome",
    "principal": "principal",
    "enduser": "enduser_id",
    "client_address": "client_address",
    "trace_id": "trace_id",
    "event_name": "event_name",
    "stream_id": "stream_id",
    "tenant": "tenant",
}


class BadFilter(ValueError):
    """A filter or cursor that cannot be used; answered with 400 and this message."""


_Text = Annotated[str | None, Field(max_length=1024)]


class Equalities(BaseModel):
    """The equality filters, the same for the query API, the live stream and the CLI; the API reads them
    from the query string as this model (see _routes_query)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    secret: _Text = None
    source: _Text = None
    operation: _Text = None
    outcome: _Text = None
    principal: _Text = None
    enduser: _Text = None
    client_address: _Text = None
    trace_id: _Text = None
    event_name: _Text = None
    stream_id: _Text = None
    tenant: _Text = None

    def matches(self, event: dict[str, Any]) -> bool:
        """Apply the equality filters to an event or row in memory: the live stream, and the recheck
        of rows selected by a value's hash."""
        for name, col in FILTER_COLUMNS.items():
            want = getattr(self, name)
            if want is not None and event.get(col) != want:
                return False
        return True


class Filters(Equalities):
    """The equality filters and a time window: what a search selects."""

    start: dt.datetime | None = None
    end: dt.datetime | None = None

    def describe(self) -> dict[str, str]:
        """The filters in use, for the store's own audit event about this query."""
        used = self.model_dump(exclude_none=True)
        return {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in used.items() if v}


assert tuple(Equalities.model_fields) == tuple(FILTER_COLUMNS), "one name per filter, in one order"


@dataclass
class Page:
    """One page of results and the cursor for the next, if any."""

    events: list[dict[str, Any]]
    next_cursor: str | None


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def where_clause(filters: Filters, scope_tenant: str | None) -> tuple[list[sql.Composable], list[Any]]:
    """SQL conditions and parameters for the filters, always including the caller's tenant scope.

    The secret, principal, end user and client address filters match the value's 64-bit hash, as
    their indexes do: rows they select must be rechecked with ``Filters.matches``.
    """
    conds: list[sql.Composable] = []
    params: list[Any] = []
    for name, col in FILTER_COLUMNS.items():
        value = getattr(filters, name)
        if value is not None:
            if col in HASHED_FILTERS:
                # The index keys on the value's hash, hashed bytewise as the column is. Matching the
                # value too in SQL would make the planner multiply the two selectivities and expect
                # far too few rows; the caller rechecks the rows instead (see matches).
                key = sql.SQL(KEY_HASH)
                conds.append(sql.SQL("{} = {}").format(
                    key.format(sql.Identifier(col)), key.format(sql.SQL('%s::text COLLATE "C"'))))
            else:
                conds.append(sql.SQL("{} = %s").format(sql.Identifier(col)))
            params.append(value)
    if scope_tenant is not None:
        conds.append(sql.SQL("tenant = %s"))
        params.append(scope_tenant)
    if filters.start is not None:
        conds.append(sql.SQL("time >= %s"))
        params.append(_aware(filters.start))
    if filters.end is not None:
        conds.append(sql.SQL("time < %s"))
        params.append(_aware(filters.end))
    return conds, params


def and_all(conds: list[sql.Composable]) -> sql.Composable:
    """Join conditions with AND; no condition means every row."""
    return sql.SQL(" AND ").join(conds) if conds else sql.SQL("TRUE")


def encode_cursor(time: dt.datetime, row_id: int) -> str:
    """An opaque cursor naming the last row returned."""
    raw = f"{time.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, int]:
    """Parse a cursor made by encode_cursor, or raise BadFilter."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, _, row_id = raw.partition("|")
        return _aware(dt.datetime.fromisoformat(when)), int(row_id)
    except (ValueError, UnicodeDecodeError):
        raise BadFilter("cursor is not one this API returned") from None


def since(
    conn: psycopg.Connection[Any],
    filters: Filters,
    scope_tenant: str | None,
    after_id: int,
    limit: int = 10000,
) -> list[dict[str, Any]]:
    """Events stored after a row id, in id order: what a reconnecting live stream missed."""
    conds, params = where_clause(filters, scope_tenant)
    conds.append(sql.SQL("id > %s"))
    query = sql.SQL("SELECT * FROM audit_events WHERE {} ORDER BY id LIMIT %s").format(and_all(conds))
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, [*params, after_id, limit])
        return [event_json(r) for r in cur.fetchall() if filters.matches(r)]


def search(
    conn: psycopg.Connection[Any],
    filters: Filters,
    scope_tenant: str | None,
    *,
    limit: int = 100,
    cursor: str | None = None,
    order: str = "desc",
) -> Page:
    """Return one page of matching events in (time, id) order."""
    if order not in ("asc", "desc"):
        raise BadFilter("order must be asc or desc")
    conds, params = where_clause(filters, scope_tenant)
    if cursor:
        after_time, after_id = decode_cursor(cursor)
        conds.append(sql.SQL("(time, id) > (%s, %s)" if order == "asc" else "(time, id) < (%s, %s)"))
        params += [after_time, after_id]
    direction = sql.SQL("ASC" if order == "asc" else "DESC")
    query = sql.SQL("SELECT * FROM audit_events WHERE {} ORDER BY time {}, id {} LIMIT %s").format(
        and_all(conds), direction, direction
    )
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, [*params, limit + 1])
        rows = cur.fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1]["time"], int(rows[-1]["id"])) if more and rows else None
    # a hash collision may leave a page short; the cursor still names the last row read
    return Page([event_json(r) for r in rows if filters.matches(r)], next_cursor)


_FINDING_COLUMNS = ("id", "found_at", "tenant", "stream_id", "kind", "sequence", "detail", "expected",
                    "actual", "range_first", "range_last")


def integrity_findings(
    conn: psycopg.Connection[Any],
    scope_tenant: str | None,
    *,
    stream_id: str | None = None,
    kind: str | None = None,
    still_open: bool | None = None,
    after: int = 0,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Integrity findings after an id, in id order; ``still_open`` keeps only those that are (True) or are
    no longer (False) a problem: a gap counts until every missing sequence has arrived, gap_filled never."""
    from secret_audit.store._gaps import open_gaps  # _gaps builds on this module

    conds: list[sql.Composable] = [sql.SQL("id > %s")]
    params: list[Any] = [after]
    for column, value in (("stream_id", stream_id), ("kind", kind), ("tenant", scope_tenant)):
        if value is not None:
            conds.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            params.append(value)
    if still_open is not None:
        closed = sql.SQL("(kind = 'gap_filled' OR id IN (SELECT id FROM audit_gaps WHERE filled >= size))")
        conds.append(sql.SQL("NOT {}").format(closed) if still_open else closed)
    query = sql.SQL("SELECT {} FROM audit_findings WHERE {} ORDER BY id LIMIT %s").format(
        sql.SQL(", ").join(map(sql.Identifier, _FINDING_COLUMNS)), and_all(conds))
    rows = conn.execute(query, [*params, limit]).fetchall()
    items = [dict(zip(_FINDING_COLUMNS, r, strict=True)) for r in rows]
    gap_ids = [item["id"] for item in items if item["kind"] == "gap"]
    still = ({g.finding_id: g.ranges for g in open_gaps(conn, scope_tenant, ids=gap_ids)} if gap_ids else {})
    for item in items:
        if item["kind"] == "gap":
            ranges = still.get(item["id"], [])
            item["open"] = bool(ranges)
            item["open_ranges"] = [list(x) for x in ranges]
        else:
            item["open"] = item["kind"] != "gap_filled"
            item["open_ranges"] = None
    return items

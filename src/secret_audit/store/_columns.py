"""Verify's check of the columns that queries filter on, beyond the hash: they must say what was hashed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg

from secret_audit.store._bounds import HELD_KIND
from secret_audit.store._rows import TYPED, stamp_of, stamp_of_time, time_of_stamp

__all__ = ["COLUMN_KINDS", "ColumnCheck"]

# A typed column emptied with its attribute moved to JSONB hashes the same (the hash is over the
# attribute map, which the row rebuilds from both) but hides the row from a filter on that column;
# tenant, time and the resource are not hashed at all.
COLUMN_KINDS = ("moved_attribute", "tenant_mismatch", "time_mismatch")
NO_STREAM = object()  # the stream is not registered (verify reports that on its own)


class ColumnCheck:
    """The problems of one row's typed, tenant and time columns; knows which rows ingest held (see
    _bounds), whose time is their receive time by design."""

    def __init__(self, held: Mapping[str, list[tuple[int, int, int]]]) -> None:
        self.held = held  # stream -> [(first, last, stored stamp)] of time_out_of_bounds findings

    @classmethod
    def load(cls, conn: psycopg.Connection[Any]) -> ColumnCheck:
        """Read the held ranges from the findings."""
        held: dict[str, list[tuple[int, int, int]]] = {}
        for stream, first, last, stored in conn.execute(
            "SELECT stream_id, range_first, range_last, expected FROM audit_findings WHERE kind = %s",
            (HELD_KIND,),
        ):
            if first is not None and last is not None and stored:
                moment = dt.datetime.fromisoformat(str(stored))
                held.setdefault(str(stream), []).append((int(first), int(last), stamp_of_time(moment)))
        return cls(held)

    def problems(
        self, row: Mapping[str, Any], tenant: Any
    ) -> Iterator[tuple[str, str, str | None, str | None]]:
        """(kind, detail, expected, actual) for each column that disagrees with the hashed record;
        ``tenant`` is the stream's (NO_STREAM when it is not registered)."""
        for key, value in row["attributes"].items():
            typed = TYPED.get(key)
            if typed is None:
                continue
            column, kind = typed
            if row[column] is not None:
                yield ("moved_attribute", f"{key} is both in column {column} and in the JSONB attributes",
                       column, "both")
            elif type(value) is kind:  # ingest keeps in JSONB only a value of another type
                yield ("moved_attribute",
                       f"{column} is NULL but {key} is in the JSONB attributes: its filter misses the row",
                       column, "attributes")
        if tenant is not NO_STREAM:
            if row["tenant"] != tenant:
                yield ("tenant_mismatch", "the row's tenant is not its stream's", _text(tenant),
                       _text(row["tenant"]))
            namespace = row["resource"].get("service.namespace")
            if isinstance(namespace, str) and namespace and namespace != row["tenant"]:
                yield ("tenant_mismatch", "the row's tenant is not its resource's service.namespace",
                       namespace, _text(row["tenant"]))
        source = row["time_unix_nano"] or row["observed_unix_nano"]  # as ingest chose the row's time
        if source:
            actual = stamp_of_time(row["time"])
            if actual != stamp_of(int(source)) and not self._held(str(row["stream_id"]), int(row["sequence"]),
                                                                  actual):
                yield ("time_mismatch", "the row's time is not its record's own time",
                       _iso(stamp_of(int(source))), _iso(actual))

    def _held(self, stream: str, sequence: int, stamp: int) -> bool:
        return any(first <= sequence <= last and stamp == stored
                   for first, last, stored in self.held.get(stream, ()))


def _text(value: Any) -> str:
    return "(none)" if value is None else str(value)


def _iso(stamp: int) -> str:
    return time_of_stamp(stamp).isoformat().replace("+00:00", "Z")

# The store's C extension (_native.c): its whole surface. Each function has a pure-Python twin, the
# reference: _otlp.decode_protobuf_python, and psycopg's binary COPY.
from typing import Any

from secret_audit.store._otlp import RecordTuple

# The decoder's limits, the same as _otlp's: past one of them decode_logs raises ValueError.
MAX_DEPTH: int
MAX_RECORDS: int
MAX_ITEMS: int

def decode_logs(body: bytes, names: tuple[str, ...], kinds: bytes, /) -> list[RecordTuple] | None:
    """An ExportLogsServiceRequest's records in _otlp.Record's order, the typed columns last (for each
    of names, the attribute's value when it has its kind: b"t" str, b"d" float, b"q" int; else None);
    None when the request is not in the plain form the C reader takes."""

def encode_rows(rows: list[list[Any]], codes: bytes, /) -> bytes:
    """Rows as binary COPY tuples (no header or trailer), one type code per column: b"q" int8,
    b"h" int2, b"d" float8, b"t" text, b"b" bytes as they are."""

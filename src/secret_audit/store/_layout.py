"""How events are shown: a table where it fits, a vertical layout where it does not, JSON lines on a pipe.

A table is never squeezed: values are not cut (a cut secret name or time is worse than none), so a
table wider than the terminal is shown vertically instead, one field per line.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterable
from typing import Any, TextIO

import orjson

__all__ = ["FIELDS", "default", "fits", "json_line", "line", "ocsf_line", "table", "table_width", "vertical"]

# (header, event key): the table's columns and a tail line's fields, in order
FIELDS = (
    ("time", "time"), ("service", "service_name"), ("secret", "secret_name"), ("source", "secret_source"),
    ("operation", "operation"), ("action", "action"), ("outcome", "outcome"), ("principal", "principal"),
    ("end user", "enduser_id"), ("client", "client_address"), ("integrity", "integrity"),
)
# the vertical layout has room for the rest of what identifies a record
_DETAIL = (
    *FIELDS[:7], ("result", "result"), *FIELDS[7:10], ("access path", "access_path"), ("event", "event_name"),
    ("trace id", "trace_id"), ("stream", "stream_id"), ("sequence", "sequence"), ("integrity", "integrity"),
)
_LABEL = max(len(header) for header, _ in _DETAIL)


def _cell(event: dict[str, Any], key: str) -> str:
    value = event.get(key)
    return "-" if value is None or value == "" else str(value)


def default(usual: str | None) -> str | None:
    """The layout when none was asked for: JSON lines unless stdout is a terminal, else ``usual``
    (None: the caller decides once it knows how wide its table is, with ``fits``)."""
    return usual if sys.stdout.isatty() else "json"


def fits(width: int) -> bool:
    """True when a table ``width`` columns wide fits the terminal ($COLUMNS, else its real width)."""
    return width <= shutil.get_terminal_size().columns


def json_line(event: dict[str, Any], out: TextIO | None = None) -> None:
    """One event as one line of JSON, exactly as the API returned it."""
    print(orjson.dumps(event).decode(), file=out or sys.stdout, flush=True)


def ocsf_line(event: dict[str, Any], out: TextIO | None = None) -> None:
    """One event as one line of OCSF JSON (docs/ocsf.md), for SIEMs and security lakes that take OCSF."""
    from secret_audit import ocsf

    print(ocsf.json_line(event), file=out or sys.stdout, flush=True)


def line(event: dict[str, Any], out: TextIO | None = None) -> None:
    """One event on one line, fields apart by two spaces (for `tail` on a terminal)."""
    print("  ".join(_cell(event, key) for _, key in FIELDS), file=out or sys.stdout, flush=True)


def vertical(events: Iterable[dict[str, Any]], first: int = 1, out: TextIO | None = None) -> None:
    """Each event as a block of ``field  value`` lines, numbered from ``first``."""
    target = out or sys.stdout
    for number, event in enumerate(events, first):
        print(f"-[ {number} ]" + "-" * 24, file=target)
        for header, key in _DETAIL:
            print(f"{header:<{_LABEL}}  {_cell(event, key)}", file=target)
    target.flush()


def _build(events: list[dict[str, Any]], columns: tuple[tuple[str, str], ...]) -> Any:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    grid = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for header, _ in columns:
        grid.add_column(header, no_wrap=True, overflow="ignore")
    for event in events:
        grid.add_row(*(Text(_cell(event, key)) for _, key in columns))  # Text: no markup in values
    return grid


def table_width(events: list[dict[str, Any]], columns: tuple[tuple[str, str], ...] = FIELDS) -> int:
    """The columns the table needs to show every value whole."""
    from rich.console import Console
    from rich.measure import Measurement

    probe = Console(width=100_000)
    return Measurement.get(probe, probe.options, _build(events, columns)).maximum


def table(events: list[dict[str, Any]], columns: tuple[tuple[str, str], ...] = FIELDS,
          out: TextIO | None = None) -> None:
    """The events as a table as wide as its values need, whatever the terminal's width."""
    from rich.console import Console

    width = table_width(events, columns)
    Console(file=out or sys.stdout, width=width, soft_wrap=False).print(_build(events, columns))

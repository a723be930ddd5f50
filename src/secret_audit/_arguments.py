"""Command-line values checked as they are parsed, so a mistyped filter fails before anything is sent."""

from __future__ import annotations

import argparse
import datetime as dt
import re
from collections.abc import Callable
from typing import NoReturn

__all__ = ["OPERATIONS", "OUTCOMES", "Parser", "between", "event_name", "filter_text", "iso_time", "trace_id"]

OPERATIONS = ("read", "write", "delete", "metadata", "admin", "unknown")
OUTCOMES = ("success", "not_found", "denied", "error")
_MAX_FILTER = 1024  # the query API's limit on one filter value
_TRACE_ID = re.compile(r"[0-9a-fA-F]{32}")
_EVENT_NAME = re.compile(r"secret\.access|audit\.[^\s.][^\s]*")


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (and exit 2) instead of the whole usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def iso_time(raw: str) -> str:
    """An ISO 8601 time, as sent on: a time without an offset is taken as UTC."""
    try:
        moment = dt.datetime.fromisoformat(raw.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{raw!r} is not an ISO 8601 time such as 2026-11-25T00:00:00Z or 2026-11-25"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)).isoformat()


def between(low: int, high: int) -> Callable[[str], int]:
    """An integer from ``low`` to ``high``."""

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value

    return parse


def trace_id(raw: str) -> str:
    """A W3C trace id: 32 hexadecimal digits, stored in lower case."""
    if not _TRACE_ID.fullmatch(raw.strip()):
        raise argparse.ArgumentTypeError(f"{raw!r} is not a trace id (32 hexadecimal digits)")
    return raw.strip().lower()


def event_name(raw: str) -> str:
    """An audit event name: ``secret.access`` or ``audit.<type>``, as the store keeps them."""
    if not _EVENT_NAME.fullmatch(raw.strip()):
        raise argparse.ArgumentTypeError(
            f"{raw!r} is not an audit event name: secret.access, or audit.<type> such as audit.query"
        )
    return raw.strip()


def filter_text(raw: str) -> str:
    """An exact-match filter value: not empty, and within the API's length limit."""
    if not raw:
        raise argparse.ArgumentTypeError("an empty value matches nothing")
    if len(raw) > _MAX_FILTER:
        raise argparse.ArgumentTypeError(f"a value of {len(raw)} characters is longer than {_MAX_FILTER}")
    return raw

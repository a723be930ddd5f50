"""`secret-audit spool status|replay DIR`: see and drain a spool an app left while its endpoint was down.

Both need only the base package (no store extra): they run where the app runs, with its settings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys

import orjson

from secret_audit._internal.config import PREFIX, ConfigurationError, load_settings
from secret_audit._internal.senders import SendResult, build_sender
from secret_audit._internal.spool import Spool
from secret_audit._internal.spool_replay import Replayed, replay

__all__ = ["run"]


def _say(message: str) -> None:
    print(f"secret-audit: {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Dispatch ``spool status`` or ``spool replay``; returns the exit code."""
    try:
        spool = Spool(args.directory, 1 << 40, create=False)
    except OSError as exc:  # FileNotFoundError included: no spool there, and none is made
        _say(str(exc))
        return 2
    except Exception as exc:  # sqlite3.DatabaseError: not a spool
        _say(f"cannot read the audit spool in {args.directory}: {exc}")
        return 2
    try:
        return _status(spool, args.json) if args.spool_command == "status" else _replay(spool)
    except ConfigurationError as exc:
        _say(str(exc))
        return 2
    finally:
        spool.close()


def _status(spool: Spool, as_json: bool) -> int:
    doc = {**spool.summary(), "replaying": spool.claimed_elsewhere()}
    if as_json:
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return 0
    if not doc["records"]:
        print(f"{doc['path']}: nothing waits")
        return 0
    print(f"{doc['path']}: {_n(doc['records'], 'record')} in {_n(doc['batches'], 'request')}, "
          f"{doc['bytes']:,} bytes, oldest spooled {doc['oldest']} ({_age(doc['oldest'])} ago)")
    for s in doc["streams"]:
        print(f"  stream {s['stream']}  {_n(s['records'], 'record')}, sequences "
              f"{s['first_sequence']}..{s['last_sequence']}, oldest spooled {s['oldest']}")
    if doc["replaying"]:
        print("another process is replaying it now")
    return 0


def _age(iso: str) -> str:
    seconds = int((dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(iso)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{max(seconds, 0)} s"


def _replay(spool: Spool) -> int:
    settings = load_settings()
    if settings.exporter != "otlp":
        raise ConfigurationError(PREFIX + "EXPORTER", settings.exporter,
                                 "otlp to replay a spool (it holds OTLP requests for an OTLP endpoint)")
    sender = build_sender(settings.otlp_protocol, settings.otlp_endpoint, settings.otlp_headers)
    heard = _Heard()
    logging.getLogger("secret_audit").addHandler(heard)
    waiting = spool.stats()["records"]
    if not waiting:
        print(f"{spool.path}: nothing waits")
        return 0
    _say(f"replaying {waiting} records from {spool.path} to {sender.endpoint}")
    try:
        done = replay(spool, sender, _progress)
    finally:
        logging.getLogger("secret_audit").removeHandler(heard)
        sender.close()
    left = spool.stats()["records"]
    others = f" ({done.by_others} more were replayed by another process meanwhile)" if done.by_others else ""
    if done.stopped == "done":
        print(f"replayed {done.sent} records to {sender.endpoint} in {_n(done.requests, 'request')}{others}; "
              f"{spool.path} is empty")
        return 0
    if done.stopped == "busy":
        _say(f"another process holds the spool's replay claim and sent nothing for a minute; {left} records "
             "still wait in the spool")
        return 1
    failed = done.failed
    assert failed is not None
    what = f"the spooled request for stream {failed.stream}, sequences {failed.first_seq}..{failed.last_seq}"
    said = getattr(sender, "problem", None) or heard.last  # the sender's own words, without a log prefix
    cause = f" ({said})" if said else ""
    if done.stopped == SendResult.REFUSED:
        _say(f"{sender.endpoint} refused {what}{cause}: kept in the spool with everything after it; "
             f"fix the endpoint or its settings ({PREFIX}EXPORTER_OTLP_*) and run again")
    else:
        _say(f"{sender.endpoint} did not take the request{cause}: {left} records still wait in the spool "
             f"(sent {done.sent}{others}); run again once the endpoint answers, or fix its settings "
             f"({PREFIX}EXPORTER_OTLP_*)")
    return 1


def _progress(done: Replayed, left: int) -> None:
    _say(f"{done.sent}/{done.sent + done.by_others + left} records sent ({_n(done.requests, 'request')})")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


class _Heard(logging.Handler):
    """Keeps the sender's last word on a failed request (an HTTP status, a gRPC code, a socket error)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.last: str | None = None
        logging.getLogger("secret_audit").setLevel(logging.DEBUG)

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage()

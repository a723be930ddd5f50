"""Reconciliation with a second sink: the store against the collector's file copy, stream by stream.

The copy is what the collector's ``file`` exporter writes without compression, one OTLP/JSON
``ExportLogsServiceRequest`` per line (gzip-compressed files are read too). Each record's hash is
recomputed from its content on both sides, so a record altered in either one shows as a difference,
and a stream deleted whole from the store shows by the records (and signed checkpoints) the copy holds.
"""

from __future__ import annotations

import datetime as dt
import gzip
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from secret_audit import contract
from secret_audit.signing import verify as signature_ok
from secret_audit.store._findings import Findings
from secret_audit.store._otlp import BadPayload, Record, decode_json

__all__ = ["AgainstReport", "Reconciler", "read_copy"]


@dataclass
class _CopyStream:
    hashes: dict[int, str] = field(default_factory=dict)  # sequence -> hash recomputed from the copy
    first: int = 0  # the span of sequences the copy holds
    last: int = 0
    checkpoints: int = 0
    signed: set[str] = field(default_factory=set)  # key ids of checkpoints whose signature verifies


@dataclass
class AgainstReport(Findings):
    """Counts of the comparison and its findings."""

    files: list[str] = field(default_factory=list)
    copy_records: int = 0
    matched: int = 0


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    opener: Any = gzip.open if gzipped else open
    with opener(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                yield number, line


def _hash(rec: Record) -> str:
    return contract.chain_hash(contract.canonical_bytes(
        time_unix_nano=rec.time_unix_nano, event_name=rec.event_name, severity_number=rec.severity_number,
        body=rec.body, trace_id=rec.trace_id, span_id=rec.span_id, attributes=rec.attributes,
    ))


def read_copy(
    paths: list[Path],
    *,
    keys: dict[str, Ed25519PublicKey] | None = None,
    tenant: str | None = None,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
) -> dict[str, _CopyStream]:
    """The copy's audit records by stream and sequence, in the window and tenant; ValueError if unreadable."""
    lo = None if start is None else int(start.timestamp() * 1e9)
    hi = None if end is None else int(end.timestamp() * 1e9)
    streams: dict[str, _CopyStream] = {}
    for path in paths:
        for number, line in _lines(path):
            try:
                records = decode_json(line)
            except BadPayload as exc:
                raise ValueError(f"{path}:{number}: not an OTLP/JSON logs request ({exc})") from None
            for rec in records:
                attrs = rec.attributes
                stream, seq = attrs.get(contract.STREAM_ID), attrs.get(contract.SEQUENCE)
                if not isinstance(stream, str) or type(seq) is not int:
                    continue
                if not contract.is_audit_event(rec.event_name):
                    continue
                if tenant is not None and rec.resource.get("service.namespace") != tenant:
                    continue
                at = rec.time_unix_nano
                if (lo is not None and at < lo) or (hi is not None and at >= hi):
                    continue
                entry = streams.setdefault(stream, _CopyStream(first=seq, last=seq))
                entry.hashes[seq] = _hash(rec)
                entry.first, entry.last = min(entry.first, seq), max(entry.last, seq)
                if rec.event_name == contract.EVENT_CHECKPOINT:
                    entry.checkpoints += 1
                    kid = _signed_by(rec, keys or {})
                    if kid:
                        entry.signed.add(kid)
    return streams


def _signed_by(rec: Record, keys: dict[str, Ed25519PublicKey]) -> str | None:
    kid = rec.attributes.get(contract.CHECKPOINT_KEY_ID)
    key = keys.get(kid) if isinstance(kid, str) else None
    signature = rec.attributes.get(contract.CHECKPOINT_SIGNATURE)
    if key is None or not isinstance(signature, str):
        return None
    try:
        signed = contract.checkpoint_bytes_of(rec.attributes, rec.time_unix_nano)
    except ValueError:
        return None
    return kid if signature_ok(key, signed, signature) else None


def _ranges(seqs: list[int]) -> str:
    """Sequences as compact ranges: 3..7, 9."""
    parts: list[list[int]] = []
    for seq in sorted(set(seqs)):
        if parts and seq == parts[-1][1] + 1:
            parts[-1][1] = seq
        else:
            parts.append([seq, seq])
    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in parts)


class Reconciler:
    """Fed every stored row with its recomputed hash; ``finish`` compares what is left on either side."""

    def __init__(self, copy: dict[str, _CopyStream], files: list[str], *, strict: bool = False) -> None:
        self.copy = copy
        self.report = AgainstReport(strict=strict, files=files,
                                    copy_records=sum(len(s.hashes) for s in copy.values()))
        self._stream: str | None = None
        self._store_only: list[int] = []
        self._differs: list[int] = []

    def __call__(self, row: dict[str, Any], computed: str) -> None:
        stream = str(row["stream_id"])
        if stream != self._stream:
            self._settle()
            self._stream = stream
        entry = self.copy.get(stream)
        if entry is None:
            return  # a stream the copy never had (another collector, or older than the copy)
        seq = int(row["sequence"])
        theirs = entry.hashes.pop(seq, None)
        if theirs is None:
            self._store_only.append(seq)
        elif theirs != computed:
            self._differs.append(seq)
        else:
            self.report.matched += 1

    def _settle(self) -> None:
        stream = self._stream
        if stream is None:
            return
        entry = self.copy.pop(stream, None)
        report = self.report
        if self._differs:
            report.fail("differs", stream, self._differs[0], f"sequence {_ranges(self._differs)}: the "
                        "store's record and the copy's differ (one of them was altered)")
        if entry is not None and entry.hashes:
            report.fail("missing_from_store", stream, min(entry.hashes),
                        f"sequence {_ranges(list(entry.hashes))}: in the copy, not in the store")
        if self._store_only and entry is not None:
            inside = [s for s in self._store_only if entry.first <= s <= entry.last]
            outside = [s for s in self._store_only if not entry.first <= s <= entry.last]
            if inside:
                report.fail("not_in_copy", stream, inside[0], f"sequence {_ranges(inside)}: in the store, "
                            "not in the copy, between records the copy holds (inserted in the store, or lost "
                            "by the copy)")
            if outside:
                report.warn("outside_copy", stream, outside[0], f"sequence {_ranges(outside)}: in the store, "
                            f"outside the copy's span {entry.first}..{entry.last} (the copy starts later or "
                            "lags)")
        self._store_only, self._differs = [], []

    def finish(self) -> AgainstReport:
        """Settle the last stream, then report the copy's streams the store does not hold at all."""
        self._settle()
        self._stream = None
        for stream, entry in sorted(self.copy.items()):
            signed = f", {entry.checkpoints} checkpoints" + (
                f" signed by key {', '.join(sorted(entry.signed))}" if entry.signed else "")
            self.report.fail("stream_missing", stream, min(entry.hashes), f"{len(entry.hashes)} records"
                             f"{signed if entry.checkpoints else ''} in the copy and none in the store: the "
                             "stream was deleted whole")
        return self.report

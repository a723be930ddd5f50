"""Signed verification: every checkpoint's signature, and the stored records reproducing each signed head.

It walks each stream's rows in sequence order and recomputes every hash from the row's content. A
checkpoint signs the hash of the record before it; the records since the previous checkpoint are
proven when each one's ``audit.chain.prev`` names its stored predecessor and the last one hashes to the
signed head. No stream head, count or other row the store's role can write is trusted; only
audit_retention_log (which that role cannot write) is read, to tell a start archived by retention from
a cut one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from secret_audit import contract
from secret_audit.signing import verify as signature_ok
from secret_audit.store._findings import Findings, Where, where_of
from secret_audit.store._rows import Owner, attributes_of, link_of, owner_of

__all__ = ["Attestor", "SignedReport"]


@dataclass
class SignedReport(Findings):
    """What the signed checks proved: streams, checkpoints, attested records, and every finding."""

    keys: list[str] = field(default_factory=list)
    streams: int = 0
    checkpoints: int = 0
    attested: int = 0
    unattested: int = 0
    reported_losses: int = 0
    archived_starts: int = 0
    continued: int = 0  # streams that end where a successor's signed first record says they ended


@dataclass
class _Gap:
    first: int
    last: int
    checkpoint: int  # the checkpoint whose range it lies in
    where: Where


class _Stream:
    """One stream's walk: links, gaps and breaks since the last checkpoint, settled at each checkpoint."""

    def __init__(self, stream: str, attestor: Attestor) -> None:
        self.stream = stream
        self.attestor = attestor
        self.report = attestor.report
        self.keys = attestor.keys
        self.archived = attestor.archived_through is not None
        self.producer = False
        self.rows = 0
        self.last_seq = 0
        self.cands: dict[str, Where] = {}  # hash -> row, of the rows stored at last_seq
        self.range_start = 1  # the first sequence after the last verified checkpoint
        self.range_rows = 0  # rows since then
        self.run_rows = 0  # rows since the last gap or broken link
        self.troubles: list[tuple[str, int, int, Where]] = []  # ("gap" | "link", first, last, where)
        self.gaps: list[_Gap] = []
        self.losses: list[tuple[int, int, int]] = []  # (first, last, reported at) from audit.dropped
        self.checkpoint: int | None = None  # the last verified checkpoint's sequence
        self.proven_head = 0
        self.final_at: int | None = None
        self.after_final: tuple[int, Where] | None = None  # the first record after it
        self.after_final_count = 0
        self.link: tuple[str, int] | None = None  # from its first record: the stream it continues, and where
        self.owner: Owner = (None, None, None)  # the producer its rows name: service, instance, tenant

    def fail(self, kind: str, seq: int | None, detail: str, where: Where = (None, None),
             expected: str | None = None, actual: str | None = None) -> None:
        self.report.fail(kind, self.stream, seq, detail, where, expected, actual)

    def row(self, row: dict[str, Any], computed: str) -> None:
        seq = int(row["sequence"])
        event = row["event_name"]
        where = where_of(row)
        self.rows += 1
        if self.rows == 1:
            self.owner = owner_of(row)
        self.producer = self.producer or event in contract.PRODUCER_EVENTS
        if self.final_at is not None and seq > self.final_at:
            self.after_final = self.after_final or (seq, where)
            self.after_final_count += 1
            return
        self.range_rows += 1
        self.run_rows += 1
        if seq == self.last_seq:  # a second row with one sequence: its successor says which is real
            self.cands[computed] = where
            return
        prior, adjacent = self.cands, seq == self.last_seq + 1
        prev = row["chain_prev"]
        if seq == 1 and prev != contract.GENESIS:
            self.fail("forged", 1, "the first record does not start from the genesis hash", where)
        elif adjacent and seq > 1 and prev not in prior:
            self.troubles.append(("link", seq - 1, seq - 1, next(iter(prior.values()))))
            self.run_rows = 1
        elif not adjacent:
            self.troubles.append(("gap", self.last_seq + 1, seq - 1, where))
            self.run_rows = 1
        if adjacent and len(prior) > 1:
            for digest, other in prior.items():
                if digest != prev:
                    self.fail("forged", seq - 1, "a second record with this sequence, which its successor "
                              "does not name: inserted", other)
        self.cands = {computed: where}
        self.last_seq = seq
        if event == contract.EVENT_DROPPED:
            self._loss(row, seq)
        elif (link := link_of(row)) is not None:
            self.link = link
        elif event == contract.EVENT_CHECKPOINT:
            self._checkpoint(row, seq, prior, adjacent, where)

    def _loss(self, row: dict[str, Any], seq: int) -> None:
        attrs = row["attributes"]
        first, last = attrs.get(contract.DROPPED_FIRST), attrs.get(contract.DROPPED_LAST)
        if isinstance(first, int) and isinstance(last, int):
            self.losses.append((first, last, seq))

    def _checkpoint(self, row: dict[str, Any], seq: int, prior: dict[str, Where], adjacent: bool,
                    where: Where) -> None:
        attrs = attributes_of(row)
        kid = attrs.get(contract.CHECKPOINT_KEY_ID)
        key = self.keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            self.fail("unknown_key", seq, f"checkpoint signed by key {kid!r}, which no --public-key holds",
                      where)
            return
        try:
            signed = contract.checkpoint_bytes_of(attrs, int(row["time_unix_nano"]))
        except ValueError as exc:
            self.fail("bad_checkpoint", seq, f"checkpoint cannot be read: {exc}", where)
            return
        signature = attrs.get(contract.CHECKPOINT_SIGNATURE)
        if not isinstance(signature, str) or not signature_ok(key, signed, signature):
            self.fail("bad_signature", seq, f"checkpoint's signature does not verify with key {kid}: "
                      "its signed fields were altered or it was forged", where)
            return
        head, head_hash = attrs[contract.CHECKPOINT_HEAD_SEQUENCE], attrs[contract.CHECKPOINT_HEAD_HASH]
        if head != seq - 1:
            self.fail("bad_checkpoint", seq, f"checkpoint signs head {head}, not the record before it", where)
            return
        self.report.checkpoints += 1
        troubles, self.troubles = self.troubles, []
        reproduced = adjacent and head_hash in prior
        if reproduced:
            self.report.attested += self.run_rows
            self.proven_head = seq
        elif adjacent:
            self.fail("forged", head, f"records {self.range_start}..{head} do not reproduce the head that "
                      f"checkpoint {seq} signed: one or more were altered, inserted or re-chained", where,
                      head_hash, next(iter(prior)))
        for i, (kind, first, last, at) in enumerate(troubles):
            if kind == "gap":
                self.gaps.append(_Gap(first, last, seq, at))
            elif reproduced and i == len(troubles) - 1:  # its successor is proven: this one is not
                self.fail("forged", first, f"record {first} is not the one its successor names: altered or "
                          f"replaced (inside the range checkpoint {seq} signed)", at)
            else:
                self.fail("forged", first, f"records {first} and {first + 1} do not link: one of them was "
                          f"altered or replaced (inside the range checkpoint {seq} signed)", at)
        if attrs[contract.CHECKPOINT_FINAL]:
            self.final_at = seq
        self.checkpoint = seq
        self.range_start, self.range_rows, self.run_rows = seq + 1, 0, 0

    def finish(self) -> None:
        if not self.producer:
            return  # the store's own streams (audit.query, custom events): chained by the store, unsigned
        report = self.report
        report.streams += 1
        self.attestor.stored[self.stream] = self.last_seq
        self.attestor.owners[self.stream] = self.owner
        if self.checkpoint is None:
            self.fail("unsigned_stream", None, f"{self.rows} records and no checkpoint that verifies with "
                      "the given keys: the producer did not sign, or its checkpoints were removed")
            return
        if self.after_final is not None:
            seq, where = self.after_final
            self.fail("after_final", seq, f"{self.after_final_count} records after the final checkpoint at "
                      f"{self.final_at}: added after the producer closed the stream", where)
        if self.range_rows:
            report.unattested += self.range_rows
            report.warn("unattested", self.stream, self.range_start,
                        f"sequence {self.range_start}..{self.last_seq}: {self.range_rows} records after the "
                        f"last checkpoint ({self.checkpoint}) that no signature covers yet")
        if self.link is not None and self.proven_head >= 1:  # a signature covers the link: trust it
            self.attestor.links[self.link[0]] = (self.stream, self.link[1], self.owner)
        if self.final_at is None:
            self.attestor.open_ends[self.stream] = self.last_seq  # settled once every stream is walked
        for gap in self.gaps:
            self._settle(gap)

    def _settle(self, gap: _Gap) -> None:
        """A gap inside a signed range: a reported loss, a start archived by retention, or a cut."""
        for first, last, at in self.losses:
            if first <= gap.first and gap.last <= last and at <= self.proven_head:
                self.report.reported_losses += gap.last - gap.first + 1
                self.report.warn("unattested", self.stream, gap.first,
                                 f"sequence {gap.first}..{gap.last} reported lost by the producer: the "
                                 f"records before it in the range of checkpoint {gap.checkpoint} cannot be "
                                 "tied to it",
                                 gap.where)
                return
        if gap.first == 1 and self.archived:
            self.report.archived_starts += 1
            return
        self.fail("cut", gap.first, f"records {gap.first}..{gap.last}, which checkpoint {gap.checkpoint} "
                  "signed, are gone from the store", gap.where)


class Attestor:
    """Fed every row in (stream, sequence) order with its recomputed hash; ``finish`` gives the report."""

    def __init__(self, keys: dict[str, Ed25519PublicKey], *, strict: bool = False, allow_empty: bool = False,
                 archived_through: dt.datetime | None = None) -> None:
        self.keys = keys
        self.allow_empty = allow_empty
        self.archived_through = archived_through
        self.report = SignedReport(strict=strict, keys=sorted(keys))
        self._current: _Stream | None = None
        # stream -> its successor, its last durable sequence, the successor's producer
        self.links: dict[str, tuple[str, int, Owner]] = {}
        self.owners: dict[str, Owner] = {}  # every producer stream -> service, instance, tenant
        self.open_ends: dict[str, int] = {}  # producer streams without a final checkpoint -> last stored
        self.stored: dict[str, int] = {}  # every producer stream -> its last stored sequence

    def __call__(self, row: dict[str, Any], computed: str) -> None:
        current = self._current
        if current is None or current.stream != row["stream_id"]:
            if current is not None:
                current.finish()
            current = self._current = _Stream(str(row["stream_id"]), self)
        current.row(row, computed)

    def finish(self) -> SignedReport:
        """Settle the last stream; with no producer stream at all, that is a break unless allowed."""
        if self._current is not None:
            self._current.finish()
            self._current = None
        self._settle_ends()
        if self.report.streams == 0 and not self.allow_empty:
            self.report.fail("no_signed_stream", "", None, "no producer stream to verify: nothing is "
                             "attested (--allow-empty accepts an empty trail)")
        return self.report

    def _settle_ends(self) -> None:
        """A stream without a final checkpoint: ended where its successor's signed first record says its
        agent died (every record up to there stored), cut short of that, or unexplained (``not_final``)."""
        report = self.report
        for stream, (successor, last, owner) in self.links.items():
            if self.owners.get(stream, owner) != owner:  # a key shared by producers: not this one's successor
                report.fail("bad_link", successor, 1, f"its signed first record names stream {stream} of "
                            "another producer (service, instance or tenant) as the one it continues")
                continue
            self.open_ends.pop(stream, None)  # its end is explained, or a cut below
            stored = self.stored.get(stream, 0)  # 0: no row of it is left
            if stored < last:
                report.fail("cut", stream, stored + 1,
                            f"records {stored + 1}..{last} are gone from the store: stream {successor} "
                            "continues this one and its signed first record says the producer's audit agent "
                            "had made them durable (sent or spooled) before it died")
            else:
                report.continued += 1
        for stream, stored in self.open_ends.items():
            report.warn("not_final", stream, stored,
                        "no final checkpoint: the producer is still running or was killed, or the stream's "
                        "tail was cut")


def archived_through(conn: Any) -> dt.datetime | None:
    """The end of the latest monthly partition retention archived and dropped, from its append-only log."""
    row = conn.execute("SELECT max(partition_name) FROM audit_retention_log").fetchone()
    name = str(row[0] or "") if row else ""
    stamp = name.removeprefix("audit_events_p")
    if len(stamp) != 6 or not stamp.isdigit():
        return None
    year, month = int(stamp[:4]), int(stamp[4:])
    return dt.datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=dt.timezone.utc)

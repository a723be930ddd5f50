"""One stream's records of a request, in sequence order: duplicates, hashes, links and gaps."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg

from secret_audit import contract
from secret_audit.store._prepare import (
    INTEGRITY,
    P_COMPUTED,
    P_INDEX,
    P_ROW,
    P_SEQUENCE,
    ROW_CLAIMED,
    ROW_PREV,
    Prepared,
    finish,
)
from secret_audit.store._results import Finding, IngestResult

__all__ = ["Walk"]


class Walk:
    """One stream's records in sequence order: duplicates, hashes, links and gaps, yielding rows to keep."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        stream: str,
        tenant: str | None,
        head_seq: int,
        head_hash: str,
        batch: list[Prepared],
        result: IngestResult,
    ) -> None:
        self.stream = stream
        self.tenant = tenant
        self.start_seq = self.head_seq = head_seq
        self.head_hash = head_hash
        self.batch = batch
        self.result = result
        self.stored = 0
        self.known_hash: dict[int, str] = {}
        self.known_prev: dict[int, str] = {}
        if head_seq:
            self.known_hash[head_seq] = head_hash
        if batch[0][P_SEQUENCE] <= head_seq:
            # overlap with stored rows: a retry, or late records filling a gap
            late = [p[P_SEQUENCE] for p in batch if p[P_SEQUENCE] <= head_seq]
            wanted = {q for s in late for q in (s - 1, s, s + 1)}
            found = conn.execute(
                "SELECT sequence, chain_hash, chain_prev FROM audit_events "
                "WHERE stream_id = %s AND sequence = ANY(%s)",
                (stream, sorted(wanted)),
            ).fetchall()
            for seq, h, prev in found:
                self.known_hash[int(seq)] = h
                self.known_prev[int(seq)] = prev

    def _finding(self, kind: str, seq: int, detail: str, expected: str | None = None,
                 actual: str | None = None, first: int | None = None, last: int | None = None) -> None:
        self.result.findings.append(
            Finding(kind, self.stream, seq, detail, expected=expected, actual=actual, tenant=self.tenant,
                    range_first=first, range_last=last)
        )

    def _filled(self, first: int, last: int) -> None:
        self._finding("gap_filled", first, f"late records {first}..{last} arrived: no longer missing",
                      first=first, last=last)

    def _plain(self) -> bool:
        """Finish the batch and say whether it is the common case: the next sequences after the head, each
        hash recomputed as claimed and linked to the one before (all "ok", nothing to find)."""
        expected = self.head_seq
        link = self.head_hash if expected else contract.GENESIS
        for p in self.batch:
            expected += 1
            row = p[P_ROW]
            if (p[P_SEQUENCE] != expected or row[ROW_PREV] != link or finish(p) is not None
                    or p[P_COMPUTED] != row[ROW_CLAIMED]):
                return False  # a gap, duplicate, late record, refusal, mismatch or break: judged below
            link = row[ROW_CLAIMED]
        return True

    def run(self) -> Iterator[Prepared]:
        """Yield each record to store, with its integrity set; count duplicates and refusals."""
        batch = self.batch
        if not self.known_prev and self._plain():
            last = batch[-1]
            self.head_seq, self.head_hash = last[P_SEQUENCE], last[P_ROW][ROW_CLAIMED]
            self.stored = len(batch)
            yield from batch
            return
        # Anything else is judged record by record (finish runs again: it only recomputes).
        result = self.result
        existing = set(self.known_prev)
        known_hash = self.known_hash
        known_prev = self.known_prev  # empty unless the batch overlaps stored rows
        seen: dict[int, str] = {}
        start_seq = self.start_seq
        head_seq = self.head_seq
        stored = 0
        run_first = run_last = 0  # the current run of late records stored (sequences at or below the head)
        for p in batch:
            seq = p[P_SEQUENCE]
            row = p[P_ROW]
            claimed = row[ROW_CLAIMED]
            if seq in existing or seq in seen:
                original = known_hash.get(seq) if seq in existing else seen[seq]
                if original == claimed:
                    result.duplicates += 1
                else:
                    result.reject(p[P_INDEX], "audit.event.id already stored with different content")
                    self._finding("duplicate_conflict", seq,
                                  "a second, different record arrived with an event id already stored",
                                  original, claimed)
                continue
            reason = finish(p)
            if reason is not None:
                result.reject(p[P_INDEX], reason)
                continue
            integrity = "ok"
            if p[P_COMPUTED] != claimed:
                integrity = "hash_mismatch"
                self._finding("hash_mismatch", seq,
                              "the record's content does not match its audit.chain.hash",
                              p[P_COMPUTED], claimed)
            expected_prev = contract.GENESIS if seq == 1 else known_hash.get(seq - 1)
            if expected_prev is not None:
                if row[ROW_PREV] != expected_prev:
                    integrity = "chain_break" if integrity == "ok" else integrity
                    self._finding("chain_break", seq,
                                  "audit.chain.prev does not match the previous record's hash",
                                  expected_prev, row[ROW_PREV])
            elif seq > head_seq + 1:
                integrity = "gap_before" if integrity == "ok" else integrity
                first, last = head_seq + 1, seq - 1
                self._finding("gap", seq, f"sequence {first}..{last} missing before this record",
                              first=first, last=last)
            else:
                integrity = "unverified" if integrity == "ok" else integrity
            if known_prev:
                successor_prev = known_prev.get(seq + 1)
                if successor_prev is not None and successor_prev != claimed:
                    self._finding("chain_break", seq + 1,
                                  "a late record's hash does not match its successor's audit.chain.prev",
                                  claimed, successor_prev)
            if integrity != "ok":  # prepare built the row as "ok"
                row[INTEGRITY] = integrity
            known_hash[seq] = claimed
            seen[seq] = claimed
            if seq > head_seq:
                head_seq = self.head_seq = seq
                self.head_hash = claimed
            elif seq <= start_seq:  # a late record: it fills (part of) a gap found earlier
                if run_last and seq == run_last + 1:
                    run_last = seq
                else:
                    if run_last:
                        self._filled(run_first, run_last)
                    run_first = run_last = seq
            stored += 1
            self.stored = stored
            yield p
        if run_last:
            self._filled(run_first, run_last)

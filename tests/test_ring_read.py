"""The agent's run reader takes what its slot-by-slot reader takes: committed slots only, in order,
across the ring's end, ids cut to each slot's count (the stale id bytes of a reused slot never leak)."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from secret_audit._internal.ring import MAX_IDS, SLOTS, Ring, open_ring

_U64 = st.integers(0, 2**64 - 1)
_SLOT = st.tuples(st.integers(0, 7), st.integers(-(2**63), 2**63 - 1), st.integers(-(2**63), 2**63 - 1),
                  st.integers(0, 2**128 - 1), _U64, st.integers(0, 2**32 - 1),
                  st.lists(st.integers(0, 2**32 - 1), max_size=MAX_IDS).map(tuple), _U64)


@settings(max_examples=150, deadline=None)
@given(start=st.sampled_from([0, 5, SLOTS - 3, SLOTS - 1, 3 * SLOTS - 2]),
       slots=st.lists(_SLOT, min_size=0, max_size=40),
       uncommitted=st.integers(0, 40), limit=st.integers(1, 50))
def test_read_run_takes_what_read_takes(start, slots, uncommitted, limit):
    fd, mm = open_ring()
    os.close(fd)
    try:
        writer, by_slot, by_run = Ring(mm), Ring(mm), Ring(mm)
        # stale bytes in every place first: each slot a previous lap's, two ids, committed for that lap
        for idx in range(start - SLOTS, start - SLOTS + 60):
            if idx >= 0:
                writer.write(idx, 7, -1, -1, 2**128 - 1, 2**64 - 1, 9, (0xFFFFFFFF, 0xEEEEEEEE), 1)
        for n, (flags, begin, end, trace, span, tflags, ids, parent) in enumerate(slots):
            if n == uncommitted:
                break  # a slot reserved and not committed: nothing after it is read either
            writer.write(start + n, flags, begin, end, trace, span, tflags, ids, parent)
        by_slot.next = by_run.next = start
        expected = []
        while (slot := by_slot.read()) is not None:
            expected.append(slot)
        got = []
        while run := by_run.read_run(limit):
            assert len(run) <= limit
            got.extend(run)
        assert got == expected
        assert by_run.next == by_slot.next == start + len(expected)
        assert len(expected) == min(len(slots), uncommitted)
    finally:
        mm.close()

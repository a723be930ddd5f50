"""When an app's audit agent dies: the app builds what the agent had not settled, then runs in-process.

The ring reuses a slot only once the agent settled it (sent, spooled or reported lost), so every
slot from the settled watermark to the head is still in the app's memory: the app seals the ring
(no slot is reserved after), and hands those slots, with the shapes they name (``HeldShapes``, in
``agent_shape_ids``), to an in-process pipeline that builds them as the agent would, in a stream of
its own (the dead agent's chain head died with it), ahead of the accesses that follow. A slot that
cannot be built (not committed within a second, or naming a shape the app no longer holds) is
reported lost.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from secret_audit._internal import ring as hdr
from secret_audit._internal.config import PREFIX
from secret_audit._internal.ring import Ring

if TYPE_CHECKING:
    from secret_audit._internal.agent_shape_ids import HeldShapes
    from secret_audit._internal.ring_stream import SlotPipeline

__all__ = ["take_over"]

_COMMIT_WAIT = 1.0  # seconds for a slot reserved before the seal to be committed by its (live) thread
_FIX = (
    "look for the agent's own error above (it writes to this process's stderr), or for an OOM kill; "
    f"set {PREFIX}AGENT=off to build and send records in the app process"
)


def take_over(handoff: Any, cause: str) -> None:
    """The agent is gone: build what it had not settled here, run the pipeline in-process, say so once."""
    from secret_audit._internal.agent_wire import resource_attributes
    from secret_audit._internal.lifecycle import install
    from secret_audit._internal.ring_stream import SlotPipeline  # the in-process pipeline: only now

    with handoff.lock:
        if handoff.fallback is not None or handoff.closed:
            return
        ring: Ring | None = handoff.ring
        fallback = SlotPipeline(handoff.settings, resource_attributes())
        built = lost = 0
        link = ""
        if ring is not None:
            last = ring.word(hdr.SETTLED_SEQUENCE)
            handoff.predecessor = {"stream_id": handoff.stream_id, "last_sequence": last}
            if handoff.stream_id is not None:
                fallback.continue_from(handoff.stream_id, last)  # its first record, before any other
                link = (f" (stream {fallback.stream_id}, taking up where the agent's stream "
                        f"{handoff.stream_id} ends, at its sequence {last})")
        install(fallback)
        if ring is not None:
            built, lost = _hand_over(ring, handoff.shape_ids.held, fallback)
            # drops and refusals counted here that the agent's stream never took
            fallback.handoff.note_dropped(max(0, ring.word(hdr.DROPPED) - ring.word(hdr.TAKEN)))
            for i, (reason, word) in enumerate(hdr.REFUSALS.items(), 1):
                for _ in range(max(0, ring.word(word) - ring.word(hdr.TAKEN + i))):
                    fallback.handoff.refuse(reason)
        handoff.gone = cause
        handoff.fallback = fallback
    lost_text = (f"; {lost} of them could not be built and are reported lost (audit.dropped, reason "
                 "agent_died)") if lost else ""
    closed = "fail-closed calls are refused from now on" if handoff.closed_mode else (
        "records are now built and sent in this process (kill -9 now loses what is queued)")
    sys.stderr.write(
        f"otel-secret-audit: the audit agent is gone: {cause}. {built + lost} handed-off accesses not yet "
        f"durable are handed to this process, which builds and sends them in a new stream{link}{lost_text}; "
        f"{closed}. Fix: {_FIX}.\n"
    )
    sys.stderr.flush()


def _hand_over(ring: Ring, held: HeldShapes, fallback: SlotPipeline) -> tuple[int, int]:
    """Queue the ring's unsettled slots in ``fallback``, in order; how many were queued, and lost."""
    from secret_audit._internal.ring_stream import Taken

    end = ring.seal()
    items: list[Any] = []  # the queue takes slots besides accesses (SlotPipeline)
    lost = 0
    deadline = time.monotonic() + _COMMIT_WAIT
    shapes = held.by_id
    for idx in range(ring.word(hdr.SETTLED), end):
        slot = ring.slot(idx)
        while slot is None and time.monotonic() < deadline:  # reserved by a thread still writing it
            time.sleep(0.001)
            slot = ring.slot(idx)
        named = [shapes.get(sid) for sid in slot[7]] if slot is not None else [None]
        if slot is None or None in named:
            lost += 1
            continue
        items.append(Taken(slot, [s for s in named if s is not None], None))
    if lost:
        fallback.report_lost("agent_died", lost, "the audit agent died before they were durable")
    if items:
        handoff = fallback.handoff
        handoff.queue.extend(items)  # past the queue's bound: the ring bounded them already
        handoff.start()
        handoff.wake.set()
    return len(items), lost

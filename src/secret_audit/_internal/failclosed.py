"""Fail-closed mode for wrappers: refuse before the call when audit is down, and after it unless durable."""

from __future__ import annotations

import asyncio

from secret_audit._internal.event import Access
from secret_audit._internal.pipeline import AuditPipeline
from secret_audit._internal.ticket import Ticket
from secret_audit.exceptions import AuditUnavailableError

__all__ = ["before_call", "durable", "durable_async"]

_BEFORE = "secret access refused: audit records cannot be made durable (fail-closed mode)"
_AFTER = "secret access refused: its audit record could not be made durable in time (fail-closed mode)"


def before_call(pipeline: AuditPipeline) -> None:
    """Refuse up front while the pipeline is known to be unable to keep records."""
    if not pipeline.accepting():
        pipeline.refuse("unavailable")
        raise AuditUnavailableError(_BEFORE)


def durable(pipeline: AuditPipeline, access: Access) -> None:
    """Submit and wait; raise instead of letting the caller have the value if the record is not durable."""
    ticket = Ticket()
    timeout = pipeline.settings.fail_closed_timeout_ms / 1000
    ok = pipeline.submit_durable(access._replace(ticket=ticket), timeout)
    if not ok:
        pipeline.refuse("not_durable")
        raise AuditUnavailableError(_AFTER)


async def durable_async(pipeline: AuditPipeline, access: Access) -> None:
    """The same for coroutines, without blocking the event loop."""
    ticket = Ticket(loop=asyncio.get_running_loop())
    pipeline.submit(access._replace(ticket=ticket))
    if not await ticket.wait_async(pipeline.settings.fail_closed_timeout_ms / 1000):
        pipeline.refuse("not_durable")
        raise AuditUnavailableError(_AFTER)

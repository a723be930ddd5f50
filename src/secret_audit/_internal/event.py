"""The small tuple the caller's path enqueues, so that all formatting happens on the worker."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from opentelemetry.context import Context

__all__ = ["Access", "Item", "Source"]


class Item(NamedTuple):
    """One secret touched by one call; a multi-key command yields several, a pipeline counts repeats."""

    name: str | bytes
    operation: str
    action: str
    result: str | None = None
    resource: str | None = None
    version: str | None = None
    error: BaseException | None = None
    times: int = 1  # how many times the call did this (a pipeline's repeated commands, merged)


class Source(Protocol):
    """What the worker asks an instrumented library about a call it did not see."""

    name: str

    def resource(self, target: Any) -> str | None:
        """Return the resource URI for the client ``target``, e.g. ``redis://host:6379/0``."""

    def principal(self, target: Any) -> str | None:
        """Return the service identity behind ``target``, never a credential."""

    def describe_error(self, error: BaseException) -> tuple[str, str, str]:
        """Return ``(outcome, error.type, sanitised message)`` for an exception."""


class Access(NamedTuple):
    """What one instrumented call did to secrets; built on the caller's path, read on the worker.

    ``items`` may be None when classifying on the caller's path would cost too much (pipelines):
    the worker then calls ``expand(pending)`` to get them.
    """

    source: Source
    start_ns: int
    end_ns: int
    context: Context
    target: Any
    items: tuple[Item, ...] | None
    outcome: str
    error: BaseException | None = None
    expand: Callable[[Any], tuple[Item, ...]] | None = None
    pending: Any = None
    ticket: Any = None

    @property
    def records(self) -> int:
        """How many records the access makes, as the queue's waiting count and a drop's loss count it."""
        return len(self.items) if self.items is not None else 1

"""Wrapping and unwrapping that survive other instrumentations wrapping the same methods, in any order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import wrapt

__all__ = ["unwrap_ours", "wrap"]

_MARK = "_secret_audit_wrapper"


def wrap(owner: Any, attr: str, wrapper: Callable[..., Any]) -> None:
    """Wrap ``owner.attr`` with a wrapt FunctionWrapper marked as ours."""
    original = owner.__dict__[attr] if attr in owner.__dict__ else getattr(owner, attr)
    proxy = wrapt.FunctionWrapper(original, wrapper)
    setattr(proxy, _MARK, True)
    setattr(owner, attr, proxy)


def unwrap_ours(owner: Any, attr: str) -> bool:
    """Remove our wrapper from ``owner.attr`` even when another wrapper sits on top of it."""
    current = owner.__dict__.get(attr)
    if current is None:
        return False
    if getattr(current, _MARK, False):
        setattr(owner, attr, current.__wrapped__)
        return True
    outer = current
    while isinstance(outer, wrapt.ObjectProxy):
        inner = getattr(outer, "__wrapped__", None)
        if inner is None:
            return False
        if getattr(inner, _MARK, False):
            outer.__wrapped__ = inner.__wrapped__
            return True
        outer = inner
    return False

"""Wrapping and unwrapping that survive other instrumentations wrapping the same methods, in any order.

Two facts about wrapt shape this module:

* a proxy forwards unknown attribute reads *and writes* to the object it wraps, so a marker
  attribute set on our proxy would land on the original function, and would be read back through
  anyone else's proxy sitting on top of ours. We therefore recognise our proxies by identity;
* ``opentelemetry.instrumentation.utils.unwrap`` removes whatever proxy is outermost. So we put
  ours innermost, directly around the original function: another instrumentation that wraps
  before or after us, and later unwraps, then removes only its own layer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import wrapt

__all__ = ["unwrap_ours", "when_imported", "wrap"]

_PROXY_TYPES: tuple[type, ...] = tuple(
    t for t in (getattr(wrapt, "BaseObjectProxy", None), wrapt.ObjectProxy) if isinstance(t, type)
)
# id(our proxy) -> (our proxy, the exact original it wraps). Holding the proxy keeps the id unique.
_OURS: dict[int, tuple[Any, Any]] = {}
_LOCK = threading.Lock()


def _ours(obj: Any) -> tuple[Any, Any] | None:
    """Our (proxy, original) if ``obj`` is our proxy or a bound form of it, else None."""
    entry = _OURS.get(id(obj))
    if entry is not None and entry[0] is obj:
        return entry
    if isinstance(obj, _PROXY_TYPES):
        try:
            parent = object.__getattribute__(obj, "_self_parent")
        except AttributeError:
            return None
        entry = _OURS.get(id(parent))
        if entry is not None and entry[0] is parent:
            return entry
    return None


def _inner(proxy: Any) -> Any:
    return proxy.__wrapped__


def when_imported(module: str, patch: Callable[[Any], None]) -> Callable[[], None]:
    """Run ``patch(module)`` when the app imports ``module`` (at once if it already has), so that we
    never import a library ourselves; returns a function that disarms a hook not yet run.

    wrapt keeps its post-import hooks for good, so a disarmed hook stays registered and does nothing.
    """
    armed = [True]

    def hook(loaded: Any) -> None:
        if armed[0]:
            patch(loaded)

    wrapt.register_post_import_hook(hook, module)

    def disarm() -> None:
        armed[0] = False

    return disarm


def wrap(owner: Any, attr: str, wrapper: Callable[..., Any]) -> None:
    """Wrap ``owner.attr`` with a wrapt FunctionWrapper of ours, placed innermost."""
    with _LOCK:
        current = owner.__dict__[attr] if attr in owner.__dict__ else getattr(owner, attr)
        holder: Any = None  # the innermost foreign proxy, whose __wrapped__ we replace
        node = current
        for _ in range(64):  # bounded: wrapper chains are short
            if _ours(node) is not None:
                return  # already ours somewhere in the chain
            if not isinstance(node, _PROXY_TYPES):
                break
            holder, node = node, _inner(node)
        original = node
        proxy = wrapt.FunctionWrapper(original, wrapper)
        _OURS[id(proxy)] = (proxy, original)
        if holder is None:
            setattr(owner, attr, proxy)
        else:
            holder.__wrapped__ = proxy


def unwrap_ours(owner: Any, attr: str) -> bool:
    """Remove our wrapper from ``owner.attr`` even when another wrapper sits on top of it."""
    with _LOCK:
        current = owner.__dict__.get(attr)
        if current is None:
            return False
        entry = _ours(current)
        if entry is not None:
            setattr(owner, attr, entry[1])
            _OURS.pop(id(entry[0]), None)
            return True
        outer: Any = current
        for _ in range(64):
            if not isinstance(outer, _PROXY_TYPES):
                return False
            inner = _inner(outer)
            entry = _ours(inner)
            if entry is not None:
                outer.__wrapped__ = entry[1]  # type: ignore[attr-defined]
                _OURS.pop(id(entry[0]), None)
                return True
            outer = inner
        return False

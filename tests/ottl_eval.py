"""A test-only evaluator for the small subset of OTTL that collector-config's transform/ocsf uses.

No collector with the transform processor runs here (collector-config/README.md), so the OTTL is run
by this stand-in instead: good enough to catch a statement that maps another attribute, misses a
guard or sets a null, not proof of what otelcol-contrib does. It follows the collector's code where
the subset depends on it: set() on a missing path creates the maps and lists on the way and stores an
empty value (JSON null) when the value is nil; comparisons of mismatched types are false;
Int() truncates; IsMatch() searches (RE2, ASCII classes). Anything outside the subset raises.
"""

from __future__ import annotations

import ast
import copy
import re
from typing import Any

__all__ = ["log_context", "run"]

_MISSING = object()


def log_context(record: dict[str, Any]) -> dict[str, Any]:
    """The OTTL log context of a record in the store's event shape, as the collector would see it."""
    return {
        "log": {
            "attributes": copy.deepcopy(record.get("attributes") or {}),
            "body": record.get("body"),
            "cache": {},
            "event_name": record.get("event_name") or "",
            "time_unix_nano": int(record.get("time_unix_nano") or 0),
            "observed_time_unix_nano": int(record.get("observed_unix_nano") or 0),
            "severity_number": int(record.get("severity_number") or 0),
            "severity_text": record.get("severity_text") or "",
            "trace_id": {"string": record.get("trace_id") or ""},
            "span_id": {"string": record.get("span_id") or ""},
        },
        "resource": {"attributes": copy.deepcopy(record.get("resource") or {})},
        "instrumentation_scope": {"name": record.get("scope_name") or "", "version": record.get("scope_version") or ""},
    }


def _split_where(statement: str) -> tuple[str, str | None]:
    depth, quoted, i = 0, False, 0
    while i < len(statement):
        ch = statement[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and statement.startswith(" where ", i):
            return statement[:i], statement[i + 7:]
        i += 1
    return statement, None


def _python(expr: str) -> ast.expr:
    # OTTL literals that are not Python's; OTTL's string escapes are Python's for this subset
    text = re.sub(r"\bnil\b", "None", expr)
    text = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", text))
    return ast.parse(text, mode="eval").body


class _Run:
    def __init__(self, ctx: dict[str, Any]) -> None:
        self.ctx = ctx

    def path(self, node: ast.expr) -> list[Any]:
        if isinstance(node, ast.Name):
            return [node.id]
        if isinstance(node, ast.Attribute):
            return [*self.path(node.value), node.attr]
        if isinstance(node, ast.Subscript):
            key = node.slice
            if not isinstance(key, ast.Constant):
                raise ValueError(f"unsupported index {ast.dump(key)}")
            return [*self.path(node.value), key.value]
        raise ValueError(f"not a path: {ast.dump(node)}")

    def get(self, keys: list[Any]) -> Any:
        cur: Any = self.ctx
        for key in keys:
            if isinstance(cur, dict) and isinstance(key, str):
                cur = cur.get(key, _MISSING)
            elif isinstance(cur, list) and isinstance(key, int) and 0 <= key < len(cur):
                cur = cur[key]
            else:
                return None
            if cur is _MISSING:
                return None
        return cur

    def set(self, keys: list[Any], value: Any) -> None:
        cur: Any = self.ctx
        for key, nxt in zip(keys[:-1], keys[1:], strict=True):
            if not isinstance(cur, (dict, list)):
                raise TypeError(f"cannot index {cur!r}")
            child = cur.get(key) if isinstance(cur, dict) else cur[key]  # a list index out of range raises
            if child is None:  # missing or empty: the collector makes a map, or a list long enough for nxt
                child = [None] * (nxt + 1) if isinstance(nxt, int) else {}
                cur[key] = child
            cur = child
        last = keys[-1]
        if isinstance(cur, list):
            while len(cur) <= last:
                cur.append(None)
        cur[last] = copy.deepcopy(value)  # None stays: the collector writes an empty value

    def value(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Dict):
            return {self.value(k): self.value(v) for k, v in zip(node.keys, node.values, strict=True)}  # type: ignore[arg-type]
        if isinstance(node, ast.List):
            return [self.value(v) for v in node.elts]
        if isinstance(node, (ast.Name, ast.Attribute, ast.Subscript)):
            return self.get(self.path(node))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            left, right = self.value(node.left), self.value(node.right)
            return left // right if isinstance(left, int) and isinstance(right, int) else left / right
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return self.call(node.func.id, node.args)
        if isinstance(node, ast.BoolOp):
            values = (self.value(v) for v in node.values)
            return all(values) if isinstance(node.op, ast.And) else any(values)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return not self.value(node.operand)
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            return _compare(node.ops[0], self.value(node.left), self.value(node.comparators[0]))
        raise ValueError(f"unsupported OTTL: {ast.dump(node)}")

    def call(self, name: str, args: list[ast.expr]) -> Any:
        if name in ("set", "merge_maps", "delete_key"):
            keys = self.path(args[0])
            if name == "set":
                self.set(keys, self.value(args[1]))
            elif name == "merge_maps":
                if self.value(args[2]) != "upsert":
                    raise ValueError("only upsert is supported")
                target = self.get(keys)
                target.update(copy.deepcopy(self.value(args[1])))
            else:
                target = self.get(keys)
                if isinstance(target, dict):
                    target.pop(self.value(args[1]), None)
            return None
        values = [self.value(a) for a in args]
        if name == "IsString":
            return isinstance(values[0], str)
        if name == "IsInt":
            return type(values[0]) is int
        if name == "IsDouble":
            return type(values[0]) is float
        if name == "IsMatch":
            return values[0] is not None and re.search(values[1], str(values[0]), re.ASCII) is not None
        if name == "Int":
            return None if values[0] is None else int(values[0])
        if name == "Concat":
            return values[1].join(str(v) for v in values[0] if v is not None)
        raise ValueError(f"unsupported OTTL function {name}")


def _compare(op: ast.cmpop, left: Any, right: Any) -> bool:
    if isinstance(op, ast.Eq):
        return bool(left == right)
    if isinstance(op, ast.NotEq):
        return bool(left != right)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (left, right))
    if not numeric and not (isinstance(left, str) and isinstance(right, str)):
        return False
    if isinstance(op, ast.Gt):
        return bool(left > right)
    if isinstance(op, ast.GtE):
        return bool(left >= right)
    if isinstance(op, ast.Lt):
        return bool(left < right)
    if isinstance(op, ast.LtE):
        return bool(left <= right)
    raise ValueError(f"unsupported comparison {ast.dump(op)}")


def run(statements: list[str], record: dict[str, Any]) -> dict[str, Any]:
    """Run ``statements`` in order on ``record``'s log context; returns the context afterwards."""
    ctx = log_context(record)
    runner = _Run(ctx)
    for statement in statements:
        action, condition = _split_where(statement)
        if condition is None or runner.value(_python(condition)):
            runner.value(_python(action))
    return ctx

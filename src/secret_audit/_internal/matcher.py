"""Deciding whether a key names a secret, with a cache so the hot path is one dict lookup."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from typing import Any

__all__ = ["KeyMatcher"]

_CACHE_LIMIT = 65536


class KeyMatcher:
    """Glob patterns compiled to one regex; results cached per key, bounded in size."""

    __slots__ = ("_cache", "_match_all", "_regex", "patterns")

    def __init__(self, patterns: Iterable[str], *, case_sensitive: bool = False) -> None:
        pats = list(patterns)
        self.patterns = tuple(pats)  # named by the records of commands that touch every key (FLUSHALL)
        self._match_all = "*" in pats
        flags = 0 if case_sensitive else re.IGNORECASE
        self._regex = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in pats), flags)
        self._cache: dict[Any, bool] = {}

    def __call__(self, key: Any) -> bool:
        """Return True when ``key`` (str or bytes) matches any pattern."""
        try:
            return self._cache[key]
        except KeyError:
            pass
        except (TypeError, ValueError):  # unhashable: redis-py also takes memoryview, bytearray
            if isinstance(key, (memoryview, bytearray)):
                return self(bytes(key))
            return False
        if self._match_all:
            hit = True
        else:
            if isinstance(key, (bytes, memoryview)):
                text = bytes(key).decode("utf-8", "surrogateescape")
            elif isinstance(key, str):
                text = key
            else:
                text = str(key)
            hit = self._regex.match(text) is not None
        cache = self._cache
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[key] = hit
        return hit

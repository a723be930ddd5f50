from collections.abc import Callable
from typing import Any

def configure(
    *,
    dumps: Callable[..., bytes],
    sort_keys: int,
    sha256: Callable[..., Any],
    jsonb: Callable[[Any], bytes],
    fallback: Callable[[Any], str | None],
    typed: frozenset[str],
    str_names: tuple[str, ...],
    empty: bytes,
    hash_key: str,
    duration: str,
) -> None: ...
def finish(p: Any, /) -> str | None: ...
def encode_rows(rows: list[list[Any]], types: bytes, /) -> bytes: ...

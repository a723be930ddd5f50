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
    prepare: Callable[..., Any],
    facts: Callable[[dict[str, Any]], tuple[str | None, str | None, str | None, str | None, bytes]],
    prepared: type,
    record: type,
    epoch_us: int,
    keys: tuple[str, str, str, str],
) -> None: ...
def prepare(
    index: int, rec: Any, scope_tenant: str | None, resources: dict[int, Any] | None = None, /
) -> Any: ...
def finish(p: Any, /) -> str | None: ...
def encode_rows(rows: list[list[Any]], types: bytes, /) -> bytes: ...
def walk_plain(batch: list[Any], head_seq: int, head_hash: str, genesis: str, /) -> bool: ...
def decode_logs(body: bytes, record: type, b64encode: Callable[[bytes], bytes], /) -> Any: ...

"""The stream's sequence and hash chain, defined once so producer, store and verifier agree byte for byte."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = [
    "GENESIS",
    "HASH_ATTRIBUTE",
    "PREV_ATTRIBUTE",
    "canonical_bytes",
    "chain_hash",
]

GENESIS = "0" * 64
HASH_ATTRIBUTE = "audit.chain.hash"
PREV_ATTRIBUTE = "audit.chain.prev"


def canonical_bytes(
    *,
    time_unix_nano: int,
    event_name: str,
    severity_number: int,
    body: str,
    trace_id: str,
    span_id: str,
    attributes: Mapping[str, Any],
) -> bytes:
    """Serialise a record the one way every verifier reproduces: sorted-key JSON without the hash itself."""
    attrs = attributes
    if HASH_ATTRIBUTE in attributes:
        attrs = {k: v for k, v in attributes.items() if k != HASH_ATTRIBUTE}
    return orjson.dumps(
        {
            "attributes": attrs,
            "body": body,
            "event_name": event_name,
            "severity_number": severity_number,
            "span_id": span_id,
            "time_unix_nano": time_unix_nano,
            "trace_id": trace_id,
        },
        option=orjson.OPT_SORT_KEYS,
    )


def chain_hash(canonical: bytes) -> str:
    """Hash the canonical record, which already carries the previous hash in its attributes."""
    return hashlib.sha256(canonical).hexdigest()

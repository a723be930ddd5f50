"""The chain's names under their old spelling; they are defined in the public ``secret_audit.contract``."""

from __future__ import annotations

from secret_audit.contract import CHAIN_HASH as HASH_ATTRIBUTE
from secret_audit.contract import CHAIN_PREV as PREV_ATTRIBUTE
from secret_audit.contract import GENESIS, canonical_bytes, chain_hash

__all__ = [
    "GENESIS",
    "HASH_ATTRIBUTE",
    "PREV_ATTRIBUTE",
    "canonical_bytes",
    "chain_hash",
]

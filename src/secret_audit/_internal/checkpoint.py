"""Signed checkpoints at the source: the pipeline part that owns the signing key, its counters and clock.

The pipeline asks ``due`` after it stamps records (at the end of a drain and before a full batch is
exported), builds the record with ``build``, stamps it like any other and reports it with ``stamped``;
at a clean shutdown it asks for the final one. The checkpoint signs the hash of the last record it
covers, so whoever holds the public key can check that the stored records reproduce it
(``secret_audit.contract.checkpoint_bytes`` is what the signature covers).
"""

from __future__ import annotations

import time
from typing import Any

from secret_audit import contract
from secret_audit._internal.config import ConfigurationError, Settings
from secret_audit.environ import PREFIX

__all__ = ["Checkpoints", "checkpoints_for"]


class Checkpoints:
    """When the next checkpoint of a stream is due (every N records or T seconds) and what it says."""

    def __init__(self, signer: Any, every_records: int, interval_s: float) -> None:
        self._signer = signer
        self.key_id: str = signer.key_id
        self._every = every_records
        self._interval = interval_s
        self.reset()

    def reset(self) -> None:
        """A new stream (start, or a child after fork): nothing attested yet."""
        self._head = 0  # the sequence of the last checkpoint record
        self._covered = 0  # the last sequence it attested
        self._prev = contract.GENESIS  # its chain hash
        self._next_at = time.monotonic() + self._interval
        self._final = False
        self.made = 0

    def due(self, sequence: int, final: bool = False) -> bool:
        """True when the stream, now at ``sequence``, should get a checkpoint (or its final one)."""
        if self._final or sequence == 0:
            return False
        if final:
            return True
        return sequence > self._head and (
            sequence - self._head >= self._every or time.monotonic() >= self._next_at
        )

    def build(
        self, stream_id: str, head_sequence: int, head_hash: str, final: bool
    ) -> tuple[dict[str, Any], int, str]:
        """The signed checkpoint after ``head_sequence``: its attributes, time and body (hashes only)."""
        now = time.time_ns()
        records = head_sequence - self._covered
        attrs: dict[str, Any] = {
            contract.OUTCOME: "success",
            contract.CHECKPOINT_HEAD_SEQUENCE: head_sequence,
            contract.CHECKPOINT_HEAD_HASH: head_hash,
            contract.CHECKPOINT_RECORDS: records,
            contract.CHECKPOINT_KEY_ID: self.key_id,
            contract.CHECKPOINT_PREV: self._prev,
            contract.CHECKPOINT_FINAL: final,
        }
        signed = contract.checkpoint_bytes(
            stream_id=stream_id, sequence=head_sequence + 1, time_unix_nano=now, head_sequence=head_sequence,
            head_hash=head_hash, records=records, key_id=self.key_id, prev=self._prev, final=final,
        )
        attrs[contract.CHECKPOINT_SIGNATURE] = self._signer.sign(signed)
        kind = "Final audit checkpoint" if final else "Audit checkpoint"
        return attrs, now, f"{kind}: records up to sequence {head_sequence} signed by key {self.key_id}"

    def stamped(self, sequence: int, digest: str, final: bool) -> None:
        """The checkpoint took ``sequence`` in the stream and hashed to ``digest``."""
        self._head = sequence
        self._covered = sequence - 1
        self._prev = digest
        self._next_at = time.monotonic() + self._interval
        self._final = final
        self.made += 1


def checkpoints_for(settings: Settings) -> Checkpoints | None:
    """The stream's checkpoint part when a signing key is set, else None."""
    path = settings.signing_key_file
    if path is None:
        return None
    from secret_audit.signing import KeyFileError, load_signer

    try:
        signer = load_signer(path)
    except KeyFileError as exc:
        raise ConfigurationError(PREFIX + "SIGNING_KEY_FILE", path, f"an Ed25519 private key in PEM "
                                 f"(the file {exc.reason})") from None
    return Checkpoints(signer, settings.checkpoint_records, settings.checkpoint_interval_ms / 1000)

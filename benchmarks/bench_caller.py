"""The caller's path with the audit agent, piece by piece: the calling thread's CPU per call, no I/O.

A GET's wrapper is called around a function that returns at once (no Redis round trip), so what
is left is ours: wrapt, describe and key match, the Access, the shapes, the span ids, the ring
write. Each piece is measured by itself, the variants interleaved round by round, in thread CPU
time (``time.thread_time_ns``), so the agent's own CPU (another process) is not counted.
The short way of a single-key command (``redis_single``) shows as ``submit_one`` and ``ring put_one``;
the async ``execute_command`` (redis.asyncio) is its coroutine driven to its end without an event loop;
``BENCH_AGENT=off`` measures the in-process hand-off instead (no ring pieces).
Run: .venv/bin/python benchmarks/bench_caller.py   (BENCH_ROUNDS, BENCH_OPS, BENCH_AGENT, BENCH_SPANS_VIA)
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable

import wrapt
from _common import otlp_sink


def main() -> int:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    from secret_audit._internal.bootstrap import pipeline_for
    from secret_audit._internal.config import load_settings
    from secret_audit._internal.matcher import KeyMatcher
    from secret_audit._internal.redis_calls import Commands, Wrappers

    rounds = int(os.environ.get("BENCH_ROUNDS", "9"))
    per_round = int(os.environ.get("BENCH_OPS", "10000"))  # with its warm-up, within the ring's 16,384 slots
    provider = TracerProvider()  # no processor: spans made in the app cost only their making here
    trace.set_tracer_provider(provider)
    tracer = provider.get_tracer("bench")
    with otlp_sink() as sink:
        env = {"OTEL_PYTHON_SECRET_AUDIT_EXPORTER_OTLP_ENDPOINT": sink + "/v1/logs",
               "OTEL_PYTHON_SECRET_AUDIT_AGENT": os.environ.get("BENCH_AGENT", "process"),
               "OTEL_PYTHON_SECRET_AUDIT_SPANS_VIA": os.environ.get("BENCH_SPANS_VIA", "agent")}
        pipeline = pipeline_for({"settings": load_settings(env)})
        handoff = pipeline.handoff
        matcher = KeyMatcher(["secret:*"])
        wrappers = Wrappers(handoff, matcher)
        commands = Commands(matcher, None, lambda: None)

        class Client:
            def execute_command(self, *args: object, **kwargs: object) -> bytes:
                return b"x" * 64

        class Wrapped(Client):
            pass

        class Passthrough(Client):
            pass

        class AsyncClient:  # redis.asyncio's execute_command: a coroutine, here one that never suspends
            async def execute_command(self, *args: object, **kwargs: object) -> bytes:
                return b"x" * 64

        class AsyncWrapped(AsyncClient):
            pass

        wrapt.wrap_function_wrapper(Wrapped, "execute_command", wrappers.execute_command)
        wrapt.wrap_function_wrapper(AsyncWrapped, "execute_command", wrappers.async_execute_command)
        wrapt.wrap_function_wrapper(Passthrough, "execute_command",
                                    lambda wrapped, instance, args, kwargs: wrapped(*args, **kwargs))
        bare, wrapped, passthrough = Client(), Wrapped(), Passthrough()
        abare, awrapped = AsyncClient(), AsyncWrapped()

        def drive(client: AsyncClient) -> object:
            """Its coroutine run to its end without an event loop: the caller's path alone."""
            coro = client.execute_command(*args)
            try:
                coro.send(None)
            except StopIteration as done:
                return done.value
            raise RuntimeError("the coroutine suspended")

        args = ("GET", "secret:bench")
        wrapped.execute_command(*args)  # registers the ring, sends the shape
        found = commands.describe(bare, args, {})
        ring = getattr(handoff, "ring", None)  # None in-process (BENCH_AGENT=off): no ring, no shapes here
        from opentelemetry.context import get_current

        ctx = get_current()
        access = commands.access(wrapped, args, {}, found, 1, 2, ctx, b"x", None)
        builder = getattr(handoff, "_builder", None)
        item = commands.items(args, found, b"x", None)[0]

        def write() -> None:
            idx = ring.reserve()
            if idx < 0:  # full: the agent settles, then there is room
                handoff.flush(30)
                idx = ring.reserve()
            ring.write(idx, 0, 1, 2, 0, 0, 0, [0], 0)

        pieces: dict[str, Callable[[], object]] = {
            "bare call": lambda: bare.execute_command(*args),
            "wrapt passthrough": lambda: passthrough.execute_command(*args),
            "describe (lookup, keys, match)": lambda: commands.describe(bare, args, {}),
            "access (results, Access tuple)": lambda: commands.access(wrapped, args, {}, found, 1, 2, ctx, b"x",
                                                                       None),
            **({"shapes_of": lambda: builder.shapes_of(access), "ring reserve + write": write}
               if ring is not None else {}),
            **({"ring put": lambda: ring.put(0, 1, 2, 0, 0, 0, [0], 0)} if hasattr(ring, "put") else {}),
            **({"ring put_one": lambda: ring.put_one(0, 1, 2, 0, 0, 0, 0, 0)} if hasattr(ring, "put_one") else {}),
            f"submit ({type(handoff).__name__})": lambda: handoff.submit(access),
            **({"submit_one (a prepared Item)": lambda: handoff.submit_one(access.source, wrapped, item, 1, 2, ctx)}
               if hasattr(handoff, "submit_one") else {}),
            "whole GET, outside a trace": lambda: wrapped.execute_command(*args),
            "bare coroutine (async)": lambda: drive(abare),
            "whole async GET, outside a trace": lambda: drive(awrapped),
        }

        def in_span() -> None:
            with tracer.start_as_current_span("request"):
                wrapped.execute_command(*args)

        def span_alone() -> None:
            with tracer.start_as_current_span("request"):
                pass

        pieces["request span alone"] = span_alone
        def in_span_async() -> None:
            with tracer.start_as_current_span("request"):
                drive(awrapped)

        pieces["request span + GET"] = in_span
        pieces["request span + async GET"] = in_span_async
        cpu: dict[str, list[float]] = {name: [] for name in pieces}
        clock = time.thread_time_ns
        for _ in range(rounds):
            for name, op in pieces.items():
                for _ in range(per_round // 10):
                    op()
                t0 = clock()
                for _ in range(per_round):
                    op()
                cpu[name].append((clock() - t0) / per_round / 1000)
                if "GET" in name or "submit" in name or "ring" in name:
                    pipeline.flush(30)  # the ring's bound is its settled slots: let the agent catch up
        print(f"thread CPU per call, median of {rounds} rounds of {per_round} (µs); "
              f"AGENT={env['OTEL_PYTHON_SECRET_AUDIT_AGENT']}, "
              f"SPANS_VIA={env['OTEL_PYTHON_SECRET_AUDIT_SPANS_VIA']}, load {os.getloadavg()[0]:.1f}")
        for name, values in cpu.items():
            print(f"  {name:<34} {statistics.median(values):7.2f}  ({min(values):.2f} - {max(values):.2f})")
        pipeline.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

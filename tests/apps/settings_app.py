"""Run under opentelemetry-instrument by tests/test_documented_settings.py: the same accesses every time.

Outside a trace: a secret written and read, a missing secret, a key that is no secret by the default
patterns, and one in upper case. Inside a request span: one read. Then the pipeline's counters.
"""

import json
import os
import sys

import redis
from opentelemetry import trace

client = redis.Redis.from_url(os.environ["REDIS_URL"])
prefix = sys.argv[1]
value = sys.argv[2]
client.set(f"secret:{prefix}", value)
client.get(f"secret:{prefix}")
client.get(f"secret:{prefix}:missing")
client.set(f"plain:{prefix}", value)
client.get(f"SECRET:{prefix}")
with trace.get_tracer("settings-app").start_as_current_span("request"):
    client.get(f"secret:{prefix}")
if "--unknown" in sys.argv:  # a module's command the server does not know
    try:
        client.execute_command("VAULTMOD.READ", f"secret:{prefix}")
    except redis.ResponseError:
        pass

from secret_audit._internal.pipeline import peek_pipeline  # noqa: E402

pipeline = peek_pipeline()
if pipeline is not None:
    pipeline.flush(10)
    print("stats " + json.dumps(pipeline.stats(), default=str), flush=True)

"""Run under opentelemetry-instrument: a few secret accesses inside a request span, no audit code."""

import os
import sys

import redis
from opentelemetry import trace

from secret_audit import audit_context

client = redis.Redis.from_url(os.environ["REDIS_URL"])
key = sys.argv[1]
value = sys.argv[2]
tracer = trace.get_tracer("launcher-app")
with tracer.start_as_current_span("handle-request"):
    with audit_context(enduser="alice@example.com", client_address="203.0.113.7"):
        client.set(key, value)
        assert client.get(key) == value.encode()
    client.get(key + ":missing")
    client.delete(key)
client.get("not-a-protected-key")

"""A service that keeps secrets in Redis, with no audit code at all: run it under opentelemetry-instrument."""

import os

import redis
from opentelemetry import trace

from secret_audit import audit_context

r = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
tracer = trace.get_tracer("quickstart")

# Internal access: server code reads its own credentials directly (seed 000).
r.set("secret:ses-credentials", "AKIA-not-a-real-key")
r.get("secret:ses-credentials")
r.get("secret:missing-secret")

# External access: on behalf of an API client, inside a request span.
with (
    tracer.start_as_current_span("GET /api/secrets/twilio"),
    audit_context(enduser="alice@example.com", client_address="203.0.113.7"),
):
    r.hset("secret:twilio-credentials", mapping={"sid": "AC-demo", "token": "demo-token"})
    r.hgetall("secret:twilio-credentials")

# Not a secret by the default key patterns: not audited.
r.set("page-cache:/home", "<html>")
r.delete("secret:ses-credentials")

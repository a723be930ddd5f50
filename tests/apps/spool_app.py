"""Run under opentelemetry-instrument with a spool: N audited writes, then exit normally."""

import os
import sys

import redis

client = redis.Redis.from_url(os.environ["REDIS_URL"])
prefix, count = sys.argv[1], int(sys.argv[2])
for i in range(count):
    client.set(f"{prefix}:{i}", b"v")

"""Run under opentelemetry-instrument: N audited GETs as fast as one thread can issue them."""

import os
import sys

import redis

client = redis.Redis.from_url(os.environ["REDIS_URL"])
key, count = sys.argv[1], int(sys.argv[2])
client.set(key, b"x" * 64)
get = client.get
for _ in range(count):
    get(key)

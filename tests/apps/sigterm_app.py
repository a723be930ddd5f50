"""Run under opentelemetry-instrument: N audited reads, say so, then wait to be terminated."""

import os
import sys
import time

import redis

client = redis.Redis.from_url(os.environ["REDIS_URL"])
key, count = sys.argv[1], int(sys.argv[2])
for _ in range(count):
    client.get(key)
print("done", flush=True)
time.sleep(60)

"""Run under opentelemetry-instrument: secret values (argv[2]) through every command family."""

import asyncio
import logging
import os
import sys

import redis
import redis.asyncio as aredis

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from canary_ops import async_exercise, sync_exercise  # noqa: E402

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")

key, canary = sys.argv[1], sys.argv[2]
client = redis.Redis.from_url(os.environ["REDIS_URL"])
sync_exercise(client, key, canary)
client.close()


async def main() -> None:
    aclient = aredis.Redis.from_url(os.environ["REDIS_URL"])
    await async_exercise(aclient, key + ":async", canary)
    await aclient.aclose()


asyncio.run(main())
print("done")

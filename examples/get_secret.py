"""The seed-000 pattern: read a secret from Redis, fall back to GCP Secret Manager, cache it with a TTL.

There is no audit code here. Run it under the launcher and every step lands in one audit trail::

    opentelemetry-instrument python examples/get_secret.py db-password

Settings (environment):

- ``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``): the cache;
- ``GCP_PROJECT``: the project that holds the secrets;
- ``SECRET_MANAGER_GRPC_TARGET``: ``host:port`` of a local Secret Manager (tests, emulators),
  reached without TLS or credentials; unset, the client uses Google's endpoint and credentials;
- ``SECRET_CACHE_TTL`` (default 300): seconds a cached secret lives in Redis.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import redis
from google.cloud import secretmanager
from opentelemetry import trace

__all__ = ["SecretFetcher", "get_secret"]

_tracer = trace.get_tracer("examples.get_secret")


class SecretFetcher:
    """Cache-aside secret reads, so the vault is asked once per TTL rather than on every request."""

    def __init__(self, cache: Any, vault: Any, project: str, ttl: int = 300) -> None:
        self.cache = cache
        self.vault = vault
        self.project = project
        self.ttl = ttl

    def get_secret(self, name: str) -> bytes:
        """Return the latest version of secret ``name``, from Redis when cached, else from GCP."""
        key = f"secret:{name}"
        with _tracer.start_as_current_span("get_secret"):
            cached: bytes | None = self.cache.get(key)
            if cached is not None:
                return cached
            version = f"projects/{self.project}/secrets/{name}/versions/latest"
            value: bytes = self.vault.access_secret_version(name=version).payload.data
            # NX: never overwrite a value another worker cached meanwhile.
            self.cache.set(key, value, ex=self.ttl, nx=True)
            return value


def _vault_from_env() -> Any:
    target = os.environ.get("SECRET_MANAGER_GRPC_TARGET")
    if not target:
        return secretmanager.SecretManagerServiceClient()
    import grpc
    from google.cloud.secretmanager_v1.services.secret_manager_service.transports import (
        SecretManagerServiceGrpcTransport,
    )

    transport = SecretManagerServiceGrpcTransport(channel=grpc.insecure_channel(target))
    return secretmanager.SecretManagerServiceClient(transport=transport)


_default: SecretFetcher | None = None


def get_secret(name: str) -> bytes:
    """Read secret ``name`` through the process-wide fetcher configured from the environment."""
    global _default
    if _default is None:
        _default = SecretFetcher(
            redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")),
            _vault_from_env(),
            os.environ["GCP_PROJECT"],
            int(os.environ.get("SECRET_CACHE_TTL", "300")),
        )
    return _default.get_secret(name)


def main(argv: list[str]) -> int:
    """Fetch each named secret twice: the first read fills the cache, the second hits it."""
    for name in argv or ["db-password"]:
        for attempt in ("cold", "warm"):
            value = get_secret(name)
            print(f"{name} ({attempt}): {len(value)} bytes")  # never the value itself
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""getSecret() in the seed-000 style: Redis first, GCP Secret Manager on a miss, then cache with a TTL.

There is no audit code here. Under ``opentelemetry-instrument`` every Redis command on a secret key
and every Secret Manager RPC becomes one audit record, and one audit span inside the current trace.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import redis
from google.cloud import secretmanager
from opentelemetry import trace

__all__ = ["SecretFetcher", "SecretNotFound", "fetcher_from_env"]

_tracer = trace.get_tracer("secret_service.fetcher")


class SecretNotFound(KeyError):
    """Neither the cache nor the vault has this secret."""


@dataclass
class Fetched:
    value: bytes
    source: str  # "cache" or "vault"


class SecretFetcher:
    """Cache-aside reads and write-through rotation; the vault (GCP) is the source of truth."""

    def __init__(self, cache: Any, vault: Any, project: str, ttl: int = 300) -> None:
        self.cache = cache
        self.vault = vault
        self.project = project
        self.ttl = ttl

    @staticmethod
    def cache_key(name: str) -> str:
        return f"secret:{name}"

    def get_secret(self, name: str) -> Fetched:
        """The latest version of ``name``: from Redis when cached, else from GCP (then cached)."""
        from google.api_core import exceptions as gexc

        key = self.cache_key(name)
        with _tracer.start_as_current_span("get_secret"):
            cached: bytes | None = self.cache.get(key)
            if cached is not None:
                return Fetched(cached, "cache")
            version = f"projects/{self.project}/secrets/{name}/versions/latest"
            try:
                value: bytes = self.vault.access_secret_version(name=version).payload.data
            except gexc.NotFound:
                raise SecretNotFound(name) from None
            # NX: never overwrite a value another worker cached meanwhile.
            self.cache.set(key, value, ex=self.ttl, nx=True)
            return Fetched(value, "vault")

    def put_secret(self, name: str, value: bytes) -> str:
        """Add a new version in GCP (creating the secret if needed), then refresh the cache."""
        from google.api_core import exceptions as gexc

        parent = f"projects/{self.project}/secrets/{name}"
        with _tracer.start_as_current_span("put_secret"):
            try:
                version = self.vault.add_secret_version(parent=parent, payload={"data": value})
            except gexc.NotFound:
                self.vault.create_secret(parent=f"projects/{self.project}", secret_id=name,
                                         secret={"replication": {"automatic": {}}})
                version = self.vault.add_secret_version(parent=parent, payload={"data": value})
            self.cache.set(self.cache_key(name), value, ex=self.ttl)
            return str(version.name).rsplit("/", 1)[-1]


def _vault_from_env() -> Any:
    """The real client; with SECRET_MANAGER_GRPC_TARGET, a local stand-in reached without TLS."""
    target = os.environ.get("SECRET_MANAGER_GRPC_TARGET")
    if not target:
        return secretmanager.SecretManagerServiceClient()  # Google's endpoint and your credentials
    import grpc
    from google.cloud.secretmanager_v1.services.secret_manager_service.transports import (
        SecretManagerServiceGrpcTransport,
    )

    return secretmanager.SecretManagerServiceClient(
        transport=SecretManagerServiceGrpcTransport(channel=grpc.insecure_channel(target))
    )


def fetcher_from_env() -> SecretFetcher:
    project = os.environ.get("GCP_PROJECT") or os.environ.get("GOOGLE_CLOUD_PROJECT")
    if not project:
        raise SystemExit("secret_service: set GCP_PROJECT (or GOOGLE_CLOUD_PROJECT)")
    return SecretFetcher(
        redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")),
        _vault_from_env(),
        project,
        int(os.environ.get("SECRET_CACHE_TTL", "300")),
    )

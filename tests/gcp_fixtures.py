"""Fixtures for the GCP tests: the fake Secret Manager, real clients on every transport, an audit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from gcp_fake import FakeEndpoints, fake_secret_manager

TRANSPORTS = ("grpc", "grpc_asyncio", "rest")


@pytest.fixture(scope="session")
def gcp_server() -> Iterator[FakeEndpoints]:
    with fake_secret_manager() as endpoints:
        yield endpoints


def make_client(
    endpoints: FakeEndpoints, transport: str, *, api: str = "v1", credentials: Any = None
) -> Any:
    """A real client of ``api`` on ``transport`` pointed at the fake (the async one for grpc_asyncio)."""
    import importlib

    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials

    mod = importlib.import_module(f"google.cloud.secretmanager_{api}")
    transports = importlib.import_module(
        f"google.cloud.secretmanager_{api}.services.secret_manager_service.transports"
    )
    target = endpoints.grpc_target
    if transport == "grpc":
        channel: Any = grpc.insecure_channel(target)
        if credentials is not None:
            channel = lambda *a, **k: grpc.insecure_channel(target)  # noqa: E731
        t = transports.SecretManagerServiceGrpcTransport(credentials=credentials, channel=channel)
        return mod.SecretManagerServiceClient(transport=t)
    if transport == "grpc_asyncio":
        channel = grpc.aio.insecure_channel(target)
        if credentials is not None:
            channel = lambda *a, **k: grpc.aio.insecure_channel(target)  # noqa: E731
        t = transports.SecretManagerServiceGrpcAsyncIOTransport(credentials=credentials, channel=channel)
        return mod.SecretManagerServiceAsyncClient(transport=t)
    assert transport == "rest"
    return mod.SecretManagerServiceClient(
        credentials=credentials or AnonymousCredentials(),
        transport="rest",
        client_options=ClientOptions(api_endpoint=endpoints.rest_url),
    )


class Caller:
    """Calls a client method the same way whether the client is sync or async."""

    def __init__(self, endpoints: FakeEndpoints, transport: str, **kwargs: Any) -> None:
        self.is_async = transport == "grpc_asyncio"
        self.loop = asyncio.new_event_loop() if self.is_async else None
        if self.loop is not None:
            asyncio.set_event_loop(self.loop)  # grpc.aio binds its channel to the current loop
        self.client = make_client(endpoints, transport, **kwargs)

    def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.client, method)(*args, **kwargs)
        if self.loop is not None:
            result = self.loop.run_until_complete(result)
        return result

    def close(self) -> None:
        if self.loop is not None:
            self.loop.run_until_complete(self.client.transport.close())
            self.loop.close()
            asyncio.set_event_loop(None)
        else:
            self.client.transport.close()


@pytest.fixture
def gcp_caller(gcp_server: FakeEndpoints) -> Iterator[Callable[..., Caller]]:
    made: list[Caller] = []

    def factory(transport: str, **kwargs: Any) -> Caller:
        caller = Caller(gcp_server, transport, **kwargs)
        made.append(caller)
        return caller

    yield factory
    for caller in made:
        caller.close()


@pytest.fixture
def gcp_audit(audit_env: dict[str, str]) -> Iterator[Any]:
    from conftest import instrumented
    from secret_audit.gcp import GcpSecretManagerSecretAuditInstrumentor

    with instrumented(audit_env, GcpSecretManagerSecretAuditInstrumentor()) as helper:
        yield helper

"""A LOCAL STAND-IN for Google Cloud Secret Manager, for the docker compose example only.

It is the fake the tests use (``tests/gcp_fake.py``): the real ``google-cloud-secret-manager`` client
talks to it over plain gRPC, but it is not Google's service, has no IAM and keeps secrets in memory.
With real GCP, leave it out: unset ``SECRET_MANAGER_GRPC_TARGET`` and give the app credentials.

Environment: ``STAND_IN_ADDRESS`` (``0.0.0.0:9090``), ``STAND_IN_PROJECT`` (``demo-project``),
``STAND_IN_SECRETS`` (``name=value,...`` seeded at start).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc

for candidate in (Path(__file__).resolve().parents[2] / "tests", Path("/app/tests")):
    if (candidate / "gcp_fake.py").exists():
        sys.path.insert(0, str(candidate))
        break

from gcp_fake import FakeSecretManager, _grpc_handlers, types_for  # noqa: E402


def main() -> None:
    address = os.environ.get("STAND_IN_ADDRESS", "0.0.0.0:9090")
    project = os.environ.get("STAND_IN_PROJECT", "demo-project")
    fake = FakeSecretManager()
    t = types_for("v1")
    for item in filter(None, os.environ.get("STAND_IN_SECRETS", "").split(",")):
        name, _, value = item.partition("=")
        fake.call("v1", "CreateSecret", t.CreateSecretRequest(parent=f"projects/{project}", secret_id=name,
                                                               secret=t.Secret()))
        fake.call("v1", "AddSecretVersion", t.AddSecretVersionRequest(
            parent=f"projects/{project}/secrets/{name}", payload=t.SecretPayload(data=value.encode())))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=_grpc_handlers(fake))
    server.add_insecure_port(address)
    server.start()
    print(f"Secret Manager STAND-IN (not Google) on {address}, project {project}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(2).wait(5)


if __name__ == "__main__":
    main()

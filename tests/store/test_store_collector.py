"""A real collector's otlphttp exporter (gzip protobuf, auth header, retries) is accepted by the store."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest

from secret_audit.store.config import StoreConfig
from secret_audit.store.service import Store

from .conftest import serve

otel_collector = pytest.importorskip("otel_collector")

CONFIG = """
receivers:
  filelog:
    include: [{log}]
    start_at: beginning
exporters:
  otlphttp:
    endpoint: {url}
    compression: gzip
    headers:
      authorization: "Bearer {token}"
    retry_on_failure:
      enabled: true
      initial_interval: 100ms
      max_interval: 500ms
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    logs:
      receivers: [filelog]
      exporters: [otlphttp]
"""


def _binary() -> str:
    from otel_collector.collector import CollectorManager

    return CollectorManager()._find_binary()


class Recorder:
    """ASGI middleware that notes the transport details of each /v1/logs request."""

    def __init__(self, app, fail_first: int = 1):
        self.app = app
        self.seen: list[dict[str, str]] = []
        self.fail_first = fail_first

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/v1/logs":
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            self.seen.append({"encoding": headers.get("content-encoding", ""),
                              "type": headers.get("content-type", ""),
                              "auth": headers.get("authorization", "").split(" ")[0]})
            if self.fail_first > 0:  # the store is briefly unavailable: the collector must retry
                self.fail_first -= 1
                await send({"type": "http.response.start", "status": 503,
                            "headers": [(b"retry-after", b"0"), (b"content-length", b"0")]})
                await send({"type": "http.response.body", "body": b""})
                return
        await self.app(scope, receive, send)


def test_collector_otlphttp_export_is_accepted(db_url, tokens, tmp_path: Path):
    store = Store(StoreConfig(non_audit="drop"), db_url)
    store.open()
    log = tmp_path / "app.log"
    log.write_text("".join(f"line {i}\n" for i in range(25)))
    recorder: list[Recorder] = []

    def wrap(app):
        recorder.append(Recorder(app))
        return recorder[0]

    try:
        with serve(store, wrap=wrap) as url:
            cfg = tmp_path / "collector.yaml"
            cfg.write_text(CONFIG.format(log=log, url=url, token=tokens["ingest"]))
            proc = subprocess.Popen([_binary(), "--config", str(cfg)], stdout=subprocess.DEVNULL,
                                    stderr=(tmp_path / "collector.err").open("wb"))
            try:
                deadline = time.monotonic() + 20
                while store.counters.dropped_non_audit < 25 and time.monotonic() < deadline:
                    time.sleep(0.05)
            finally:
                proc.terminate()
                proc.wait(10)
            stats = httpx.get(f"{url}/stats", headers=tokens.header("admin")).json()
    finally:
        store.close()
    assert stats["dropped_non_audit"] == 25, (tmp_path / "collector.err").read_text()[-2000:]
    assert stats["rejected"] == 0
    seen = recorder[0].seen
    assert len(seen) >= 2  # the first attempt was refused with 503 and retried
    assert {s["encoding"] for s in seen} == {"gzip"}
    assert {s["type"] for s in seen} == {"application/x-protobuf"}
    assert {s["auth"] for s in seen} == {"Bearer"}

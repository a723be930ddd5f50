"""The store's metrics: Prometheus text from /metrics and OTLP pushes, both made by the OpenTelemetry SDK."""

from __future__ import annotations

import re

import httpx
import pytest

from otlp_receiver import otlp_receiver
from secret_audit.store import _metrics
from secret_audit.store.config import load_store_config

from .conftest import live_stream, opened_store, serve
from .records import chained, to_protobuf

PB = {"Content-Type": "application/x-protobuf"}
ENV = "OTEL_PYTHON_SECRET_AUDIT_STORE_"


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample whose labels include ``labels``."""
    for line in text.splitlines():
        m = re.match(r"^([a-z_:]+)\{(.*)\} (\S+)$", line)
        if m and m.group(1) == name:
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            if all(got.get(k) == v for k, v in labels.items()):
                return float(m.group(3))
    raise AssertionError(f"{name} {labels} not in\n{text}")


def test_prometheus_scrape_shows_ingest_findings_queries_and_subscribers(db_url, tokens):
    config = load_store_config({ENV + "METRICS": "prometheus", ENV + "POOL_SIZE": "4"})
    with opened_store(config, db_url) as store, serve(store) as url:
        ingest = {**PB, **tokens.header("ingest")}
        good = chained(5)
        assert httpx.post(f"{url}/v1/logs", content=to_protobuf(good), headers=ingest).status_code == 200
        assert httpx.post(f"{url}/v1/logs", content=to_protobuf(good[:2]), headers=ingest).status_code == 200
        gappy = chained(6)
        del gappy[2:4]  # sequences 3 and 4 never arrive: one open gap, two missing
        assert httpx.post(f"{url}/v1/logs", content=to_protobuf(gappy), headers=ingest).status_code == 200
        assert httpx.get(f"{url}/api/audit-logs", headers=tokens.header("auditor")).status_code == 200
        assert httpx.get(f"{url}/api/audit-logs", headers=tokens.header("ingest")).status_code == 403
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/metrics", headers=tokens.header("ingest")).status_code == 403
        with live_stream(url, tokens.header("auditor"), max_events=1, event_name="secret.access"):
            scrape = httpx.get(f"{url}/metrics", headers=tokens.header("auditor"))
            httpx.post(f"{url}/v1/logs", content=to_protobuf(chained(1)), headers=ingest)
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    text = scrape.text
    assert sample(text, "secret_audit_store_record_received_total", audit_ingest_result="accepted") == 9
    assert sample(text, "secret_audit_store_record_received_total", audit_ingest_result="duplicate") == 2
    assert sample(text, "secret_audit_store_gap_open") == 1
    assert sample(text, "secret_audit_store_record_missing") == 2
    assert sample(text, "secret_audit_store_finding_open", audit_finding_kind="gap") == 1
    # the search and the stream's opening, both audited
    assert sample(text, "secret_audit_store_query_served_total", audit_role="auditor", audit_outcome="success") == 2
    # an ingest token refused the search and the scrape
    assert sample(text, "secret_audit_store_query_served_total", audit_role="ingest", audit_outcome="denied") == 2
    assert sample(text, "secret_audit_store_subscriber_count") == 1
    assert sample(text, "secret_audit_store_ingest_duration_seconds_count", http_route="/v1/logs") == 3
    assert "# TYPE secret_audit_store_ingest_duration_seconds histogram" in text


def test_otlp_push_reaches_a_receiver_and_flushes_at_close(db_url, tokens, monkeypatch):
    with otlp_receiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", rx.url + "/v1/metrics")
        monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "100000")  # only the final export, at close
        config = load_store_config({ENV + "METRICS": "otlp", ENV + "POOL_SIZE": "4",
                                    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": rx.url + "/v1/metrics"})
        assert config.metrics == ("otlp",)
        with opened_store(config, db_url) as store, serve(store) as url:
            assert httpx.post(f"{url}/v1/logs", content=to_protobuf(chained(3)),
                              headers={**PB, **tokens.header("ingest")}).status_code == 200
            assert rx.latest("secret_audit.store.record.received") is None
        received = rx.latest("secret_audit.store.record.received")
        duration = rx.latest("secret_audit.store.ingest.duration")
    assert received is not None
    assert duration is not None
    assert received["scope"] == "secret_audit.store"
    assert received["resource"]["service.name"] == "secret-audit-store"
    assert {p["attributes"]["audit.ingest.result"]: p["value"] for p in received["points"]}["accepted"] == 3
    assert duration["unit"] == "s"
    assert duration["points"][0]["count"] == 1


def test_no_exporter_no_provider(db_url):
    config = load_store_config({})
    with opened_store(config, db_url) as store:
        assert config.metrics == ()
        assert store.metrics.provider is None
        store.metrics.ingested("/v1/logs", 0.1)  # a no-op


def test_every_store_instrument_is_in_the_semantic_conventions_metrics_table():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "semantic-conventions.md").read_text()
    for name, (_, unit, _) in _metrics.INSTRUMENTS.items():
        rows = [line for line in doc.splitlines() if line.startswith(f"| `{name}` |")]
        assert len(rows) == 1, name
        assert f"`{unit}`" in rows[0], name


@pytest.mark.parametrize("workers", ["2"])
def test_prometheus_with_several_workers_is_refused(workers):
    from secret_audit._internal.config import ConfigurationError

    with pytest.raises(ConfigurationError) as info:
        load_store_config({ENV + "METRICS": "prometheus", ENV + "WORKERS": workers})
    assert info.value.variable == ENV + "METRICS"

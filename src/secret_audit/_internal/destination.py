"""Where audit records go: the exporter's protocol and endpoint, checked together, and the spool's folder.

A protocol the endpoint cannot speak would lose every record at run time, so it stops start-up here.
"""

from __future__ import annotations

from collections.abc import Mapping

from secret_audit._internal.parsers import choice, directory
from secret_audit.environ import PREFIX, ConfigurationError

__all__ = ["PROTOCOLS", "check_endpoint", "protocol_of", "resolve_endpoint", "spool_dir_of"]

PROTOCOLS = ("grpc", "http/protobuf")


def spool_dir_of(
    env: Mapping[str, str], exporter: str, encoder: str, protocol: str, endpoint: str | None
) -> tuple[str | None, bool]:
    """The spool folder (None: no spool) and whether it is the per-user default."""
    name = PREFIX + "SPOOL_DIR"
    raw = env.get(name)
    if raw is not None and raw.strip().lower() == "off":
        return None, False
    usable = exporter == "otlp" and encoder == "fast"
    if raw is not None:
        folder = directory(name, raw)
        if not usable:
            raise ConfigurationError(
                name, raw, f"'off' unless {PREFIX}EXPORTER=otlp and {PREFIX}ENCODER=fast (the spool keeps "
                "our encoded OTLP requests)"
            )
        return folder, False
    if not usable:
        return None, False
    from secret_audit._internal.spooldir import default_spool_dir

    target, _ = resolve_endpoint(protocol, endpoint, env)
    headers = "\n".join(
        env.get(n, "") for n in ("OTEL_EXPORTER_OTLP_LOGS_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS",
                                 PREFIX + "EXPORTER_OTLP_HEADERS")
    )
    return default_spool_dir(protocol, target, headers, env), True


def protocol_of(env: Mapping[str, str]) -> tuple[str, str]:
    """The audit exporter's protocol and the variable that chose it.

    Our own endpoint setting names one place, the audit store or a collector's OTLP/HTTP port:
    it keeps ``http/protobuf`` unless our own protocol setting says otherwise. The generic
    ``OTEL_EXPORTER_OTLP_PROTOCOL`` (which a distro sets to grpc) is for the generic endpoint.
    """
    names = [PREFIX + "EXPORTER_OTLP_PROTOCOL"]
    if not env.get(PREFIX + "EXPORTER_OTLP_ENDPOINT"):
        names += ["OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"]
    for name in names:
        raw = env.get(name)
        if raw is not None and (raw.strip() or name.startswith(PREFIX)):
            return choice(PROTOCOLS)(name, raw), name
    return "http/protobuf", "the default"


def resolve_endpoint(protocol: str, override: str | None, env: Mapping[str, str]) -> tuple[str, str]:
    """The audit exporter's endpoint as the SDK's log exporter would resolve it, and its variable."""
    if override:
        return override, PREFIX + "EXPORTER_OTLP_ENDPOINT"
    logs = env.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")
    if logs:
        return logs, "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if protocol == "grpc":
        return base or "http://localhost:4317", "OTEL_EXPORTER_OTLP_ENDPOINT"
    return (base or "http://localhost:4318").rstrip("/") + "/v1/logs", "OTEL_EXPORTER_OTLP_ENDPOINT"


def check_endpoint(protocol: str, chosen_by: str, override: str | None, env: Mapping[str, str]) -> None:
    """Refuse a protocol the endpoint cannot speak, rather than lose every record at run time."""
    from urllib.parse import urlsplit

    endpoint, variable = resolve_endpoint(protocol, override, env)
    path = urlsplit(endpoint if "://" in endpoint else "//" + endpoint).path
    if protocol == "grpc" and path not in ("", "/"):
        raise ConfigurationError(
            variable, endpoint,
            f"an endpoint without a path for gRPC (the protocol is grpc, from {chosen_by}); "
            f"{path!r} is an OTLP/HTTP path: set {PREFIX}EXPORTER_OTLP_PROTOCOL=http/protobuf",
        )
    if protocol == "http/protobuf" and path in ("", "/"):
        raise ConfigurationError(
            variable, endpoint, "a full OTLP/HTTP logs URL with its path, e.g. http://host:4318/v1/logs"
        )

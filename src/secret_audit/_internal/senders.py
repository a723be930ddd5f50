"""Sending pre-encoded OTLP log requests over HTTP or gRPC, honouring the standard exporter variables."""

from __future__ import annotations

import gzip
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, Protocol

from secret_audit._internal.config import PREFIX, resolve_endpoint
from secret_audit.version import __version__

__all__ = ["GrpcSender", "HttpSender", "SendResult", "Sender", "build_sender", "preload"]

_log = logging.getLogger("secret_audit")

_RETRYABLE_HTTP = frozenset({408, 429, 502, 503, 504})


class SendResult:
    """Outcome of one send: delivered, worth retrying, or permanently refused."""

    OK = "ok"
    RETRY = "retry"
    REFUSED = "refused"


class Sender(Protocol):
    """Delivers one encoded ExportLogsServiceRequest."""

    endpoint: str
    # What the last failed send saw, in words a user can act on; None after a success.
    problem: str | None

    def send(self, body: bytes) -> str:
        """Return a SendResult value."""

    def close(self) -> None:
        """Release connections."""


def _env(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name)
        if value:
            return value
    return None


def _headers(raw: str | None) -> dict[str, str]:
    from urllib.parse import unquote

    headers: dict[str, str] = {}
    for part in (raw or "").split(","):
        if "=" in part:
            key, _, value = part.partition("=")
            headers[unquote(key.strip()).lower()] = unquote(value.strip())
    return headers


class HttpSender:
    """OTLP/HTTP with protobuf bodies, through a urllib3 connection pool.

    urllib3 (what requests is built on) directly: requests' per-call merging of proxy, netrc and
    session settings cost about 0.45 ms of CPU per request here, as much as sending 360 kB.
    Proxies from the standard environment variables are resolved once, at start.
    """

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str],
        *,
        timeout: float,
        gzip_body: bool,
        verify: str | bool,
        cert: tuple[str, str] | str | None,
    ) -> None:
        import urllib3

        self.endpoint = endpoint
        self.problem: str | None = None
        self._headers = {
            "Content-Type": "application/x-protobuf",
            "User-Agent": f"otel-secret-audit/{__version__}",
            **headers,
        }
        if gzip_body:
            self._headers["Content-Encoding"] = "gzip"
        self._gzip = gzip_body
        self._timeout = urllib3.Timeout(total=timeout)
        tls: dict[str, Any] = {}
        if endpoint.lower().startswith("https://"):
            tls["cert_reqs"] = "CERT_REQUIRED" if verify else "CERT_NONE"
            tls["ca_certs"] = verify if isinstance(verify, str) else _default_ca_bundle()
            if isinstance(cert, tuple):
                tls["cert_file"], tls["key_file"] = cert
            elif cert:
                tls["cert_file"] = cert
        proxy = _proxy_for(endpoint)
        self._pool: urllib3.PoolManager
        if proxy:
            self._pool = urllib3.ProxyManager(proxy, num_pools=1, **tls)
        else:
            self._pool = urllib3.PoolManager(num_pools=1, **tls)

    def send(self, body: bytes) -> str:
        import urllib3

        data = gzip.compress(body, 5) if self._gzip else body
        try:
            resp = self._pool.request(
                "POST", self.endpoint, body=data, headers=self._headers, timeout=self._timeout, retries=False
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return self._failed(_http_problem(exc), SendResult.RETRY)
        if 200 <= resp.status < 300:
            self.problem = None
            return SendResult.OK
        if resp.status in _RETRYABLE_HTTP:
            return self._failed(f"HTTP {resp.status}", SendResult.RETRY)
        hint = ""
        if resp.status == 404 and "/v1/traces" in self.endpoint:
            hint = ": no OTLP traces receiver at this path (set OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)"
        elif resp.status == 404:
            hint = (": no OTLP logs receiver at this path (OTLP/HTTP logs go to /v1/logs; "
                    f"set {PREFIX}EXPORTER_OTLP_ENDPOINT)")
        elif resp.status in (401, 403):
            hint = f": set the endpoint's token in {PREFIX}EXPORTER_OTLP_HEADERS"
        return self._failed(f"refused with HTTP {resp.status}{hint}", SendResult.REFUSED)

    def _failed(self, problem: str, result: str) -> str:
        _note(self, problem)
        return result

    def close(self) -> None:
        self._pool.clear()


def _note(sender: Sender, problem: str) -> None:
    """Say once, on stderr, what a failing endpoint answered: retries and the spool say nothing."""
    if problem != sender.problem:
        _log.warning("secret-audit: audit export to %s failed: %s", sender.endpoint, problem)
    sender.problem = problem


def _http_problem(exc: BaseException) -> str:
    text = repr(exc)
    if "BadStatusLine" in text and "\\x00\\x00" in text:
        return (f"the endpoint answered with HTTP/2 frames (a gRPC port?) to an OTLP/HTTP request: "
                f"set {PREFIX}EXPORTER_OTLP_PROTOCOL=grpc or use the OTLP/HTTP port")
    if "Connection refused" in text:
        return "connection refused (nothing listens there)"
    return type(exc).__name__


def _grpc_problem(code: Any, details: str) -> str:
    if "http1.x" in details or "Failed parsing HTTP/2" in details:
        return (f"the endpoint answered HTTP/1.1 to a gRPC request: "
                f"set {PREFIX}EXPORTER_OTLP_PROTOCOL=http/protobuf (with a /v1/logs URL)")
    if "Connection refused" in details:
        return "connection refused (nothing listens there)"
    return f"{getattr(code, 'name', code)}"


def _default_ca_bundle() -> str | None:
    """The CA bundle requests (and so the SDK's exporter) would use; else the system's."""
    try:
        import certifi
    except ImportError:
        return None
    return str(certifi.where())


def _proxy_for(endpoint: str) -> str | None:
    """The proxy the standard ``*_proxy`` / ``no_proxy`` variables give for the endpoint, if any."""
    from urllib.parse import urlsplit

    if sys.platform not in ("darwin", "win32") and not any(k.lower().endswith("_proxy") for k in os.environ):
        return None  # urllib.request reads only these variables here: not imported (0.5 MiB, the agent's too)
    from urllib.request import getproxies, proxy_bypass

    parts = urlsplit(endpoint)
    proxies = getproxies()
    proxy = proxies.get(parts.scheme.lower()) or proxies.get("all")
    if not proxy or proxy_bypass(parts.hostname or ""):
        return None
    return proxy


class GrpcSender:
    """OTLP/gRPC: the LogsService/Export method called with the request bytes as they are."""

    _METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"

    def __init__(
        self, endpoint: str, headers: Mapping[str, str], *, timeout: float, insecure: bool, gzip_body: bool
    ) -> None:
        import grpc

        self.endpoint = endpoint
        self.problem: str | None = None
        target = endpoint.split("://", 1)[-1].rstrip("/")
        options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
        compression = grpc.Compression.Gzip if gzip_body else None
        if insecure:
            self._channel = grpc.insecure_channel(target, options=options, compression=compression)
        else:
            self._channel = grpc.secure_channel(
                target, grpc.ssl_channel_credentials(), options=options, compression=compression
            )
        self._call = self._channel.unary_unary(self._METHOD)
        self._metadata = tuple(headers.items())
        self._timeout = timeout

    def send(self, body: bytes) -> str:
        import grpc

        try:
            self._call(body, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            retryable = {
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.ABORTED,
                grpc.StatusCode.CANCELLED,
                grpc.StatusCode.OUT_OF_RANGE,
                grpc.StatusCode.DATA_LOSS,
            }
            details = exc.details() if hasattr(exc, "details") else ""
            problem = _grpc_problem(code, str(details or ""))
            if code in retryable:
                _note(self, problem)
                return SendResult.RETRY
            _note(self, f"refused: {problem}")
            return SendResult.REFUSED
        self.problem = None
        return SendResult.OK

    def close(self) -> None:
        self._channel.close()


def preload(protocol: str) -> None:
    """Import the transport at start-up, so the first secret access does not wait for it.

    The worker builds its sender lazily; importing ``urllib3`` or ``grpc`` there would hold the
    GIL for tens of milliseconds right when the application starts touching secrets.
    """
    if protocol == "grpc":
        import grpc  # noqa: F401
    else:
        import urllib3  # noqa: F401


def build_sender(
    protocol: str,
    override_endpoint: str | None,
    override_headers: str | None,
    env: Mapping[str, str] | None = None,
    *,
    signal: str = "logs",
) -> Sender:
    """Resolve endpoint, headers, timeout, compression and TLS like the SDK's OTLP ``signal`` exporters."""
    env = os.environ if env is None else env
    own = f"OTEL_EXPORTER_OTLP_{signal.upper()}_"
    headers = _headers(_env(env, own + "HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"))
    headers.update(_headers(override_headers))
    timeout = float(_env(env, own + "TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT") or 10)
    if timeout > 1000:  # the spec says milliseconds; the Python SDK historically used seconds
        timeout /= 1000
    compression = _env(env, own + "COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION")
    gzip_body = (compression or "").lower() == "gzip"
    if signal == "logs":
        endpoint, _ = resolve_endpoint(protocol, override_endpoint, env)
    else:  # the SDK's OTLP/HTTP exporters: the signal's own URL as is, or the base URL and the signal's path
        base = _env(env, "OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318"
        endpoint = _env(env, own + "ENDPOINT") or base.rstrip("/") + f"/v1/{signal}"
    if protocol == "grpc":
        insecure_env = _env(env, own + "INSECURE", "OTEL_EXPORTER_OTLP_INSECURE")
        insecure = endpoint.startswith("http://") or (insecure_env or "").lower() == "true"
        if "://" not in endpoint and insecure_env is None:
            insecure = True
        return GrpcSender(endpoint, headers, timeout=timeout, insecure=insecure, gzip_body=gzip_body)
    ca_file = _env(env, own + "CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE")
    verify: str | bool = ca_file or True
    cert_file = _env(env, own + "CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")
    key_file = _env(env, own + "CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY")
    cert: Any = (cert_file, key_file) if cert_file and key_file else cert_file
    return HttpSender(endpoint, headers, timeout=timeout, gzip_body=gzip_body, verify=verify, cert=cert)

"""Sending pre-encoded OTLP log requests over HTTP or gRPC, honouring the standard exporter variables."""

from __future__ import annotations

import http.client
import logging
import os
import select
import sys
import threading
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

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
    """OTLP/HTTP with protobuf bodies, over one kept-alive connection of the standard library's client.

    ``http.client`` directly: requests' per-call merging of proxy, netrc and session settings cost about
    0.45 ms of CPU per request here, as much as sending 360 kB; urllib3 (requests' own client) imports
    about 2 MiB of modules (its HTTP/2 probe alone brings importlib.metadata, zipfile and csv) into every
    process, the audit agent's included, for a pool this sender never needs: its requests go one at a time.
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
        from urllib.parse import urlsplit

        self.endpoint = endpoint
        self.problem: str | None = None
        self._headers = {
            "Content-Type": "application/x-protobuf",
            "User-Agent": f"otel-secret-audit/{__version__}",
            **headers,
        }
        self._gzip: Any = None
        if gzip_body:
            import gzip

            self._headers["Content-Encoding"] = "gzip"
            self._gzip = gzip
        self._timeout = timeout
        parts = urlsplit(endpoint)
        self._tls = _tls_context(verify, cert) if parts.scheme.lower() == "https" else None
        self._host, self._port = parts.hostname or "localhost", parts.port
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        proxy = _proxy_for(endpoint)
        self._proxy = _proxy_parts(proxy) if proxy else None
        self._unsupported: str | None = None
        if self._proxy and self._tls is None:  # plain HTTP through a proxy: absolute-form requests to it
            self._target = endpoint
            if self._proxy[2]:
                self._headers["Proxy-Authorization"] = self._proxy[2]
        elif self._proxy and self._proxy[3]:
            self._unsupported = ("an https:// proxy for an https:// endpoint (TLS inside TLS) is not "
                                 "supported: give the proxy's http:// URL (a CONNECT tunnel), or name the "
                                 "endpoint in no_proxy")
        self._lock = threading.Lock()  # the kept connection: one request at a time
        self._conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        """A new connection to the endpoint, or to the proxy (tunnelled for TLS); it connects on first use."""
        timeout, tls = self._timeout, self._tls
        if self._proxy:
            host, port, auth, tls_proxy = self._proxy
            if tls is not None:  # a CONNECT tunnel through the proxy, TLS with the endpoint inside it
                tunnel = http.client.HTTPSConnection(host, port or 80, timeout=timeout, context=tls)
                auth_header = {"Proxy-Authorization": auth} if auth else None
                tunnel.set_tunnel(self._host, self._port or 443, auth_header)
                return tunnel
            if tls_proxy:
                import ssl

                return http.client.HTTPSConnection(host, port or 443, timeout=timeout,
                                                   context=ssl.create_default_context())
            return http.client.HTTPConnection(host, port or 80, timeout=timeout)
        if tls is not None:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=tls)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def send(self, body: bytes) -> str:
        if self._unsupported:
            return self._failed(self._unsupported, SendResult.RETRY)
        data = self._gzip.compress(body, 5) if self._gzip else body
        # the kept connection, unless another thread's request holds it: then one of its own, closed after
        kept = self._lock.acquire(blocking=False)
        try:
            conn = self._conn if kept else None
            if conn is not None and conn.sock is not None and _dropped(conn.sock):
                conn.close()  # the endpoint closed the idle connection: a new one, not a failed request
            if conn is None:
                conn = self._connect()
                if kept:
                    self._conn = conn
            try:
                conn.request("POST", self._target, body=data, headers=self._headers)
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                return self._failed(_http_problem(exc), SendResult.RETRY)
            if resp.will_close or not kept:
                conn.close()
        finally:
            if kept:
                self._lock.release()
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
        # never waits: a request still in flight on another thread (at exit) ends by its own timeout
        if self._lock.acquire(blocking=False):
            try:
                if self._conn is not None:
                    self._conn.close()
            finally:
                self._lock.release()


def _dropped(sock: Any) -> bool:
    """Whether the peer closed a kept-alive connection (or wrote to it unasked) since its last answer."""
    if not hasattr(select, "poll"):  # Windows
        return bool(select.select([sock], [], [], 0)[0])
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _proxy_parts(proxy: str) -> tuple[str, int | None, str | None, bool]:
    """A proxy URL's host, port, ``Proxy-Authorization`` (from its user and password), and whether TLS."""
    import base64
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    auth = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        auth = "Basic " + base64.b64encode(pair).decode("ascii")
    return parts.hostname or "localhost", parts.port, auth, parts.scheme.lower() == "https"


def _tls_context(verify: str | bool, cert: tuple[str, str] | str | None) -> Any:
    """The TLS settings of an https:// endpoint: the CA bundle to verify it by, and a client certificate."""
    import ssl

    context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else _default_ca_bundle())
    if verify is False:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if isinstance(cert, tuple):
        context.load_cert_chain(cert[0], cert[1])
    elif cert:
        context.load_cert_chain(cert)
    return context


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
    """OTLP/gRPC: a signal's Export method (logs; the agent's traces), given the request's bytes as is."""

    _METHODS: ClassVar[dict[str, str]] = {
        "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    }

    def __init__(
        self, endpoint: str, headers: Mapping[str, str], *, timeout: float, insecure: bool, gzip_body: bool,
        signal: str = "logs",
    ) -> None:
        import grpc

        self.endpoint = endpoint
        self.insecure = insecure
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
        self.method = self._METHODS[signal]
        self._call = self._channel.unary_unary(self.method)
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
        import http.client  # noqa: F401


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
    elif protocol == "grpc":  # the SDK's OTLP/gRPC exporters: host and port, TLS unless told or http://
        endpoint = _env(env, own + "ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4317"
        insecure_env = _env(env, own + "INSECURE", "OTEL_EXPORTER_OTLP_INSECURE")
        scheme = endpoint.split("://", 1)[0].lower() if "://" in endpoint else ""
        told = insecure_env.lower() == "true" if insecure_env else scheme == "http"
        insecure = scheme != "https" and told
        return GrpcSender(endpoint, headers, timeout=timeout, insecure=insecure, gzip_body=gzip_body,
                          signal=signal)
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

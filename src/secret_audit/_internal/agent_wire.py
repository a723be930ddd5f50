"""What the app and its audit agent agree on besides the ring: the socket's frames, its address, the spawn.

Frames are a kind byte and a payload length: ``R`` registers a ring (its memfd rides along with
SCM_RIGHTS), ``S`` is a shape's static attributes (JSON), ``F`` lets the agent forget shape ids,
``N`` wakes the reader, ``L`` (the app's flush) also has it export what it read once it has read all
that is committed, ``Q`` asks for the stream's counters (``spool`` as its payload: and its spool's);
the agent's ``H`` says which agent and stream serve the app, ``C`` answers ``Q``, and ``E`` says the
stream ended (its final checkpoint durable) after the app half-closed the socket at its shutdown.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import signal
import socket
import struct
import sys
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from secret_audit._internal.config import Settings

if TYPE_CHECKING:  # the app's side only: the agent, which imports this module, starts no process
    import subprocess

__all__ = [
    "EXPORTED", "FRAME", "SPOOLED", "agent_address", "agent_env", "exit_cause", "read_frame",
    "resource_attributes", "settings_bytes", "settings_from", "spawn",
]

FRAME = struct.Struct("<cI")  # message kind, payload length; then the payload
EXPORTED, SPOOLED = 9, 10  # header words the agent keeps for the app's stats()
_LAUNCHER = os.path.join("opentelemetry", "instrumentation", "auto_instrumentation")


def agent_address() -> bytes:
    """A fresh abstract unix socket name: no file system needed, gone with its last descriptor."""
    return b"\0otel-secret-audit-agent-%d-%s" % (os.getpid(), secrets.token_hex(8).encode())


def agent_env() -> dict[str, str]:
    """The app's environment (its settings, resource and endpoints), minus the launcher's sitecustomize."""
    env = dict(os.environ)
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and _LAUNCHER not in p]
    if path:
        env["PYTHONPATH"] = os.pathsep.join(path)
    else:
        env.pop("PYTHONPATH", None)
    return env


def settings_bytes(settings: Settings) -> bytes:
    """The app's settings as it checked them, for the agent (which must not read the environment again:
    ``instrument(settings=...)`` and the spool check may differ from it)."""
    values = {f.name: getattr(settings, f.name) for f in fields(settings)}
    key = values["hmac_key"]
    values["hmac_key"] = key.hex() if key is not None else None
    return json.dumps(values).encode()


def settings_from(data: bytes) -> Settings:
    """The agent's side of ``settings_bytes``."""
    values = json.loads(data)
    key = values["hmac_key"]
    values["hmac_key"] = bytes.fromhex(key) if key is not None else None
    values["redis_key_patterns"] = tuple(values["redis_key_patterns"])
    values["failure_modes"] = tuple(tuple(m) for m in values["failure_modes"])
    return Settings(**values)


def resource_attributes() -> dict[str, Any]:
    """The app's resource (its tracer provider's, as in-process records carry it), for the agent's records."""
    from secret_audit._internal.export import audit_resource

    out: dict[str, Any] = {}
    for key, value in audit_resource().attributes.items():
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def spawn(address: bytes, settings: Settings) -> subprocess.Popen[bytes]:
    """Bind the agent's socket here, then start the agent on it in its own session, without waiting.

    Bound first, so that this process can register (the connection waits in the backlog) while the
    agent is still importing; its own session, so that a signal to the app's process group (Ctrl-C,
    a container's SIGTERM) does not stop it before it drained what the app handed off.
    """
    import subprocess

    listener = _above_stdio(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    try:
        listener.bind(address)
        listener.listen(128)
        proc = subprocess.Popen(
            [sys.executable, "-m", "secret_audit._internal.agent", str(listener.fileno())],
            pass_fds=(listener.fileno(),), start_new_session=True, stdin=subprocess.PIPE, env=agent_env(),
        )
        assert proc.stdin is not None
        with proc.stdin:  # a few hundred bytes: the pipe takes them without waiting for the agent
            proc.stdin.write(settings_bytes(settings))
        return proc
    finally:
        listener.close()


def _above_stdio(sock: socket.socket) -> socket.socket:
    """``sock`` on a descriptor above 2: with the app's stdin closed it took fd 0, which the agent's
    settings pipe replaces in the child (and a closed stdout's fd 1 would get the agent's output)."""
    if sock.fileno() > 2:
        return sock
    high = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, 3)
    sock.close()
    return socket.socket(fileno=high)


def read_frame(sock: socket.socket) -> tuple[bytes, bytes] | None:
    """The next frame from a blocking socket, or None at its end."""
    head = _exactly(sock, FRAME.size)
    if head is None:
        return None
    kind, size = FRAME.unpack(head)
    body = _exactly(sock, size) if size else b""
    return None if body is None else (kind, body)


def _exactly(sock: socket.socket, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        try:
            chunk = sock.recv(left)
        except OSError:
            return None
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def exit_cause(proc: Any, pid: int | None) -> str:
    """How the agent ended, as far as this process can tell (only its parent can reap it)."""
    if proc is not None:
        import subprocess

        try:
            code = proc.wait(2)
        except subprocess.TimeoutExpired:
            return f"agent pid {proc.pid} closed its connection"
        if code < 0:
            return f"agent pid {proc.pid} killed by {signal.Signals(-code).name}"
        return f"agent pid {proc.pid} exited with status {code}"
    return f"agent pid {pid} closed its connection" if pid else "the agent closed its connection"

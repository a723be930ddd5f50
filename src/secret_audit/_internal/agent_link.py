"""The app's socket to its audit agent: the frames it sends, and a watcher reading the agent's answers.

One per ring (a forked child makes its own, to its parent's agent). Over it the app registers its
ring (``R``, the memfd alongside; the agent started first if this process tree has none yet), tells
the agent its shapes (``S``, ``F``: ``agent_shape_ids``), wakes the agent's reader (``N``), has it
export (``L``) and asks for its counters (``Q``). The watcher reads the agent's hello (which agent
and stream serve the ring), its counters (``C``, with the export durations it measured) and the
stream's end (``E``); the socket's end while the app still holds it means the agent is gone, which
the hand-off is told.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from secret_audit._internal import agent_wire as wire
from secret_audit._internal.config import Settings
from secret_audit._internal.export_timings import ExportTimings
from secret_audit._internal.ring import Ring, open_ring

__all__ = ["AgentLink"]


class AgentLink:
    """One connection to the agent; ``lock`` (the hand-off's) keeps frames whole and shapes in order."""

    def __init__(self, lock: threading.Lock, address: bytes | None, proc: Any) -> None:
        self.lock = lock
        self.address = address  # the agent's socket; None: this process tree's agent starts at register()
        self.proc = proc  # the agent's process, if this process started it
        self.sock: socket.socket | None = None
        self.agent_pid: int | None = None
        self.stream_id: str | None = None
        self.timings = ExportTimings()  # durations the agent measured, until the app's metrics take them
        self._hello = threading.Event()  # the agent said which agent and stream serve this ring
        self._asking = threading.Lock()  # one question to the agent at a time
        self._answer = threading.Event()
        self._ended = threading.Event()  # the agent ended this stream (an E frame), or its socket closed
        self._counts: dict[str, Any] = {}

    def register(self, settings: Settings, gone: Callable[[str], None]) -> Ring:
        """A new ring, handed to the agent (started first if there is none: its socket bound here, so that
        registering never waits for it); a watcher then calls ``gone(cause)`` if the agent goes while this
        link is open. OSError when it cannot be reached (AttributeError: no memfd, not Linux)."""
        address = self.address
        if address is None:
            address = wire.agent_address()
            self.proc, self.address = wire.spawn(address, settings), address
        fd, mm = open_ring()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(address)
        body = json.dumps({"pid": os.getpid(), "resource": wire.resource_attributes()}).encode()
        socket.send_fds(sock, [wire.FRAME.pack(b"R", len(body)) + body], [fd])
        os.close(fd)
        self.sock = sock
        watcher = threading.Thread(target=self._watch, args=(sock, gone), name="secret-audit-agent-watch",
                                   daemon=True)
        watcher.start()
        return Ring(mm)

    def send(self, kind: bytes, payload: bytes) -> None:
        """One whole frame, under ``lock``; OSError if the agent went away."""
        assert self.sock is not None
        self.sock.sendall(wire.FRAME.pack(kind, len(payload)) + payload)

    def signal(self, kind: bytes = b"N") -> None:
        """An empty frame (``N`` wakes the agent's reader; ``L``, a flush, also has it export)."""
        sock = self.sock
        if sock is not None:
            # a full socket buffer wakes the reader anyway; a closed one is the watcher's to report
            with contextlib.suppress(OSError):
                sock.send(wire.FRAME.pack(kind, 0), socket.MSG_DONTWAIT)

    def served(self, timeout: float) -> None:
        """Wait (within ``timeout``) until the agent said which agent and stream serve this ring."""
        self._hello.wait(timeout)

    def ask(self, question: bytes, timeout: float) -> dict[str, Any] | None:
        """The agent's counters of this ring's stream (``Q``), or None if it does not answer in time."""
        with self._asking:
            sock = self.sock
            if sock is None:
                return None
            self._answer.clear()
            # whole frames: shapes are sent under the same lock (bounded: the hand-off's close() may run
            # in a signal handler that interrupted this thread while it held it)
            if not self.lock.acquire(timeout=timeout):
                return None
            try:
                sock.sendall(wire.FRAME.pack(b"Q", len(question)) + question)
            except OSError:
                return None
            finally:
                self.lock.release()
            answered = self._answer.wait(timeout)  # also set once the agent is gone
            return self._counts if answered else None

    def close(self, timeout: float, end: bool) -> None:
        """Close the socket; with ``end``, first half-close it and wait (within ``timeout``) until the
        agent ended this stream (its final checkpoint durable; an E frame, or its end closed)."""
        sock, self.sock = self.sock, None
        if sock is None:
            return
        if end:
            # a signed trail ends when shutdown returns, as in-process, not a moment later
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
                self._ended.wait(timeout)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes the watcher's recv; close alone would not end it
        sock.close()

    def forked(self) -> None:
        """In a forked child: close this process's descriptor only (the parent's connection stays open)."""
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()

    def _watch(self, sock: socket.socket, gone: Callable[[str], None]) -> None:
        """Wait for the agent's hello, then for its end: an end while this link is open is reported."""
        hello = wire.read_frame(sock)
        if hello is not None:
            info = json.loads(hello[1])
            self.agent_pid, self.stream_id = int(info["agent_pid"]), str(info["stream_id"])
            self._hello.set()
            while (frame := wire.read_frame(sock)) is not None:
                if frame[0] == b"C":  # the answer to ask()
                    answer = json.loads(frame[1])
                    self.timings.merge(answer.pop("export_durations", {}))  # also of an answer come late
                    self._counts = answer
                    self._answer.set()
                elif frame[0] == b"E":  # the agent ended this stream (after our half-close)
                    self._ended.set()
        if sock is self.sock:
            what = "died" if hello is not None else "exited before serving this process"
            gone(f"it {what} ({wire.exit_cause(self.proc, self.agent_pid)})")
        self._answer.set()  # a question waiting for the agent's answer waits no more
        self._ended.set()

"""Run under opentelemetry-instrument by tests/test_agent.py: audited reads, then one way of ending.

argv: key, count, then the ending: ``kill9`` (SIGKILL itself right after handing off), ``exit``
(a normal exit, nothing flushed by hand), ``wait`` (say "done", then sleep until signalled),
``fork N`` (N forked children read and leave with os._exit), ``prefork N`` (the same, forked before
any access of the parent's), ``agent-dies`` (the agent is stopped,
more reads are handed off, the agent is killed, then more reads), ``canary VALUE`` (reads of a
secret holding VALUE, then what crossed the ring and the agent's socket is printed as hex),
``agent-killed VALUE`` (the agent reads the reads but settles none, is stopped, more reads are handed
off, the agent is killed with -9, then more reads; the secret holds VALUE), ``agent-dies-gap`` (a
slot is reserved and never committed, as by a thread stopped between the two, then reads, then the
agent is killed with -9).
"""

import json
import os
import signal
import sys
import time

import redis

import secret_audit
from secret_audit._internal.pipeline import peek_pipeline

client = redis.Redis.from_url(os.environ["REDIS_URL"])
key, count, ending = sys.argv[1], int(sys.argv[2]), sys.argv[3]


def reads(n: int, name: str = key) -> None:
    for _ in range(n):
        client.get(name)


def stop(pid: int) -> None:
    """SIGSTOP ``pid`` and wait until it is stopped: one of its threads takes the signal and stops the
    rest, and until the scheduler runs that one (the agent runs SCHED_BATCH) the others go on working."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        tasks = os.listdir(f"/proc/{pid}/task")
        states = []
        for task in tasks:
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
        if all(state in "tT" for state in states):
            return
        time.sleep(0.001)
    raise RuntimeError(f"pid {pid} did not stop")


def say(what: str, value: object) -> None:
    # one write per line: forked children share the pipe, and print's text and newline may go apart
    sys.stdout.flush()
    os.write(1, f"{what} {json.dumps(value, default=str)}\n".encode())


if ending == "canary":
    handoff = peek_pipeline().handoff
    handoff.register()  # the agent starts at the first hand-off: here, so that its socket is recorded from the first byte
    sent: list[bytes] = []

    class Recording:
        """The agent's socket, recording what the app sends over it."""

        def __init__(self, sock: object) -> None:
            self.sock = sock

        def sendall(self, data: bytes) -> None:
            sent.append(bytes(data))
            self.sock.sendall(data)

        def send(self, data: bytes, flags: int = 0) -> int:
            sent.append(bytes(data))
            return self.sock.send(data, flags)

    handoff.link.sock = Recording(handoff.link.sock)
    value = sys.argv[4]
    client.set(key, value)
    reads(count)
    client.mget(key, key + ":other")
    try:
        client.hget(key, "field")  # WRONGTYPE: an error whose text the server writes
    except redis.ResponseError:
        pass
    with client.pipeline() as pipe:
        pipe.get(key).get(key).set(key + ":copy", value).execute()
    secret_audit.flush(10)
    say("ring", handoff.ring.mm[:].hex())
    say("socket", b"".join(sent).hex())
    sys.exit(0)

if ending == "agent-killed":
    client.set(key, sys.argv[4])
    agent = secret_audit.stats()["agent"]["pid"]
    reads(count, key + ":read")  # read by the agent; a long SCHEDULE_DELAY_MS keeps them unsettled
    deadline = time.monotonic() + 10
    while secret_audit.stats()["queued"] and time.monotonic() < deadline:
        time.sleep(0.01)
    say("read", secret_audit.stats())
    stop(agent)
    reads(count, key + ":unread")  # handed off; the stopped agent does not read them
    os.kill(agent, signal.SIGKILL)
    os.kill(agent, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while secret_audit.stats()["agent"]["mode"] == "process" and time.monotonic() < deadline:
        time.sleep(0.05)
    reads(2, key + ":after")
    secret_audit.flush(10)
    say("stats", secret_audit.stats())
    sys.exit(0)

if ending == "agent-dies-gap":
    client.set(key, "v")
    agent = secret_audit.stats()["agent"]["pid"]
    say("gap", peek_pipeline().handoff.ring.reserve())  # never committed: the agent reads no further
    reads(count, key + ":behind")
    os.kill(agent, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while secret_audit.stats()["agent"]["mode"] == "process" and time.monotonic() < deadline:
        time.sleep(0.05)
    secret_audit.flush(10)
    say("stats", secret_audit.stats())
    sys.exit(0)

def fork_children(n: int) -> None:
    """N forked children read and say their stats, then leave with os._exit (no atexit, no flush: the
    agent drains the child's ring); the parent waits for them."""
    children = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:
            reads(count, f"{key}:child{i}")
            say("child", secret_audit.stats())
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)


if ending == "prefork":  # a pre-fork server's master: it forks its workers before any access of its own
    fork_children(int(sys.argv[4]))
    say("parent", secret_audit.stats())
    sys.exit(0)

client.set(key, "v")
reads(count)
if ending == "kill9":
    os.kill(os.getpid(), signal.SIGKILL)
elif ending == "exit":
    sys.exit(0)
elif ending == "wait":
    print("done", flush=True)
    time.sleep(60)
elif ending == "fork":
    secret_audit.flush(10)
    say("parent", secret_audit.stats())
    fork_children(int(sys.argv[4]))
    reads(1)
elif ending == "agent-dies":
    secret_audit.flush(10)
    agent = secret_audit.stats()["agent"]["pid"]
    stop(agent)
    during = []
    for _ in range(count):  # handed off; the stopped agent settles none of them
        try:
            reads(1, key + ":unsettled")
            during.append("read")
        except secret_audit.AuditUnavailableError:
            during.append("refused")  # fail-closed: not durable in time
    say("during", during)
    os.kill(agent, signal.SIGKILL)
    os.kill(agent, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while secret_audit.stats()["agent"]["mode"] == "process" and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        reads(2, key + ":after")
        say("after", "read")
    except secret_audit.AuditUnavailableError as exc:
        say("after", f"refused: {exc}")
    secret_audit.flush(10)
    say("stats", secret_audit.stats())

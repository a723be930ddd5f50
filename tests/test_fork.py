"""Streams across fork() and threads: a new stream in the child, one gap-free sequence per stream."""

from __future__ import annotations

import json
import os
import threading

from secret_audit._internal import chain


def stream(recs):
    return [(x["audit.stream.id"], x["audit.sequence"]) for x in recs]


def test_fork_child_gets_a_new_stream_and_the_parent_continues(audit, r, key):
    r.get(key)
    r.get(key)
    before = audit.attrs()
    parent_stream = before[0]["audit.stream.id"]
    assert stream(before) == [(parent_stream, 1), (parent_stream, 2)]
    audit.clear()

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: audit a few accesses, report what was exported, never return to pytest
        code = 1
        try:
            os.close(read_fd)
            r.get(key + ":child")
            r.set(key + ":child", "v")
            r.get(key + ":child")
            recs = [dict(x) for x in audit.attrs()]
            payload = json.dumps(
                [
                    {k: recs[i][k] for k in ("audit.stream.id", "audit.sequence", "audit.chain.prev",
                                              "audit.chain.hash", "secret.name")}
                    for i in range(len(recs))
                ]
            )
            os.write(write_fd, payload.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks = []
    while True:
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    child = json.loads(b"".join(chunks))

    child_stream = child[0]["audit.stream.id"]
    assert child_stream != parent_stream
    assert [(c["audit.stream.id"], c["audit.sequence"]) for c in child] == [
        (child_stream, 1), (child_stream, 2), (child_stream, 3)
    ]
    assert child[0]["audit.chain.prev"] == chain.GENESIS
    assert child[1]["audit.chain.prev"] == child[0]["audit.chain.hash"]
    assert {c["secret.name"] for c in child} == {key + ":child"}

    # the parent's stream is untouched by the child and carries on from 3
    r.get(key)
    after = audit.attrs()
    assert stream(after) == [(parent_stream, 3)]
    assert after[0]["audit.chain.prev"] == before[1]["audit.chain.hash"]


def test_threads_share_one_contiguous_sequence(audit, r, key):
    r.get(key)
    first = audit.attrs()[0]["audit.sequence"]
    audit.clear()
    threads_n, per_thread = 8, 200
    barrier = threading.Barrier(threads_n)
    errors = []

    def work(i: int) -> None:
        try:
            barrier.wait(10)
            for j in range(per_thread):
                r.get(f"{key}:{i}:{j % 7}")
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    recs = audit.attrs()
    assert len(recs) == threads_n * per_thread
    seqs = [x["audit.sequence"] for x in recs]
    assert seqs == list(range(first + 1, first + 1 + threads_n * per_thread))  # in order, no gaps
    assert len({x["audit.event.id"] for x in recs}) == len(recs)
    assert len({x["audit.stream.id"] for x in recs}) == 1
    for prev, cur in zip(recs, recs[1:]):
        assert cur["audit.chain.prev"] == prev["audit.chain.hash"]
    per_thread_counts = {}
    for x in recs:
        t = x["secret.name"].split(":")[2]
        per_thread_counts[t] = per_thread_counts.get(t, 0) + 1
    assert per_thread_counts == {str(i): per_thread for i in range(threads_n)}

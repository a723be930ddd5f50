"""A store server process exempts its startup heap from garbage collection (run in child processes:
the settings are process-wide and must not change pytest's own collector)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

_PROBE = """
import gc, json
from secret_audit.store._heap import YOUNG_THRESHOLD, settle_heap
{setup}
print(json.dumps([gc.get_freeze_count(), gc.get_threshold()[0], gc.isenabled(), YOUNG_THRESHOLD]))
"""


def _probe(setup: str, env: dict[str, str] | None = None) -> list[object]:
    done = subprocess.run([sys.executable, "-c", _PROBE.format(setup=setup)], capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_defaults_are_left_alone_until_a_server_settles() -> None:
    frozen, young, enabled, wanted = _probe("")
    assert (frozen, young, enabled) == (0, 700, True)
    assert young != wanted


def test_settle_heap_freezes_the_startup_heap_and_raises_the_young_threshold() -> None:
    frozen, young, enabled, wanted = _probe("settle_heap()")
    assert frozen > 10_000  # the interpreter, the store's modules and their dependencies
    assert (young, enabled) == (wanted, True)


def test_a_disabled_collector_stays_disabled_and_a_higher_threshold_stays() -> None:
    assert _probe("gc.disable(); settle_heap()")[2] is False
    assert _probe("gc.set_threshold(0); settle_heap()")[1] == 0
    assert _probe("gc.set_threshold(50_000); settle_heap()")[1] == 50_000


def test_a_worker_process_settles_its_heap_once_its_app_is_built() -> None:
    # the app factory of `store serve --workers N` (building it opens no connection)
    frozen, young, _, wanted = _probe(
        "from secret_audit.store.app import from_environment\napp = from_environment()",
        env={**os.environ, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"},
    )
    assert frozen > 10_000
    assert young == wanted

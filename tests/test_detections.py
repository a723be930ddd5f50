"""The Sigma rules of detections/: valid for pySigma, convertible to Splunk SPL, and each one fires on a
demo-made trail that has its pattern and stays silent on one that has not.

tests/data/demo-trail.jsonl is the full trail (``secret-audit query --all --json``) of one
``examples/demo.py`` run, with its watch windows in demo-trail.json: a baseline, a quiet window that
repeats it, and the attack. tests/test_demo.py checks that a fresh demo run still matches the same
rules, so the file cannot drift from the demo. The loss, integrity and refusal rules fire on trails a
real producer makes against a real store: tests/store/test_store_detections.py.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

import detect  # noqa: E402

DATA = Path(__file__).parent / "data"
TRAIL = detect.read_trail(DATA / "demo-trail.jsonl")
WINDOWS = json.loads((DATA / "demo-trail.json").read_text())
RULES = detect.load_rules()
STANDING = [r for r in RULES if r.title not in ("Failed secret access", "Secret not found")]

ATTACK = {
    "Burst of failed secret accesses by one principal": {"enduser.id": "mallory@example.net"},
    "Burst of failed secret accesses from one client address": {"client.address": "192.0.2.66"},
    "Secret enumeration by one principal": {"enduser.id": "mallory@example.net"},
    "Secret read by an end user for the first time": {"enduser.id": "bob@example.com",
                                                      "secret.name": "secret:db-password"},
    "Secret access from a new client address": {"enduser.id": "bob@example.com",
                                                "client.address": "198.51.100.99"},
}
OFF_HOURS = "Secret access by an API client off hours"
ELSEWHERE = {"Audit records lost", "Audit record failed its integrity check on ingest",
             "Secret calls refused in fail-closed mode", "Secrets wiped or swapped in bulk"}


def at(iso: str, hour: int) -> str:
    """An ISO time moved to ``hour`` o'clock UTC of its day (minutes and seconds kept)."""
    return f"{iso[:11]}{hour:02d}{iso[13:]}"


def at_hour(trail: list[dict[str, Any]], hour: int) -> list[dict[str, Any]]:
    """The same trail with every record moved to ``hour`` o'clock (the demo ran within one hour)."""
    moved = copy.deepcopy(trail)
    for e in moved:
        e["time"] = at(e["time"], hour)
    return moved


def quiet_trail() -> list[dict[str, Any]]:
    """The demo's trail up to the attack: the baseline, then users repeating it."""
    return [e for e in TRAIL if e["time"] < WINDOWS["attack_from"]]


def test_every_rule_validates_with_pysigmas_validators():
    from sigma.validation import SigmaValidator
    from sigma.validators.core import validators

    # the ATT&CK and D3FEND tag validators download MITRE data at run time: not on this machine
    offline = [v for name, v in validators.items() if name not in ("attacktag", "d3_fendtag")]
    assert len(offline) >= 25
    assert [r for r in RULES if r.errors] == []
    issues = SigmaValidator(offline).validate_rules(iter(RULES.rules))
    assert issues == []
    assert len(list(RULES)) == 13


def test_every_rule_converts_to_splunk_spl():
    from sigma.backends.splunk import SplunkBackend

    queries = SplunkBackend().convert(RULES)
    assert len(queries) == len(STANDING) == 11  # the two building blocks stand only inside correlations
    joined = "\n".join(queries)
    assert 'event_name="secret.access" audit.outcome IN ("denied", "not_found")' in joined
    assert "| stats count as event_count by _time enduser.id" in joined
    assert "| stats dc(secret.name) as value_count by _time enduser.id" in joined
    assert '| regex time="T(0[0-6]|19|2[0-3]):"' in joined
    assert 'event_name="audit.dropped"' in joined


def test_every_rule_is_in_the_rules_table():
    table = (ROOT / "docs" / "monitoring.md").read_text()
    for rule in RULES:
        assert f"| {rule.title} |" in table, rule.title
    for path in (ROOT / "detections").glob("*.yml"):
        assert f"`detections/{path.name}`" in table, path.name


def test_the_quiet_window_is_silent():
    fired = detect.evaluate(at_hour(quiet_trail(), 10), RULES, since=at(WINDOWS["quiet_from"], 10))
    assert fired == {}


def test_the_attack_fires_its_rules_and_only_those():
    fired = detect.evaluate(at_hour(TRAIL, 10), RULES, since=at(WINDOWS["attack_from"], 10))
    assert set(fired) == set(ATTACK)
    for title, group in ATTACK.items():
        assert [h.group for h in fired[title]][0] == group, title


@pytest.mark.parametrize("title", sorted(ATTACK))
def test_each_attack_rule_fires_on_the_attack_and_not_before(title):
    rules = [r for r in RULES if r.title == title or title.startswith("Burst") and r.title == "Failed secret access"
             or title.startswith("Secret enumeration") and r.title == "Secret not found"]
    from sigma.collection import SigmaCollection

    only = SigmaCollection(rules)
    only.resolve_rule_references()
    assert title in detect.evaluate(TRAIL, only, since=WINDOWS["attack_from"])
    assert title not in detect.evaluate(quiet_trail(), only, since=WINDOWS["quiet_from"])


def test_off_hours_fires_at_night_and_not_by_day():
    rules = [r for r in RULES if r.title == OFF_HOURS]
    from sigma.collection import SigmaCollection

    night = detect.evaluate(at_hour(quiet_trail(), 3), SigmaCollection(rules))
    day = detect.evaluate(at_hour(quiet_trail(), 14), SigmaCollection(rules))
    external = [e for e in quiet_trail() if e["event_name"] == "secret.access" and e["access_path"] == "external"]
    assert len(night[OFF_HOURS]) == len(external) > 0
    assert day == {}
    assert detect.evaluate(at_hour(quiet_trail(), 19), SigmaCollection(rules))  # 19:00 is off hours
    assert not detect.evaluate(at_hour(quiet_trail(), 18), SigmaCollection(rules))


def test_the_loss_integrity_and_refusal_rules_are_silent_on_the_demo_trail():
    fired = detect.evaluate(TRAIL, RULES)
    assert not ELSEWHERE & set(fired)


def test_new_terms_needs_all_its_fields_new_together():
    """bob's baseline pair and address were seen; his new secret and new address each fire once."""
    fired = detect.evaluate(TRAIL, RULES, since=WINDOWS["quiet_from"])
    first = fired["Secret read by an end user for the first time"]
    assert [h.group for h in first] == [ATTACK["Secret read by an end user for the first time"]]


def test_the_command_prints_what_fires(capsys):
    assert detect.main([str(DATA / "demo-trail.jsonl"), "--since", WINDOWS["attack_from"]]) == 0
    out = capsys.readouterr().out
    assert "high      Secret enumeration by one principal: " in out
    assert "(enduser.id=mallory@example.net)" in out

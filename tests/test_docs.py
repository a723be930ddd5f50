"""The docs stay true: every setting the code reads is in the configuration table, and vice versa."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def code_variables() -> set[str]:
    from secret_audit._internal.config import SETTINGS

    names = {s.suffix for s in SETTINGS}  # the producer's: one table
    src = (ROOT / "src/secret_audit/hashing.py").read_text()  # the HMAC key's two variables, read there
    names |= set(re.findall(r'PREFIX \+ "([A-Z_]+)"', src))
    store = (ROOT / "src/secret_audit/store/config.py").read_text()
    store += (ROOT / "src/secret_audit/store/_cli.py").read_text()
    store_names = set(re.findall(r'STORE \+ "([A-Z_]+)"', store))
    store_names |= set(re.findall(r'_int\(env, "([A-Z_]+)"', store))
    store_names |= set(re.findall(r'_read\(\s*env,\s*"STORE_([A-Z_]+)"', store))
    names |= {"STORE_" + n for n in store_names}
    names |= set(re.findall(r"OTEL_PYTHON_SECRET_AUDIT_(STORE_[A-Z_]+)", (ROOT / "src/secret_audit/cli.py").read_text()))
    return {"OTEL_PYTHON_SECRET_AUDIT_" + n for n in names}


def documented_variables() -> set[str]:
    text = (ROOT / "docs/configuration.md").read_text()
    return set(re.findall(r"^\| `(OTEL_PYTHON_SECRET_AUDIT_[A-Z_]+)`", text, re.M))


def test_every_setting_is_documented_and_every_documented_setting_exists():
    code = code_variables()
    assert len(code) >= 20
    assert code == documented_variables()


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text()
    assert "`bash scripts/test.sh`" in readme
    assert "bash scripts/test.sh" in ci.splitlines()[-1]


def test_every_record_attribute_is_in_the_semantic_conventions():
    text = (ROOT / "docs/semantic-conventions.md").read_text()
    # the record builder, the loss ledger and the worker make the records
    src = "".join((ROOT / f"src/secret_audit/_internal/{m}.py").read_text() for m in ("shapes", "ledger", "pipeline"))
    produced = set(re.findall(r'attrs\["((?:secret|audit|error|enduser|client)\.[a-z_.]+)"\]', src))
    produced |= set(re.findall(r'"(audit\.dropped\.[a-z_]+)"', src))
    contract = (ROOT / "src/secret_audit/contract.py").read_text()  # every key the contract names
    produced |= set(re.findall(r'^[A-Z_]+ = "((?:secret|audit|error|enduser|client)\.[a-z_.]+)"', contract, re.M))
    assert len(produced) >= 30
    missing = {a for a in produced if f"`{a}`" not in text}
    assert not missing

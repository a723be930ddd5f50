"""The demo's watch of its own trail: traffic after the baseline, a burst by mallory, and what saw it.

After the demo's first requests (the baseline), ``quiet`` repeats what users already did (nothing
new: no rule fires), then ``provoke`` starts the attack: mallory guesses six secret names from one
address, and bob reads a secret he never read, from an address he never used. The store alerts a
local webhook on the burst, the Sigma rules of ``detections/`` match the trail, and the app's and
the store's metrics count it all.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass, field
from typing import Any

GUESSES = ("prod-root-token", "admin-password", "aws-secret-key", "stripe-live-key", "vault-unseal", "ssh-ca")
METRICS = ("secret_audit.record.created", "secret_audit.record.exported", "secret_audit.export.duration")
STORE_METRICS = ("secret_audit_store_record_received_total", "secret_audit_store_query_served_total",
                 "secret_audit_store_alert_sent_total")


@dataclass
class Watch:
    """What the watch saw: its window boundaries, requests, alerts, metrics and rule matches."""

    quiet_from: str = ""
    attack_from: str = ""
    requests: list[tuple[str, int]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    app_metrics: list[str] = field(default_factory=list)
    store_metrics: list[str] = field(default_factory=list)
    matched: dict[str, Any] = field(default_factory=dict)  # rule title -> hits, from attack_from on
    quiet_matched: dict[str, Any] = field(default_factory=dict)  # the quiet window alone


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _get(app_url: str, name: str, user: str, address: str) -> tuple[str, int]:
    import httpx

    resp = httpx.get(f"{app_url}/api/secrets/{name}", headers={"X-User": user, "X-Forwarded-For": address},
                     timeout=30)
    return f"GET /api/secrets/{name} as {user} from {address}", resp.status_code


def quiet(app_url: str, names: list[str], watch: Watch) -> None:
    """Users doing again what they did in the baseline: same secrets, same addresses."""
    watch.quiet_from = now()
    watch.requests.append(_get(app_url, names[-1], "alice@example.com", "203.0.113.7"))
    watch.requests.append(_get(app_url, names[0], "bob@example.com", "198.51.100.23"))


def provoke(app_url: str, names: list[str], watch: Watch) -> None:
    """Mallory's burst of guesses from one address, and bob's first read of another secret, from elsewhere."""
    time.sleep(0.01)  # the attack starts strictly after the quiet window's last record
    watch.attack_from = now()
    for guess in GUESSES:
        watch.requests.append(_get(app_url, guess, "mallory@example.net", "192.0.2.66"))
    watch.requests.append(_get(app_url, names[1], "bob@example.com", "198.51.100.99"))


def app_metric_lines(receiver: Any) -> list[str]:
    """A few of the metrics the app exported (OTLP/HTTP to the stand-in receiver), one line each."""
    lines = []
    for name in METRICS:
        metric = receiver.latest(name)
        for point in (metric or {}).get("points", []):
            attrs = ",".join(f"{k}={v}" for k, v in point["attributes"].items())
            value = (f"count={point['count']} sum={point['sum']:.4f}s" if "count" in point
                     else str(point["value"]))
            lines.append(f"{name}{{{attrs}}} {value}")
    return lines


def store_metric_lines(url: str, token: str) -> list[str]:
    """The store's own metrics, scraped from /metrics (Prometheus text), a few series."""
    import httpx

    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30).text
    return [line for line in text.splitlines() if line.startswith(STORE_METRICS) and not line.endswith(" 0.0")]


def detections(events: list[dict[str, Any]], watch: Watch) -> None:
    """The Sigma rules that match the trail from the attack on, and (none) in the quiet window."""
    import detect

    rules = detect.load_rules()
    watch.matched = detect.evaluate(events, rules, since=watch.attack_from)
    before = [e for e in events if e["time"] < watch.attack_from]
    watch.quiet_matched = detect.evaluate(before, rules, since=watch.quiet_from)


def report(watch: Watch) -> None:
    """Print the watch: alerts received, metrics, matching rules."""
    print("\nThe watch (after the baseline: a quiet window, then mallory's burst and bob's first read):")
    for line, status in watch.requests:
        print(f"  {status}  {line}")
    print("\nMetrics the app emitted through its MeterProvider (OTLP/HTTP, a few lines):")
    for line in watch.app_metrics:
        print(f"  {line}")
    print("The store's metrics (GET /metrics, Prometheus text from the OpenTelemetry SDK, scope labels left out):")
    for line in watch.store_metrics:
        print("  " + re.sub(r',?otel_scope_\w+="[^"]*"', "", line).replace("{,", "{"))
    print(f"\nAlerts received by the local webhook ({len(watch.alerts)}, signatures verified):")
    for alert in watch.alerts:
        if alert["kind"] == "burst":
            print(f"  [{alert['severity']}] {alert['kind']}: {alert['summary']}")
            print(f"      secrets tried: {', '.join(alert['details']['secrets'])}")
    others: dict[str, int] = {}
    for alert in watch.alerts:
        if alert["kind"] != "burst":
            others[alert["kind"]] = others.get(alert["kind"], 0) + 1
    if others:
        print("  and " + ", ".join(f"{n} {k}" for k, n in sorted(others.items())) + " alerts")
    print(f"\nSigma rules (detections/) that match the trail since the attack began ({watch.attack_from}):")
    for title, hits in watch.matched.items():
        group = ", ".join(f"{k}={v}" for k, v in hits[0].group.items())
        print(f"  {hits[0].level:8}  {title}" + (f"  ({group})" if group else ""))
    quiet_rules = ", ".join(watch.quiet_matched) or "none"
    print(f"  in the quiet window before it: {quiet_rules}")

"""`secret-audit query` and `tail`: the store's HTTP API from the command line.

Every way the store can be out of reach or not the store (refused connection, bad URL, another
server, an error answer) ends in one line on stderr and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from secret_audit.exceptions import ConfigurationError
from secret_audit.store import _layout
from secret_audit.store.config import STORE

__all__ = ["StoreUnusable", "query", "tail", "wait"]

# layouts printed one line per event as pages or messages arrive
_LINES = {"json": _layout.json_line, "ocsf": _layout.ocsf_line}
_FILTERS = ("secret", "source", "operation", "outcome", "principal", "enduser", "client_address",
            "trace_id", "event_name", "stream_id", "tenant", "start", "end")


class StoreUnusable(Exception):
    """The store could not be reached, or answered something other than the API's success."""


def _store_url(args: argparse.Namespace) -> str:
    """The store's URL from --url or the environment, refused at once when it cannot be one."""
    env_url = os.environ.get(STORE + "URL", "").strip()  # empty or blank reads as unset
    url = args.url or env_url or "http://127.0.0.1:4318"
    named = "--url" if args.url else STORE + "URL"
    try:
        parts = urlsplit(url)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError:
        usable = False
    if not usable:
        raise ConfigurationError(named, url, "an http:// or https:// URL of the store, such as http://127.0.0.1:4318")
    return url.rstrip("/")


def _settings(args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    url = _store_url(args)
    token = os.environ.get(args.token_env)
    if not token:
        raise ConfigurationError(args.token_env, "",
                                 "a bearer token (make one with `secret-audit tokens create`)")
    return url, {"Authorization": f"Bearer {token}"}


def wait(args: argparse.Namespace) -> int:
    """Until the store answers ready (its database too), so scripts can start it in the background."""
    import time

    url = _store_url(args)
    deadline = time.monotonic() + args.timeout
    last = "no answer"
    while True:
        try:
            resp = httpx.get(f"{url}/readyz", timeout=2)
            if resp.status_code == 200:
                return 0
            last = f"HTTP {resp.status_code}"
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            last = str(exc) or type(exc).__name__
        if time.monotonic() >= deadline:
            raise StoreUnusable(f"the store at {url} was not ready within {args.timeout:g} s ({last})")
        time.sleep(0.2)


def _params(args: argparse.Namespace) -> dict[str, Any]:
    return {name: value for name in _FILTERS if (value := getattr(args, name, None)) is not None}


@contextmanager
def _reaching(url: str) -> Iterator[None]:
    """Turn httpx's failures into one line naming the store's URL."""
    try:
        yield
    except httpx.TimeoutException:
        raise StoreUnusable(f"the store at {url} did not answer in time") from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise StoreUnusable(f"cannot reach the store at {url}: {exc or type(exc).__name__} "
                            f"(check --url or {STORE}URL)") from None


def _check(resp: httpx.Response, url: str) -> None:
    if resp.status_code != 200:
        hint = " (is --url the audit store?)" if resp.status_code in (404, 405, 501) else ""
        raise StoreUnusable(f"the store at {url} answered HTTP {resp.status_code}: {_detail(resp)}{hint}")


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
        detail = body.get("detail") or body.get("message") if isinstance(body, dict) else body
    except ValueError:
        detail = resp.text
    if isinstance(detail, list):  # FastAPI's validation errors
        detail = "; ".join(_problem(e) for e in detail)
    return " ".join(str(detail).split())[:300] or resp.reason_phrase


def _problem(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error)
    return ".".join(str(p) for p in (error.get("loc") or [])[1:]) + f": {error.get('msg')}"


def _page(resp: httpx.Response, url: str) -> dict[str, Any]:
    _check(resp, url)
    try:
        page = resp.json()
        if isinstance(page, dict) and isinstance(page.get("events"), list):
            return page
    except ValueError:
        pass
    raise StoreUnusable(f"{url} answered, but not the audit store's API (check --url or {STORE}URL)")


def query(args: argparse.Namespace) -> int:
    """Search the audit log, page by page; print in the asked (or the terminal's) layout."""
    url, headers = _settings(args)
    params: dict[str, Any] = {**_params(args), "limit": args.limit, "order": args.order}
    layout = args.format or _layout.default(None)  # None: a table if it fits the terminal, else vertical
    shown: list[dict[str, Any]] = []
    with _reaching(url), httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        while True:
            page = _page(client.get("/api/audit-logs", params=params), url)
            if layout in _LINES:
                for event in page["events"]:
                    _LINES[layout](event)
            elif layout == "vertical":
                _layout.vertical(page["events"], len(shown) + 1)
            shown += page["events"]
            if not args.all or not page.get("next_cursor"):
                break
            params["cursor"] = page["next_cursor"]
    if layout == "table" or (layout is None and _layout.fits(_layout.table_width(shown))):
        _layout.table(shown)
    elif layout is None:
        _layout.vertical(shown)
    return 0


def tail(args: argparse.Namespace) -> int:
    """Follow the live stream until ``--max-events`` or Ctrl-C."""
    url, headers = _settings(args)
    params = _params(args)
    if args.max_events:
        params["max_events"] = args.max_events
    layout = args.format or _layout.default("line")
    with contextlib.suppress(KeyboardInterrupt):  # the usual way to stop following
        _follow(url, headers, params, layout)
    return 0


def _follow(url: str, headers: dict[str, str], params: dict[str, Any], layout: str | None) -> None:
    shown = 0
    with _reaching(url), httpx.Client(base_url=url, headers=headers,
                                      timeout=httpx.Timeout(30, read=None)) as client, \
            client.stream("GET", "/api/audit-logs/stream", params=params) as resp:
        if resp.status_code != 200:
            resp.read()
            _check(resp, url)
        if not resp.headers.get("content-type", "").startswith("text/event-stream"):
            raise StoreUnusable(f"{url} answered, but not the audit store's API (check --url or {STORE}URL)")
        for text in resp.iter_lines():
            if not text.startswith("data: "):
                continue
            event = orjson.loads(text[6:])
            shown += 1
            if layout in _LINES:
                _LINES[layout](event)
            elif layout == "vertical":
                _layout.vertical([event], shown)
            else:
                _layout.line(event)

"""Helpers for the operator-surface tests: gearadmin's numbers, the JSON API,
and headless Chromium (Debian's, driven by playwright; never a downloaded one)."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def request(url: str, body: Mapping[str, Any] | None = None,
            headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=dict(headers or {}),
                                 method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def get_json(url: str) -> Any:
    status, body = request(url)
    assert status == 200, (url, status, body)
    return body


def cancel(base: str, handle: str, token: str | None = None,
           extra: Mapping[str, str] | None = None) -> tuple[int, Any]:
    if token is None:
        token = get_json(base + "/api/csrf")["token"]
    headers = {"Content-Type": "application/json", "X-CSRF-Token": token, **(extra or {})}
    return request(base + "/api/jobs/cancel", {"handle": handle}, headers)


def api_counts(status: Mapping[str, Any]) -> dict[str, tuple[int, int, int]]:
    """/api/status functions as gearadmin's (total, running, workers)."""
    return {f["name"]: (f["queued"] + f["running"], f["running"], f["workers"])
            for f in status["functions"]}


@contextmanager
def chromium_page(width: int = 1366, height: int = 768) -> Iterator[Any]:
    """A page in headless Debian Chromium; the browser is closed (killed) after."""
    if not shutil.which(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (scripts/bootstrap --system)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                    timeout=30_000)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(15_000)
            yield page
        finally:
            browser.close()

"""The dashboard in real headless Chromium against a real node: the numbers
it shows are gearadmin's, it updates without a reload, and its cancel button
removes a queued job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.admin import gearadmin_status
from tests.support.ops import chromium_page
from tests.support.rawclient import RawClient, T
from tests.support.servers import GEARMESH, ServerProcess, free_port


def cell(page: Any, function: str, col: str) -> int:
    return int(page.text_content(f'tr[data-fn="{function}"] td[data-col="{col}"]'))


def wait_cell(page: Any, function: str, col: str, value: int) -> None:
    page.wait_for_function(
        "([f, c, v]) => { const e = document.querySelector("
        "`tr[data-fn=\"${f}\"] td[data-col=\"${c}\"]`); return e && e.textContent === v; }",
        arg=[function, col, str(value)])


def shown_matches_gearadmin(page: Any, port: int) -> dict[str, tuple[int, int, int]]:
    admin = gearadmin_status(port)
    for name, (total, running, workers) in admin.items():
        wait_cell(page, name, "queued", total - running)
        assert (cell(page, name, "running"), cell(page, name, "workers")) == (running, workers)
    return admin


@pytest.mark.timeout(90)
def test_dashboard_shows_gearadmin_numbers_updates_and_cancels(tmp_path: Path) -> None:
    http = free_port()
    with ServerProcess(kind=GEARMESH, extra_args=["--http-port", str(http)]) as server, \
            RawClient(server.address) as client, RawClient(server.address) as worker, \
            chromium_page() as page:
        handles = [client.submit(b"resize", f"img-{i}".encode(), b"x" * 100,
                                 ptype=T.SUBMIT_JOB_BG).decode() for i in range(4)]
        client.submit(b"mail", b"m1", b"x", ptype=T.SUBMIT_JOB_BG)
        worker.send(T.SET_CLIENT_ID, b"resizer-1")
        worker.can_do(b"resize")
        assert worker.grab().args()[0].decode() == handles[0]

        page.goto(f"http://127.0.0.1:{http}/")
        page.wait_for_selector('tr[data-fn="resize"]')
        admin = shown_matches_gearadmin(page, server.port)
        assert admin == {"resize": (4, 1, 1), "mail": (1, 0, 0)}
        assert "no worker" in page.text_content('tr[data-fn="mail"]')
        assert "no worker" not in page.text_content('tr[data-fn="resize"]')
        assert page.text_content("#sum-queued") == "4"
        assert "resizer-1" in page.text_content("#workers")
        assert "busy" in page.text_content("#workers")

        # A new job shows up by itself: no reload (the marker survives).
        page.evaluate("window.__sameDocument = true")
        client.submit(b"resize", b"img-new", b"y", ptype=T.SUBMIT_JOB_BG)
        wait_cell(page, "resize", "queued", 4)
        assert page.evaluate("window.__sameDocument") is True
        shown_matches_gearadmin(page, server.port)

        # Cancel a queued job from the jobs panel.
        page.click('tr[data-fn="resize"] td[data-col="name"]')
        victim = handles[2]
        page.wait_for_selector(f'#jobs tr[data-handle="{victim}"]')
        assert page.locator("#jobs tbody tr").count() == 4
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        page.click(f'button.cancel[data-handle="{victim}"]')
        page.wait_for_selector(f'#jobs tr[data-handle="{victim}"]', state="detached")
        assert gearadmin_status(server.port)["resize"] == (4, 1, 1)
        wait_cell(page, "resize", "queued", 3)
        assert page.text_content("#jobs-msg") == ""

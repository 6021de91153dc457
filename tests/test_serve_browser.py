"""The web page in a real browser: Debian's Chromium driven by the Python playwright package against
``modalrec serve`` running on 127.0.0.1 in a subprocess. Skipped where /usr/bin/chromium is absent
(install it with ``apt-get install -y chromium``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="browser test needs Debian's Chromium: apt-get install -y chromium"
)


def test_page_shows_history_recommendations_bars_and_similar_items(server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server + "/")
            page.wait_for_selector("#run-info strong")
            assert "MARIO" in page.inner_text("#run-info")

            page.fill("#user-input", "3")
            page.click("#show-user")
            page.wait_for_selector("#recs li.rec")
            assert page.locator("#recs li.rec").count() == 10
            history = page.locator("#history li")
            assert history.count() >= 1 and "Synthetic item" in history.first.inner_text()
            # one bar per modality (image, text, interaction) on every recommended item
            assert page.locator("#recs li.rec .bar").count() == 30
            widths = page.eval_on_selector_all("#recs .bar", "bars => bars.map(b => b.getBoundingClientRect().width)")
            assert all(w > 0 for w in widths)
            assert page.locator("#legend .legend-item").count() == 3

            second = page.locator("#recs li.rec").nth(1)
            item = second.get_attribute("data-item")
            second.locator("a.item-link").click()
            page.wait_for_function(
                "id => document.querySelector('#similar-query') && "
                "document.querySelector('#similar-query').textContent.includes('#' + id)",
                arg=item,
            )
            assert page.locator("#similar li").count() == 10

            shot = tmp_path / "serve_page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("MODALREC_SCREENSHOT"):
                page.screenshot(path=os.environ["MODALREC_SCREENSHOT"], full_page=True)
            assert not errors, errors
        finally:
            browser.close()

"""The web page in a real browser: Debian's Chromium driven by the Python playwright package against
``modalrec serve`` running on 127.0.0.1 in a subprocess. Skipped where /usr/bin/chromium is absent
(install it with ``apt-get install -y chromium``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A MARIO run served by ``python -m modalrec.cli serve`` on a free local port."""
    from modalrec.data.synth import write_synthetic_dataset
    from modalrec.runs import train_run

    root = tmp_path_factory.mktemp("browser")
    data = write_synthetic_dataset(root / "data", n_users=100, n_items=80, modalities={"image": 16, "text": 8}, seed=4)
    run, _ = train_run(
        "MARIO",
        data,
        overrides={"epochs": 2, "train_batch_size": 256, "learning_rate": 0.01},
        out=root / "run",
        quiet=True,
        cache_dir=False,
    )
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modalrec.cli", "serve", str(run), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited: {proc.stdout.read().decode(errors='replace')}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("server did not answer /health within 90 s")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


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

"""The real page in headless Chromium against the real server: draw, search, open an explanation.

Uses Debian's Chromium (`/usr/bin/chromium`, installed by `make test` through apt) through
Playwright's `executable_path`; Playwright never downloads a browser here. Skipped with the reason
when no Chromium is installed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS

SCREENSHOT_DIR = Path(os.environ.get("SBIR_SCREENSHOT_DIR", Path(__file__).resolve().parents[2] / "results"))

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium installed (make test installs Debian's chromium with apt)"
)


def test_draw_search_and_explain_in_a_real_browser(server, tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api")
    base, _process, log_path = server
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1000})
            console_errors: list[str] = []
            page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
            page.goto(base + "/")
            assert page.title() == "Sketch search"

            # Searching an empty canvas is refused on the page, visibly.
            page.click("#search")
            assert "Draw something first" in page.inner_text("#error")

            canvas = page.locator("#canvas").bounding_box()
            assert canvas is not None
            left, top, size = canvas["x"], canvas["y"], canvas["width"]
            # A circle-ish closed stroke, then a second stroke across it.
            page.mouse.move(left + size * 0.5, top + size * 0.2)
            page.mouse.down()
            for step in range(1, 41):
                import math

                angle = 2 * math.pi * step / 40
                page.mouse.move(left + size * (0.5 + 0.3 * math.sin(angle)),
                                top + size * (0.5 - 0.3 * math.cos(angle)), steps=2)
            page.mouse.up()
            page.mouse.move(left + size * 0.3, top + size * 0.5)
            page.mouse.down()
            page.mouse.move(left + size * 0.7, top + size * 0.5, steps=10)
            page.mouse.up()

            page.click("#search")
            page.wait_for_selector("#results li button", timeout=60_000)
            results = page.locator("#results li")
            assert results.count() == 8  # k=20 capped by the 8-photo gallery
            assert page.inner_text("#error") == ""
            first_image = page.locator("#results li img").first
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=first_image.element_handle())

            page.locator("#results li button").first.click()
            page.wait_for_selector("#explain-panel:not([hidden])")
            page.wait_for_function(
                "() => { const i = document.getElementById('explain-image'); return i.complete && i.naturalWidth > 0; }",
                timeout=60_000,
            )
            assert page.locator("#explain-pairs li").count() > 0
            assert console_errors == [], console_errors

            SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
            shot = SCREENSHOT_DIR / "page-test.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
    assert "Traceback" not in log_path.read_text()

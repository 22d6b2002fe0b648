"""The page's explain panel in headless Chromium against the real server: every kind for the
clicked pair, a sketch region dragged on the picture, and an error shown to the person."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.images import sketch_png

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed")

IMAGE_LOADED = """kind => { const i = document.getElementById('explain-image');
  return i.complete && i.naturalWidth === 480 && i.src.includes('kind=' + kind); }"""


def stable_box(page, selector):
    """The element's viewport box once the page's smooth scrolling has settled."""
    page.locator(selector).scroll_into_view_if_needed()
    previous = None
    for _ in range(50):
        box = page.locator(selector).bounding_box()
        if box is not None and box == previous:
            return box
        previous = box
        page.wait_for_timeout(100)
    raise AssertionError(f"{selector} kept moving")


def test_each_kind_a_dragged_region_and_errors(server, tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api")
    base, _process, log_path = server
    upload = tmp_path / "sketch.png"
    upload.write_bytes(sketch_png("square"))
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1200})
            console_errors: list[str] = []
            page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
            requests: list[dict[str, list[str]]] = []
            page.on("request", lambda request: "/explain/" in request.url
                    and requests.append(parse_qs(urlparse(request.url).query)))
            page.goto(base + "/")
            page.set_input_files("#upload", str(upload))
            page.wait_for_selector("#results li button", timeout=60_000)
            page.locator("#results li button").nth(1).click()
            page.wait_for_function(IMAGE_LOADED, arg="correspondence", timeout=60_000)
            assert page.locator("#explain-pairs li").count() == 12
            assert requests[-1]["level"] == ["token"]

            # Drag a box over the upper-left quarter of the sketch (left half of the 480x224 picture).
            box = stable_box(page, "#explain-image")
            scale = box["width"] / 480
            page.mouse.move(box["x"] + 10 * scale, box["y"] + 10 * scale)
            page.mouse.down()
            page.mouse.move(box["x"] + 100 * scale, box["y"] + 60 * scale, steps=5)
            page.mouse.up()
            page.wait_for_function("() => document.getElementById('explain-caption').textContent.includes('Region')")
            page.wait_for_function(IMAGE_LOADED, arg="correspondence&format=png&level=token&top=12&box=")
            sent = [int(v) for v in requests[-1]["box"][0].split(",")]
            assert sent[0] <= 11 and sent[1] <= 11 and 99 <= sent[2] <= 101 and 59 <= sent[3] <= 61
            # Cells 0..6 x 0..3 of the 14x14 grid are covered: 12 listed, all from the region.
            assert page.locator("#explain-pairs li").count() == 12
            for text in page.locator("#explain-pairs li").all_inner_texts():
                row, col = (int(v) for v in text.split("(")[1].split(")")[0].split(","))
                assert row <= 3 and col <= 6, text
            page.click("#explain-clear-box")
            page.wait_for_function("() => !document.getElementById('explain-caption').textContent.includes('Region')")

            for kind, expected in (("attention", "head 0"), ("influence", "without it"), ("synthesis", "patches")):
                page.click(f"#explain-kinds button[data-kind={kind}]")
                page.wait_for_function(IMAGE_LOADED, arg=kind, timeout=60_000)
                page.wait_for_function("t => document.getElementById('explain-pairs').innerText.includes(t)",
                                       arg=expected)
                assert page.locator(f"#explain-kinds button[data-kind={kind}]").get_attribute("aria-pressed") == "true"
                assert page.is_hidden("#explain-error")
                if kind == "attention":  # one head instead of the mean; the heads come from the JSON
                    assert page.locator("#explain-head option").count() == 1 + 3
                    page.select_option("#explain-head", "1")
                    page.wait_for_function(IMAGE_LOADED, arg="attention&format=png&head=1")
            assert page.is_hidden("#explain-head") and page.is_visible("#explain-source")

            # The served index has no patch index: the person is told, not left with a stale picture.
            page.select_option("#explain-source", "gallery")
            page.wait_for_selector("#explain-error:not([hidden])")
            message = page.inner_text("#explain-error")
            assert "patch index" in message and "422 explain_unavailable" in message
            assert page.locator("#explain-pairs li").count() == 0 and page.is_hidden("#explain-image")
            page.select_option("#explain-source", "retrieved")  # and back: the picture returns
            page.wait_for_function(IMAGE_LOADED, arg="synthesis&format=png&source=retrieved")
            page.wait_for_selector("#explain-image", state="visible")
            assert page.is_hidden("#explain-error")
            # Chromium logs the 422 fetch itself; nothing else may reach the console.
            assert all("status of 422" in text for text in console_errors), console_errors
        finally:
            browser.close()
    assert "Traceback" not in log_path.read_text()

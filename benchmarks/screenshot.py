"""The README screenshot: a doodle of :mod:`benchmarks.doodles` drawn with the mouse on the real page.

Starts ``sbir serve`` on a loopback port, opens the page in Debian's Chromium through Playwright, draws
the doodle's strokes with mouse moves (the page's own 14 px pen), searches, opens the explanation of
the first result that counts as right for the doodle, and saves a full-page screenshot. Writes the
names of the top results beside it as JSON.

    python -m benchmarks.screenshot --index data/indexes/openmoji-demo \\
        --checkpoint weights/zse-openmoji-demo.pt --doodle house --out docs/screenshot.png
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks.doodles import CANVAS, DOODLES
from benchmarks.server_throughput import free_port, launch_server, stop_server, wait_ready

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--doodle", default="house", choices=[doodle.name for doodle in DOODLES])
    parser.add_argument("--out", type=Path, default=Path("docs/screenshot.png"))
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no Chromium installed (apt-get install chromium)")
    doodle = next(doodle for doodle in DOODLES if doodle.name == args.doodle)
    port = free_port()
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "server.log"
        server = launch_server(args.index, args.checkpoint, port,
                               {"SBIR_ADMIN_TOKEN": "", "SBIR_JOBS_DB": str(Path(scratch) / "jobs.sqlite3")}, None, log)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(base, server)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1200, "height": 1000})
                page.goto(base + "/")
                box = page.locator("#canvas").bounding_box()
                assert box is not None
                scale = box["width"] / CANVAS
                for stroke in doodle.strokes:
                    x, y = stroke[0]
                    page.mouse.move(box["x"] + x * scale, box["y"] + y * scale)
                    page.mouse.down()
                    for x, y in stroke[1:]:
                        page.mouse.move(box["x"] + x * scale, box["y"] + y * scale, steps=2)
                    page.mouse.up()
                page.click("#search")
                page.wait_for_selector("#results li button", timeout=120_000)
                titles = page.locator("#results li").all_inner_texts()
                right = [i for i, text in enumerate(titles) if doodle.matches(text)]
                page.locator("#results li button").nth(right[0] if right else 0).click()
                page.wait_for_selector("#explain-panel:not([hidden])")
                page.wait_for_function(
                    "() => { const i = document.getElementById('explain-image'); return i.complete && i.naturalWidth > 0; }",
                    timeout=120_000,
                )
                page.wait_for_timeout(500)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=True)
                browser.close()
        finally:
            stop_server(server)
    summary = {"doodle": doodle.name, "results": [" ".join(text.split()) for text in titles],
               "right_positions": right, "explained": right[0] if right else 0}
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(summary, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

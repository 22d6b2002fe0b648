"""Each search result names the file that matched: the gallery's `key`, and the photo's `path`
relative to its gallery root unless SBIR_SHOW_PATHS hides it. On the same real server: a blank
sketch is refused, and start-up does not log FAISS's failed loader attempts."""

from __future__ import annotations

import httpx
import pytest
from PIL import Image, ImageDraw

import indexer
from service.main import create_app
from tests.support.api import assert_error, running, search
from tests.support.images import encode, sketch_png
from tests.support.server import Server


@pytest.fixture(scope="module")
def real_server(workspace, tmp_path_factory):
    started = Server(tmp_path_factory.mktemp("paths-server"), workspace.index_dir, workspace.checkpoint,
                     workspace.root)
    try:
        started.start(timeout=120).close()
        yield started
    finally:
        started.stop()


def test_results_carry_the_gallery_key_and_the_relative_path(real_server, workspace):
    with httpx.Client(base_url=real_server.base, timeout=60) as http:
        response = http.post("/search", params={"k": 8}, files={"sketch": ("s.png", sketch_png(), "image/png")})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 8
    with indexer.open(workspace.index_dir) as index:
        for result in results:
            record = index.record(result["image_id"])
            assert result["key"] == record.key == f"{record.label}/{record.path.rsplit('/', 1)[1]}"
            assert result["path"] == result["key"]  # a folder gallery: relative to its root, as the key
            assert (workspace.gallery / result["path"]).is_file()
    assert str(workspace.root) not in response.text  # no absolute server path leaks


def test_show_paths_off_hides_the_path_but_keeps_the_key(make_settings):
    with running(create_app(make_settings(show_paths=False))) as client:
        response = search(client, k=3)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [result["path"] for result in results] == [None, None, None]
    assert all(result["key"].endswith(".png") for result in results)


def blank_sketches() -> dict[str, bytes]:
    dots = Image.new("RGB", (200, 200), "white")
    for x in (20, 100, 180):
        dots.putpixel((x, x), (0, 0, 0))  # three stray pixels: near-blank
    faint = Image.new("RGB", (200, 200), "white")
    ImageDraw.Draw(faint).ellipse([40, 40, 160, 160], outline=(110, 110, 110), width=4)  # R+G+B 330: no ink
    return {"white": encode(Image.new("RGB", (200, 200), "white"), "PNG"),
            "transparent": encode(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), "PNG"),
            "dots": encode(dots, "PNG"), "faint": encode(faint, "PNG")}


@pytest.mark.parametrize("name", ["white", "transparent", "dots", "faint"])
def test_a_blank_sketch_is_422_naming_the_reason(real_server, name):
    with httpx.Client(base_url=real_server.base, timeout=60) as http:
        response = http.post("/search", files={"sketch": ("s.png", blank_sketches()[name], "image/png")})
        error = assert_error(response, 422, "blank_sketch")
        assert "blank" in error["message"] and "no ink" in error["message"] and error["field"] == "sketch"
        assert http.post("/search", files={"sketch": ("s.png", sketch_png(), "image/png")}).status_code == 200


def test_start_up_does_not_log_the_faiss_loaders_failed_attempts(real_server):
    log = real_server.log()
    assert "now serving index main" in log  # FAISS was loaded by this process
    assert "ModuleNotFoundError" not in log and "faiss.loader" not in log

"""Hostile and odd sketches against POST /search on the real zse-tiny model and index.

Each one gets a clear 4xx with the API's JSON error or a correct search: for the odd-but-valid
encodings "correct" means the same ranking as the plain RGB drawing they encode.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from service.main import create_app
from tests.support import images
from tests.support.api import assert_error, running


def post(client, payload: bytes, filename: str = "sketch.png", content_type: str = "image/png", **params):
    return client.post("/search", params={"k": 8, "rerank": "false", **params},
                       files={"sketch": (filename, payload, content_type)})


def scores(response) -> dict[int, float]:
    """image id -> ANN score of a successful search (the whole gallery, k=8)."""
    assert response.status_code == 200, response.text
    return {hit["image_id"]: hit["ann_score"] for hit in response.json()["results"]}


def largest_difference(first: dict[int, float], second: dict[int, float]) -> float:
    assert first.keys() == second.keys()
    return max(abs(first[image_id] - second[image_id]) for image_id in first)


@pytest.fixture(scope="module")
def reference(served) -> dict[int, float]:
    """The ANN scores of the plain RGB circle drawing: what every re-encoding must reproduce."""
    return scores(post(served[1], images.encode(images.drawing(), "PNG")))


def _rgba_on_transparent() -> Image.Image:
    return images.transparent_paper(images.drawing())  # ink -> opaque


def _palette() -> Image.Image:
    return images.drawing().convert("P", palette=Image.Palette.ADAPTIVE, colors=4)


def _sixteen_bit() -> Image.Image:
    grey = images.drawing().convert("L")
    return grey.point(lambda value: value * 257, mode="I").convert("I;16")


# (name, payload builder): encodings of the very same drawing.
SAME_DRAWING = {
    "greyscale-png": lambda: images.encode(images.drawing().convert("L"), "PNG"),
    "16-bit-png": lambda: images.encode(_sixteen_bit(), "PNG"),
    "palette-png": lambda: images.encode(_palette(), "PNG"),
    "rgba-png-transparent-paper": lambda: images.encode(_rgba_on_transparent(), "PNG"),
    "rgba-webp-transparent-paper": lambda: images.encode(_rgba_on_transparent(), "WEBP", lossless=True),
    "cmyk-jpeg": lambda: images.encode(images.drawing().convert("CMYK"), "JPEG", quality=98),
    "animated-png-first-frame": lambda: images.animated("PNG", images.drawing(), images.drawing(kind="square")),
    "animated-webp-first-frame": lambda: images.animated("WEBP", images.drawing(), images.drawing(kind="square")),
}


@pytest.mark.parametrize("name", sorted(SAME_DRAWING))
def test_odd_encodings_of_one_drawing_search_like_it(client, reference, name):
    payload = SAME_DRAWING[name]()
    # Lossy JPEG/WebP move a score by ~2e-4; a different drawing moves them by >5e-3 (below).
    assert largest_difference(scores(post(client, payload)), reference) < 1e-3


def test_a_different_drawing_scores_differently(client, reference):
    # Guards the test above against a model that scores every input the same.
    square = scores(post(client, images.encode(images.drawing(kind="square"), "PNG")))
    assert largest_difference(square, reference) > 5e-3


@pytest.mark.parametrize(("payload", "status", "code"), [
    (b"", 415, "unsupported_media_type"),
    (images.encode(images.drawing(), "PNG")[:400], 400, "undecodable_image"),
    # Cut inside the first chunk after IHDR: PIL cannot even identify it, so "not a PNG".
    (images.encode(images.drawing(), "PNG")[:40], 415, "unsupported_media_type"),
    (images.SVG, 415, "unsupported_media_type"),
    (images.minimal_pdf(), 415, "unsupported_media_type"),
    (images.animated("GIF", images.drawing(), images.drawing(kind="square")), 415, "unsupported_media_type"),
    (images.png_bomb(100_000, 100_000), 413, "too_many_pixels"),
    (images.png_bomb(2**31 - 1, 2**31 - 1, rows=1), 413, "too_many_pixels"),
    (images.png_bomb(1, 30_000_000, rows=1), 413, "too_many_pixels"),
    (images.ztxt_bomb(images.encode(images.drawing(), "PNG")), 400, "undecodable_image"),
], ids=["zero-bytes", "truncated-png", "truncated-header", "svg", "pdf-renamed-png", "animated-gif",
        "png-bomb-1e10", "png-bomb-int32-max", "png-bomb-tall", "ztxt-text-bomb"])
def test_hostile_payloads_get_a_clear_4xx(client, payload, status, code):
    assert_error(post(client, payload), status, code)


def test_the_filename_and_declared_type_are_not_trusted(client, reference):
    png = images.encode(images.drawing(), "PNG")
    response = post(client, png, filename="cat.pdf", content_type="application/pdf")
    assert largest_difference(scores(response), reference) < 1e-6
    assert_error(post(client, images.minimal_pdf(), filename="sketch.png"), 415, "unsupported_media_type")


def test_a_50_mb_upload_is_413(client):
    payload = images.encode(images.drawing(), "PNG") + b"\x00" * (50 * 1024 * 1024)
    assert_error(post(client, payload), 413, "upload_too_large")


def _memory_kib(field: str) -> int:
    for line in open("/proc/self/status").read().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as handle:  # "5" resets VmHWM to the current RSS
        handle.write("5")


@pytest.mark.skipif(not open("/proc/self/status").read(), reason="needs Linux /proc")
def test_bombs_keep_memory_bounded(client):
    bombs = [images.png_bomb(100_000, 100_000), images.png_bomb(60_000, 60_000, rows=2000),
             images.ztxt_bomb(images.encode(images.drawing(), "PNG"))]
    assert max(len(bomb) for bomb in bombs) < 200_000  # tiny files ...
    post(client, images.encode(images.drawing(), "PNG"))  # warm every code path first
    _reset_peak_rss()
    baseline = _memory_kib("VmRSS")
    for bomb in bombs:
        assert post(client, bomb).status_code in (400, 413)
    # ... that would need gigabytes decoded (100k x 100k = 10 GB); the peak moved by a few MB.
    assert _memory_kib("VmHWM") - baseline < 64 * 1024


def test_an_image_at_the_pixel_limit_decodes_in_bounded_memory(make_settings):
    # 2000 x 2000 greyscale zeros (a few kB on the wire) with the limit set to exactly 4 Mpx:
    # accepted and searched, and the decode costs about its own size, not a multiple of the limit.
    settings = make_settings(max_pixels=4_000_000)
    with running(create_app(settings)) as client:
        post(client, images.encode(images.drawing(), "PNG"))
        assert_error(post(client, images.zero_png(2001, 2000)), 413, "too_many_pixels")
        _reset_peak_rss()
        baseline = _memory_kib("VmRSS")
        response = post(client, images.zero_png(2000, 2000))
        assert response.status_code == 200, response.text
        assert _memory_kib("VmHWM") - baseline < 256 * 1024


def test_decoded_frame_count_is_one_for_animations():
    from service.uploads import decode_sketch

    payload = images.animated("PNG", images.drawing(), images.drawing(kind="square"))
    assert Image.open(io.BytesIO(payload)).n_frames == 2
    decoded = decode_sketch(payload, max_pixels=10**6)
    assert decoded.tobytes() == images.drawing().convert(decoded.mode).tobytes()

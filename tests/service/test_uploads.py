"""Bad sketches and bad search parameters: each gets its status and the JSON error shape."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from service.main import create_app
from service.uploads import decode_sketch
from tests.support.api import assert_error, running, search
from tests.support.images import png_chunk, sketch_png


def forged_png_header(width: int, height: int) -> bytes:
    """A PNG signature + IHDR claiming width x height, with no pixel data behind it."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b"")


def noise_png(size: int = 256) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(png: bytes, boundary: str = "sbirboundary") -> tuple[bytes, str]:
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"sketch\"; filename=\"s.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def limited(workspace, tmp_path_factory):
    """An app with small upload and pixel limits and k capped at 10."""
    from service.settings import Settings

    state = tmp_path_factory.mktemp("limited")
    settings = Settings(index_dir=workspace.index_dir, checkpoint=workspace.checkpoint, jobs_db=state / "jobs.db",
                        max_upload_bytes=50_000, max_pixels=1_000_000, k_max=10, device="cpu")
    with running(create_app(settings)) as client:
        yield client


def test_decode_sketch_returns_a_loaded_image():
    image = decode_sketch(sketch_png(size=120), max_pixels=10**6)
    assert image.size == (120, 120)
    assert image.getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("payload", [b"hello, not an image", b"", b"GIF89a" + b"\x00" * 64])
def test_not_an_image_is_415(client, payload):
    assert_error(search(client, payload), 415, "unsupported_media_type")


def test_gif_is_not_an_accepted_format(client):
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "white").save(buffer, format="GIF")
    assert_error(search(client, buffer.getvalue()), 415, "unsupported_media_type")


def test_truncated_png_is_400(client):
    png = noise_png()
    assert_error(search(client, png[: len(png) // 2]), 400, "undecodable_image")


def test_corrupt_pixel_data_is_400(client):
    png = bytearray(noise_png(64))
    png[200:260] = b"\x00" * 60  # inside the IDAT stream: the header is fine, the pixels are not
    assert_error(search(client, bytes(png)), 400, "undecodable_image")


def test_decompression_bomb_header_is_413_before_decoding(client):
    # 100000 x 100000 claimed by a ~60-byte file: refused from the header alone.
    assert_error(search(client, forged_png_header(100_000, 100_000)), 413, "too_many_pixels")


def test_real_image_over_the_default_pixel_limit_is_413(client):
    buffer = io.BytesIO()
    Image.new("1", (6000, 6000), 1).save(buffer, format="PNG")  # 36 Mpx in a few KB
    assert len(buffer.getvalue()) < 100_000
    assert_error(search(client, buffer.getvalue()), 413, "too_many_pixels")


def test_configured_pixel_limit(limited):
    buffer = io.BytesIO()
    Image.new("L", (1100, 1000), 255).save(buffer, format="PNG")
    error = assert_error(search(limited, buffer.getvalue()), 413, "too_many_pixels")
    assert "1000000" in error["message"]


def test_upload_over_the_limit_is_413_from_content_length(limited):
    assert_error(search(limited, b"\x00" * 200_000), 413, "upload_too_large")


def test_file_over_the_limit_inside_the_multipart_slack_is_413(limited):
    assert_error(search(limited, noise_png(160)[:60_000]), 413, "upload_too_large")


def test_chunked_upload_over_the_limit_is_cut_off_with_413(limited):
    body, content_type = multipart(b"\x00" * 300_000)

    def chunks():
        for start in range(0, len(body), 16_384):
            yield body[start : start + 16_384]

    response = limited.post("/search", content=chunks(), headers={"Content-Type": content_type})
    assert_error(response, 413, "upload_too_large")


@pytest.mark.parametrize("params", [
    {"k": 0}, {"k": 201}, {"k": "many"}, {"shortlist": 0}, {"shortlist": 2001}, {"rerank": "perhaps"},
])
def test_out_of_range_parameters_are_422(client, params):
    error = assert_error(search(client, **params), 422, "validation_error")
    assert next(iter(params)) in error["message"]


def test_configured_k_limit_is_422(limited):
    error = assert_error(search(limited, k=11), 422, "validation_error")
    assert "k:" in error["message"] and "10" in error["message"]
    assert search(limited, k=10).status_code == 200


def test_missing_sketch_field_is_422(client):
    assert_error(client.post("/search", data={"other": "x"}), 422, "validation_error")
    assert_error(client.post("/search"), 422, "validation_error")


def test_no_index_loaded_is_503(make_settings):
    app = create_app(make_settings(index_dir=None))
    with running(app) as client:
        error = assert_error(search(client), 503, "not_ready")
        assert "no index" in error["message"]
        assert_error(client.get("/readyz"), 503, "not_ready")
        assert_error(client.get("/images/0"), 503, "not_ready")
        assert client.get("/healthz").status_code == 200


# Opaque black in the modes whose zeros are transparent (or white, CMYK): all-zero images of them are
# blank sketches (422 blank_sketch, test_result_paths.py), so these get a dark block to search.
INK = {"LA": (0, 255), "P": 2, "CMYK": (0, 0, 0, 255), "RGBA": (0, 0, 0, 255)}


def odd_image(mode: str, size: tuple[int, int], fmt: str = "PNG") -> bytes:
    image = Image.new(mode, size)
    if mode == "P":
        image.putpalette([0, 0, 0, 255, 255, 255] * 128)
        image.info["transparency"] = 0
    if mode in INK:
        image.paste(INK[mode], (0, 0, max(1, size[0] // 2), max(1, size[1] // 2)))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(("mode", "size", "fmt"), [
    ("RGB", (1, 1), "PNG"), ("L", (1, 3000), "PNG"), ("L", (3000, 1), "PNG"), ("I;16", (64, 64), "PNG"),
    ("LA", (50, 70), "PNG"), ("P", (40, 40), "PNG"), ("1", (33, 17), "PNG"), ("CMYK", (40, 40), "JPEG"),
    ("L", (40, 40), "JPEG"), ("RGBA", (40, 40), "WEBP"),
])
def test_odd_but_valid_images_are_searched(client, mode, size, fmt):
    response = search(client, odd_image(mode, size, fmt), k=2)
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 2

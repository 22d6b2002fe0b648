"""GET /images/{image_id}: only ids of the served index, originals and bounded thumbnails."""

from __future__ import annotations

import io

import pytest
from PIL import Image

import indexer
from tests.support.api import assert_error


def test_original_photo_is_served_byte_for_byte(client, workspace):
    with indexer.open(workspace.index_dir) as index:
        path = index.record(3).path
    response = client.get("/images/3")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    with open(path, "rb") as handle:
        assert response.content == handle.read()


@pytest.mark.parametrize("size", [16, 40, 1024])
def test_thumbnail_is_a_jpeg_no_larger_than_size(client, size):
    response = client.get("/images/1", params={"size": size})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    thumbnail = Image.open(io.BytesIO(response.content))
    assert thumbnail.format == "JPEG"
    assert max(thumbnail.size) == min(size, 96)  # the photos are 96x96 and are never enlarged


@pytest.mark.parametrize("size", [0, 15, 1025])
def test_thumbnail_size_out_of_range_is_422(client, size):
    assert_error(client.get("/images/1", params={"size": size}), 422, "validation_error")


@pytest.mark.parametrize("image_id", [8, 999, 2**40])
def test_unknown_image_id_is_404(client, image_id):
    assert_error(client.get(f"/images/{image_id}"), 404, "unknown_image")


@pytest.mark.parametrize("image_id", ["-1", "abc", "..%2F..%2Fetc%2Fpasswd", str(2**64)])
def test_malformed_image_id_is_422_or_404_never_a_file(client, image_id):
    response = client.get(f"/images/{image_id}")
    assert response.status_code in (404, 422)
    assert_error(response, response.status_code)

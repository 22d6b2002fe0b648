"""GET /explain/{query_id}/{image_id}: the cosine kernel of a past query against a photo."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import indexer
import models
from models import preprocess
from service.explain import PAIR_COLOURS, PNG_SIZE
from service.main import create_app
from tests.service.conftest import assert_error, running, search, sketch_png


@pytest.fixture(scope="module")
def searched(served):
    _, client = served
    png = sketch_png("circle")
    body = search(client, png, k=3).json()
    return png, body["query_id"], body["results"][0]["image_id"]


def test_json_kernel_equals_the_model_kernel(client, workspace, searched):
    png, query_id, image_id = searched
    response = client.get(f"/explain/{query_id}/{image_id}")
    assert response.status_code == 200, response.text
    body = response.json()

    model = models.load_checkpoint(workspace.checkpoint).eval()
    with torch.inference_mode(), indexer.open(workspace.index_dir) as index:
        sketch = model.encode(preprocess.sketch(Image.open(io.BytesIO(png))).unsqueeze(0), modality="sketch")
        expected = model.kernel(sketch.tokens, index.tokens([image_id]), sketch.kept)[0].numpy()

    kernel = np.asarray(body["kernel"])
    assert kernel.shape == (49, 49) and body["grid"] == 7
    np.testing.assert_allclose(kernel, expected, atol=1e-5)
    # Pairs: each sketch anchor's best photo anchor, strongest first.
    assert len(body["pairs"]) == 10
    best = expected.argmax(axis=1)
    strongest = np.argsort(-expected.max(axis=1), kind="stable")[:10]
    for pair, anchor in zip(body["pairs"], strongest, strict=True):
        assert (pair["sketch_cell"]["row"], pair["sketch_cell"]["col"]) == divmod(int(anchor), 7)
        assert (pair["photo_cell"]["row"], pair["photo_cell"]["col"]) == divmod(int(best[anchor]), 7)
        assert pair["score"] == pytest.approx(float(expected[anchor, best[anchor]]), abs=1e-5)


def test_top_parameter_bounds_the_pairs(client, searched):
    _, query_id, image_id = searched
    assert len(client.get(f"/explain/{query_id}/{image_id}", params={"top": 49}).json()["pairs"]) == 49
    for top in (0, 50):
        assert_error(client.get(f"/explain/{query_id}/{image_id}", params={"top": top}), 422, "validation_error")


def test_png_is_side_by_side_with_linked_cells(client, searched):
    _, query_id, image_id = searched
    response = client.get(f"/explain/{query_id}/{image_id}", params={"format": "png", "top": 3})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG" and image.size == PNG_SIZE == (480, 224)
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    for colour in PAIR_COLOURS[:3]:
        assert (pixels == colour).all(axis=1).sum() > 20, f"no line drawn in {colour}"
    # The gap between the panels is white except where the links cross it.
    gap = np.asarray(image.convert("RGB"))[:, 224:256]
    assert (gap != 255).any()


def test_unknown_query_or_image_is_404(client, searched):
    _, query_id, image_id = searched
    assert_error(client.get(f"/explain/{'0' * 32}/{image_id}"), 404, "unknown_query")
    assert_error(client.get(f"/explain/not-a-query/{image_id}"), 404, "unknown_query")
    assert_error(client.get(f"/explain/{query_id}/4242"), 404, "unknown_image")
    assert_error(client.get(f"/explain/{query_id}/{image_id}", params={"format": "gif"}), 422, "validation_error")


def test_query_cache_is_bounded(make_settings):
    app = create_app(make_settings(query_cache_size=2))
    with running(app) as client:
        first, second, third = (search(client, k=1).json() for _ in range(3))
        assert_error(client.get(f"/explain/{first['query_id']}/0"), 404, "unknown_query")
        for body in (second, third):
            assert client.get(f"/explain/{body['query_id']}/0").status_code == 200

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
from service.explain_render import PAIR_COLOURS, PNG_SIZE
from service.main import create_app
from tests.support.api import assert_error, running, search
from tests.support.images import sketch_png


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


# Kinds: correspondence (token level, regions), attention, influence, synthesis -------------------

def _direct(workspace, png, image_id):
    """The model, the sketch's tokens and input, and the photo's stored tokens, computed directly."""
    model = models.load_checkpoint(workspace.checkpoint).eval()
    sketch_input = preprocess.sketch(Image.open(io.BytesIO(png))).unsqueeze(0)
    with torch.inference_mode(), indexer.open(workspace.index_dir) as index:
        sketch = model.encode(sketch_input, modality="sketch")
        photo_tokens = index.tokens([image_id])
        photo_path = index.record(image_id).path
    return model, sketch_input, sketch.tokens, photo_tokens, photo_path


def _cells(cells):
    return [(cell["row"], cell["col"]) for cell in cells]


def test_token_correspondence_of_a_region_equals_the_model(client, workspace, searched):
    from models.explain import box_cells, correspondence

    png, query_id, image_id = searched
    response = client.get(f"/explain/{query_id}/{image_id}",
                          params={"kind": "correspondence", "level": "token", "box": "48,40,120.5,100", "top": 196})
    assert response.status_code == 200, response.text
    body = response.json()
    model, _, sketch_tokens, photo_tokens, _ = _direct(workspace, png, image_id)
    expected = correspondence(model, sketch_tokens, photo_tokens, level="token", box=(48, 40, 120.5, 100))
    assert body["kind"] == "correspondence" and body["level"] == "token" and body["grid"] == 14
    assert body["box"] == [48, 40, 120.5, 100]
    assert _cells(body["region"]) == [divmod(int(c), 14) for c in box_cells((48, 40, 120.5, 100), 14)]
    np.testing.assert_allclose(np.asarray(body["kernel"]), expected.similarity.numpy(), atol=1e-5)
    assert len(body["pairs"]) == len(body["region"]) == 5 * 5  # cols 3..7, rows 2..6
    for pair, sketch_cell, photo_cell in zip(body["pairs"], expected.sketch_cells, expected.photo_cells, strict=True):
        assert (pair["sketch_cell"]["row"], pair["sketch_cell"]["col"]) == divmod(int(sketch_cell), 14)
        assert (pair["photo_cell"]["row"], pair["photo_cell"]["col"]) == divmod(int(photo_cell), 14)
    png_response = client.get(f"/explain/{query_id}/{image_id}",
                              params={"level": "token", "box": "48,40,120,100", "format": "png"})
    drawn = np.asarray(Image.open(io.BytesIO(png_response.content)).convert("RGB"))
    assert drawn.shape == (224, 480, 3)
    assert (drawn[40:100, 48] == (255, 200, 0)).all(axis=1).sum() > 30  # the region's outline


def test_attention_maps_are_distributions_from_the_model(client, workspace, searched):
    from models.explain import attention_maps

    png, query_id, image_id = searched
    body = client.get(f"/explain/{query_id}/{image_id}", params={"kind": "attention"}).json()
    model, sketch_input, _, _, photo_path = _direct(workspace, png, image_id)
    photo_input = preprocess.photo(Image.open(photo_path)).unsqueeze(0)
    assert body["kind"] == "attention" and body["heads"] == 3 and body["grid"] == 14
    assert body["selection_layers"] == []
    for side, images, modality in (("sketch", sketch_input, "sketch"), ("photo", photo_input, "photo")):
        expected = attention_maps(model, images, modality)
        maps, ret_self = np.asarray(body[side]["maps"]), np.asarray(body[side]["ret_self"])
        assert maps.shape == (3, 14, 14) and (maps >= 0).all() and (ret_self >= 0).all()
        np.testing.assert_allclose(maps.sum(axis=(1, 2)) + ret_self, 1.0, atol=1e-4)
        np.testing.assert_allclose(maps, expected.heads[0].numpy(), atol=2e-6)
        np.testing.assert_allclose(np.asarray(body[side]["mean"]), maps.mean(axis=0), atol=2e-6)


def test_influence_equals_removing_each_pair(client, workspace, searched):
    png, query_id, image_id = searched
    body = client.get(f"/explain/{query_id}/{image_id}", params={"kind": "influence", "top": 3}).json()
    model, _, sketch_tokens, photo_tokens, _ = _direct(workspace, png, image_id)
    with torch.inference_mode():
        kernel = model.kernel(sketch_tokens, photo_tokens)[0]
        score = float(model.relation_head(kernel[None])[0])
        assert body["relation_score"] == pytest.approx(float(model.relation(sketch_tokens, photo_tokens)[0]), abs=1e-6)
        assert body["kind"] == "influence" and body["grid"] == 7 and len(body["pairs"]) == 3
        drops = np.asarray(body["drop_percent"])
        for pair in body["pairs"]:
            i = pair["sketch_cell"]["row"] * 7 + pair["sketch_cell"]["col"]
            j = pair["photo_cell"]["row"] * 7 + pair["photo_cell"]["col"]
            removed = kernel.clone()
            removed[i, j] = 0
            without = float(model.relation_head(removed[None])[0])
            assert pair["score_without"] == pytest.approx(without, abs=1e-6)
            assert pair["drop_percent"] == pytest.approx((score - without) / score * 100, abs=1e-3)
            assert pair["cosine"] == pytest.approx(float(kernel[i, j]), abs=1e-6)
        assert body["pairs"][0]["drop_percent"] == pytest.approx(drops.max(), abs=1e-3)


def test_synthesis_from_retrieved_photos(client, searched):
    _, query_id, image_id = searched
    body = client.get(f"/explain/{query_id}/{image_id}", params={"kind": "synthesis", "top": 3}).json()
    assert body["kind"] == "synthesis" and body["source"] == "retrieved" and body["grid"] == 14
    assert body["photos"][0] == image_id and len(set(body["photos"])) == 3 and body["k"] is None
    assert len(body["patches"]) == 196
    assert all(len(patch["matches"]) == 1 and patch["matches"][0]["image_id"] in body["photos"]
               for patch in body["patches"])
    only = client.get(f"/explain/{query_id}/{image_id}", params={"kind": "synthesis", "top": 1}).json()
    assert only["photos"] == [image_id]
    assert {patch["matches"][0]["image_id"] for patch in only["patches"]} == {image_id}


@pytest.fixture(scope="module")
def patch_client(workspace, tmp_path_factory):
    from service.settings import Settings
    from tests.support.api import ADMIN_TOKEN

    state = tmp_path_factory.mktemp("patches")
    index_dir = indexer.build(workspace.gallery, workspace.checkpoint, state / "indexes" / "patches", device="cpu",
                              num_workers=0, progress=False, patch_index=True)
    settings = Settings(index_dir=index_dir, checkpoint=workspace.checkpoint, index_root=state / "indexes",
                        data_roots=[workspace.root], jobs_db=state / "jobs.sqlite3", admin_token=ADMIN_TOKEN,
                        device="cpu")
    with running(create_app(settings)) as client:
        yield client, index_dir


def test_synthesis_from_the_gallery_patch_index(patch_client, workspace, searched):
    from models.explain import patch_vectors

    client, index_dir = patch_client
    png, _, image_id = searched
    query_id = search(client, png, k=3).json()["query_id"]
    body = client.get(f"/explain/{query_id}/{image_id}", params={"kind": "synthesis", "source": "gallery",
                                                                 "k": 4}).json()
    assert body["source"] == "gallery" and body["k"] == 4 and body["patch_index"] == "Flat"
    assert all(len(patch["matches"]) == 4 for patch in body["patches"])
    # The matches are the patch index's nearest patches of the sketch's own patch tokens.
    model = models.load_checkpoint(workspace.checkpoint).eval()
    with torch.inference_mode(), indexer.open(index_dir) as index:
        sketch = model.encode(preprocess.sketch(Image.open(io.BytesIO(png))).unsqueeze(0), modality="sketch")
        vectors, _ = patch_vectors(sketch.tokens, None, 196)
        image_ids, cells, scores = index.patch_index.search(vectors[0].numpy(), 4)
    for cell, patch in enumerate(body["patches"]):
        assert [m["image_id"] for m in patch["matches"]] == image_ids[cell].tolist()
        assert [m["cell"]["row"] * 14 + m["cell"]["col"] for m in patch["matches"]] == cells[cell].tolist()
    image = Image.open(io.BytesIO(client.get(f"/explain/{query_id}/{image_id}", params={
        "kind": "synthesis", "source": "gallery", "format": "png"}).content))
    assert image.format == "PNG" and image.size == PNG_SIZE


def test_gallery_synthesis_without_a_patch_index_is_a_clear_422(client, searched):
    _, query_id, image_id = searched
    error = assert_error(client.get(f"/explain/{query_id}/{image_id}", params={"kind": "synthesis",
                                                                                "source": "gallery"}),
                         422, "explain_unavailable")
    assert "--patch-index" in error["message"]


@pytest.mark.parametrize("params", [
    {"kind": "correspondence", "level": "token", "box": "0,0,100,100"},
    {"kind": "attention"}, {"kind": "attention", "head": 2}, {"kind": "influence"}, {"kind": "synthesis"},
])
def test_every_kind_draws_a_png_of_the_stated_size(client, searched, params):
    _, query_id, image_id = searched
    response = client.get(f"/explain/{query_id}/{image_id}", params={**params, "format": "png"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    image.verify()
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG" and image.size == PNG_SIZE == (480, 224) and image.mode == "RGB"
    pixels = np.asarray(image)
    assert (pixels[:, 224:256] == 255).all() or params["kind"] != "attention"  # the gap stays white
    assert pixels[:, 256:].std() > 0


@pytest.mark.parametrize(("params", "field"), [
    ({"kind": "sideways"}, "kind"),
    ({"kind": "attention", "box": "0,0,10,10"}, "box"),
    ({"box": "0,0,10"}, "box"), ({"box": "a,b,c,d"}, "box"), ({"box": "10,0,5,10"}, "box"),
    ({"box": "0,0,300,10"}, "box"),
    ({"level": "token", "top": 197}, "top"), ({"kind": "influence", "top": 2402}, "top"),
    ({"kind": "synthesis", "top": 51}, "top"), ({"kind": "attention", "head": 3}, "head"),
    ({"kind": "synthesis", "source": "gallery", "k": 0}, "k"), ({"level": "pixel"}, "level"),
])
def test_bad_parameters_are_422(client, searched, params, field):
    _, query_id, image_id = searched
    error = assert_error(client.get(f"/explain/{query_id}/{image_id}", params=params), 422, "validation_error")
    assert field in error["message"]
    assert client.get(f"/explain/{query_id}/{image_id}", params={"level": "token", "top": 196}).status_code == 200


def test_an_explanation_asked_as_json_then_png_is_computed_once(served, searched, monkeypatch):
    import service.explain

    app, client = served
    _, query_id, image_id = searched
    calls = []
    real = service.explain.explain
    monkeypatch.setattr(service.explain, "explain", lambda inputs, options: calls.append(options) or real(inputs, options))
    url = f"/explain/{query_id}/{image_id}?kind=influence&top=3"
    assert client.get(url).status_code == 200
    assert client.get(url + "&format=png").status_code == 200
    assert len(calls) == 1  # the page's second request (the PNG) reuses the first's computation
    assert client.get(url.replace("top=3", "top=4")).status_code == 200
    assert len(calls) == 2  # other options: computed

    engine = app.state.engine
    engine.swap_index(engine.open_index(engine.settings.index_dir))  # a swap: nothing reused across it
    assert client.get(url).status_code == 200
    assert len(calls) == 3

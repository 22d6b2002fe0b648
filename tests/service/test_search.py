"""POST /search against the real zse-tiny model and real indexes, checked by direct model calls."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import indexer
import models
from models import preprocess
from service.main import create_app
from tests.support.api import assert_error, running, search
from tests.support.images import sketch_png


@pytest.fixture(scope="module")
def reference_model(workspace):
    return models.load_checkpoint(workspace.checkpoint).eval()


def sketch_encoding(model, png: bytes):
    image = Image.open(io.BytesIO(png))
    image.load()
    with torch.inference_mode():
        return model.encode(preprocess.sketch(image).unsqueeze(0), modality="sketch")


def direct_relation(model, index, png: bytes, ids: list[int]) -> np.ndarray:
    """Relation scores computed from scratch: encode the sketch and the photo files, then relation."""
    sketch = sketch_encoding(model, png)
    photos = torch.stack([preprocess.photo(Image.open(index.record(i).path)) for i in ids])
    with torch.inference_mode():
        encoded = model.encode(photos, modality="photo")
        return model.relation(sketch.tokens, encoded.tokens, sketch.kept, encoded.kept).numpy()


def ann_reference(model, index_dir, png: bytes, k: int) -> tuple[list[int], np.ndarray]:
    with indexer.open(index_dir) as index:
        ids, scores = index.search(sketch_encoding(model, png).ret.numpy(), k)
    keep = ids[0] >= 0
    return ids[0][keep].tolist(), scores[0][keep]


def test_rerank_order_equals_relation_scores_computed_with_the_model(make_settings, workspace, reference_model):
    # Token store "none": the server recomputes photo tokens, so scores must match to float precision.
    png = sketch_png("circle")
    app = create_app(make_settings(index_dir=workspace.index_dir_no_tokens, rerank_batch_size=3))
    with running(app) as client:
        response = search(client, png, k=5, shortlist=8)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["reranked"] is True and body["shortlist"] == 8
    shortlist, _ = ann_reference(reference_model, workspace.index_dir_no_tokens, png, 8)
    with indexer.open(workspace.index_dir_no_tokens) as index:
        direct = direct_relation(reference_model, index, png, shortlist)
    expected = [shortlist[i] for i in np.argsort(-direct, kind="stable")[:5]]
    got = [result["image_id"] for result in body["results"]]
    assert got == expected
    by_id = dict(zip(shortlist, direct, strict=True))
    for result in body["results"]:
        assert result["relation_score"] == pytest.approx(float(by_id[result["image_id"]]), abs=1e-5)
    assert [result["rank"] for result in body["results"]] == [1, 2, 3, 4, 5]


def test_ann_weight_orders_by_relation_plus_weighted_ann_score(make_settings, workspace, reference_model):
    png = sketch_png("circle")
    weight = 1.5
    app = create_app(make_settings(index_dir=workspace.index_dir_no_tokens, ann_weight=weight))
    with running(app) as client:
        body = search(client, png, k=6, shortlist=8).json()
    shortlist, ann = ann_reference(reference_model, workspace.index_dir_no_tokens, png, 8)
    with indexer.open(workspace.index_dir_no_tokens) as index:
        direct = direct_relation(reference_model, index, png, shortlist)
    fused = direct + weight * ann
    assert [result["image_id"] for result in body["results"]] == [shortlist[i] for i in np.argsort(-fused)[:6]]
    by_id = dict(zip(shortlist, fused, strict=True))
    for result in body["results"]:
        assert result["score"] == pytest.approx(float(by_id[result["image_id"]]), abs=1e-5)
        assert result["score"] == pytest.approx(result["relation_score"] + weight * result["ann_score"], abs=1e-5)


def test_fp16_token_store_gives_the_model_scores_within_half_precision(client, workspace, reference_model):
    png = sketch_png("square")
    body = search(client, png, k=8, shortlist=8).json()
    shortlist, _ = ann_reference(reference_model, workspace.index_dir, png, 8)
    with indexer.open(workspace.index_dir) as index:
        direct = dict(zip(shortlist, direct_relation(reference_model, index, png, shortlist), strict=True))
    scores = [result["relation_score"] for result in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert sorted(result["image_id"] for result in body["results"]) == sorted(shortlist)
    for result in body["results"]:
        assert result["relation_score"] == pytest.approx(float(direct[result["image_id"]]), abs=2e-3)


def test_rerank_false_returns_ann_order(client, workspace, reference_model):
    png = sketch_png("circle")
    body = search(client, png, k=6, rerank="false").json()
    expected_ids, expected_scores = ann_reference(reference_model, workspace.index_dir, png, 6)
    assert body["reranked"] is False
    assert [result["image_id"] for result in body["results"]] == expected_ids
    assert [result["ann_score"] for result in body["results"]] == pytest.approx(expected_scores.tolist(), abs=1e-5)
    assert all(result["relation_score"] is None for result in body["results"])


def test_response_shape_labels_urls_timings_and_index(client, workspace):
    body = search(client, k=3).json()
    assert len(body["results"]) == 3
    with indexer.open(workspace.index_dir) as index:
        for result in body["results"]:
            record = index.record(result["image_id"])
            assert result["label"] == record.label
            assert result["metadata"] == record.metadata
            assert result["image_url"] == f"/images/{result['image_id']}"
    assert set(body["timings_ms"]) == {"decode", "embed", "ann", "rerank", "total"}
    assert all(value >= 0 for value in body["timings_ms"].values())
    assert body["timings_ms"]["total"] >= body["timings_ms"]["embed"] + body["timings_ms"]["rerank"]
    assert body["index"] == {"name": "main", "size": 8}
    assert len(body["query_id"]) == 32


def test_k_larger_than_the_gallery_returns_the_whole_gallery(client):
    body = search(client, k=50, shortlist=50).json()
    assert len(body["results"]) == 8
    assert len({result["image_id"] for result in body["results"]}) == 8


def test_transparent_jpeg_and_webp_sketches_are_accepted(client):
    image = Image.open(io.BytesIO(sketch_png())).convert("RGBA")
    for fmt in ("PNG", "JPEG", "WEBP"):
        buffer = io.BytesIO()
        (image if fmt != "JPEG" else image.convert("RGB")).save(buffer, format=fmt)
        response = search(client, buffer.getvalue(), k=2)
        assert response.status_code == 200, (fmt, response.text)


def test_concurrent_searches_all_succeed_and_agree(client):
    png = sketch_png("square")
    expected = [r["image_id"] for r in search(client, png, k=4).json()["results"]]
    results: list[list[int]] = []
    errors: list[str] = []

    def worker() -> None:
        response = search(client, png, k=4)
        if response.status_code != 200:
            errors.append(response.text)
        else:
            results.append([r["image_id"] for r in response.json()["results"]])

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == [expected] * 4


def test_amff_checkpoint_defaults_to_ann_order_and_refuses_rerank(make_settings, workspace, tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "amff-tiny.pt"
    models.save_checkpoint(models.build_model("amff-tiny", pretrained=False), checkpoint)
    index_dir = indexer.build(workspace.gallery, checkpoint, tmp_path / "amff-index", device="cpu", num_workers=0,
                              progress=False)
    app = create_app(make_settings(index_dir=index_dir, checkpoint=checkpoint))
    with running(app) as client:
        body = search(client, k=3).json()
        assert body["reranked"] is False
        assert all(result["relation_score"] is None for result in body["results"])
        assert_error(search(client, k=3, rerank="true"), 422, "rerank_unavailable")
        assert_error(client.get(f"/explain/{body['query_id']}/{body['results'][0]['image_id']}"), 422,
                     "explain_unavailable")


@pytest.mark.parametrize(("mode", "tolerance"), [("int8", 0.02), ("int8+cascade8", 1e-5)])
def test_the_rerank_mode_setting_reaches_the_search(make_settings, workspace, reference_model, mode, tolerance):
    # int8 alone: scores near the exact ones but not equal (the fast path ran); a cascade over the
    # whole shortlist of 8: every score exact again.
    png = sketch_png("circle")
    app = create_app(make_settings(index_dir=workspace.index_dir_no_tokens, rerank_mode=mode))
    with running(app) as client:
        response = search(client, png, k=8, shortlist=8)
    assert response.status_code == 200, response.text
    shortlist, _ = ann_reference(reference_model, workspace.index_dir_no_tokens, png, 8)
    with indexer.open(workspace.index_dir_no_tokens) as index:
        by_id = dict(zip(shortlist, direct_relation(reference_model, index, png, shortlist), strict=True))
    differences = [abs(result["relation_score"] - float(by_id[result["image_id"]]))
                   for result in response.json()["results"]]
    assert len(differences) == 8 and max(differences) <= tolerance
    if "cascade" not in mode:
        assert max(differences) > 1e-7


def test_an_unknown_rerank_mode_is_a_one_line_settings_error():
    from service.settings import SettingsFailure, load_settings

    with pytest.raises(SettingsFailure, match="SBIR_RERANK_MODE") as raised:
        load_settings(rerank_mode="fp16")
    assert "\n" not in str(raised.value) and "fp32, bf16, int8" in str(raised.value)


def test_a_slow_rerank_precision_is_warned_about_at_start(make_settings, workspace, monkeypatch, caplog):
    # As on a CPU with AVX2 only: bf16 is emulated there, so the server says so and names the fp32 mode.
    import logging

    from models import device

    monkeypatch.setattr(device, "cpu_flags", lambda cpuinfo="/proc/cpuinfo": frozenset({"avx2"}))
    caplog.set_level(logging.WARNING, logger="service.engine")
    app = create_app(make_settings(index_dir=workspace.index_dir_no_tokens, rerank_mode="bf16"))
    with running(app) as client:
        assert search(client, sketch_png("circle"), k=4, shortlist=4).status_code == 200
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any("no native bf16" in message and message.endswith("use fp32") for message in warnings), warnings

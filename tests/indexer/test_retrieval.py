"""indexer.retrieval, the one embed -> shortlist -> re-rank path, against independent computations:
the model's own `relation` (reference form), a brute-force cosine top-k, and a hand-made AMFF case."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import models
from indexer import retrieval


def _sharpened_zse() -> torch.nn.Module:
    """A zse-tiny whose relation scores spread over (0, 1), so that differences in order show."""
    torch.manual_seed(0)
    model = models.build_model("zse-tiny").eval()
    with torch.no_grad():
        model.relation_head.layers[-1].weight.mul_(50.0)
    return model


@pytest.fixture(scope="module")
def encoded():
    model = _sharpened_zse()
    images = torch.rand(11, 3, 224, 224, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.inference_mode():
        sketch = model.encode(images[:1], "sketch")
        photos = model.encode(images[1:], "photo")
    return model, sketch, photos


def test_relation_scores_in_any_chunking_equal_the_models_relation(encoded) -> None:
    model, sketch, photos = encoded
    gallery = retrieval.EmbeddedGallery(photos.ret, photos.tokens, photos.kept)
    ids = np.array([7, 0, 3, 9, 2])  # any order: scores come back in the order asked
    with torch.inference_mode():
        expected = model.relation(sketch.tokens, photos.tokens[torch.from_numpy(ids)]).numpy()
    for batch_size in (1, 2, 4, 64):
        scores = retrieval.relation_scores(model, gallery, retrieval.Tokens(sketch.tokens), ids, batch_size,
                                           torch.device("cpu"))
        assert expected.std() > 0.01
        np.testing.assert_allclose(scores, expected, atol=1e-5, rtol=0)


def test_embedded_gallery_shortlist_is_the_brute_force_cosine_top_k(encoded) -> None:
    _, sketch, photos = encoded
    gallery = retrieval.EmbeddedGallery(photos.ret, photos.tokens)
    assert gallery.factory == "Flat"  # what `sbir index build` picks for 10 photos
    short = retrieval.shortlist(gallery, sketch.ret.numpy(), 4)
    cosine = (photos.ret @ sketch.ret[0]).numpy()
    np.testing.assert_array_equal(short.ids, np.argsort(-cosine, kind="stable")[:4])
    np.testing.assert_allclose(short.ann_scores, np.sort(cosine)[::-1][:4], atol=1e-5)
    # Asking for more than the gallery holds drops FAISS's -1 pads.
    assert len(retrieval.shortlist(gallery, sketch.ret.numpy(), 50).ids) == len(gallery)


def test_order_by_relation_is_descending_and_keeps_ann_order_on_ties() -> None:
    order = retrieval.order_by_relation(np.array([0.2, 0.9, 0.2, 0.5], dtype=np.float32))
    np.testing.assert_array_equal(order, [1, 3, 0, 2])


def test_ranking_scores_add_the_weighted_ann_cosine_and_weight_zero_is_relation_alone() -> None:
    relation = np.array([0.2, 0.9, 0.2, 0.5], dtype=np.float32)
    ann = np.array([0.9, 0.1, 0.5, 0.3], dtype=np.float32)
    # By hand: 0.2 + 0.9 = 1.1, 0.9 + 0.1 = 1.0, 0.2 + 0.5 = 0.7, 0.5 + 0.3 = 0.8.
    fused = retrieval.ranking_scores(relation, ann, 1.0)
    np.testing.assert_allclose(fused, [1.1, 1.0, 0.7, 0.8], atol=1e-6)
    np.testing.assert_array_equal(retrieval.order_by_relation(fused), [0, 1, 3, 2])
    np.testing.assert_allclose(retrieval.ranking_scores(relation, ann, 0.5), [0.65, 0.95, 0.45, 0.65], atol=1e-6)
    np.testing.assert_array_equal(retrieval.ranking_scores(relation, ann, 0.0), relation)


def test_amff_encodes_either_modality_with_one_network_and_cannot_rerank() -> None:
    torch.manual_seed(0)
    model = models.build_model("amff-tiny").eval()
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        as_sketch = model.encode(images, "sketch").ret
        as_photo = model.encode(images, "photo").ret
    torch.testing.assert_close(as_sketch, as_photo, atol=0, rtol=0)
    assert not retrieval.can_rerank(model) and model.relation_scorer(torch.zeros(1, 5, 8)) is None
    gallery = retrieval.EmbeddedGallery(as_photo)
    with pytest.raises(ValueError, match="no relation network"):
        retrieval.relation_scores(model, gallery, retrieval.Tokens(torch.zeros(1, 5, 8)), [0], 4, torch.device("cpu"))

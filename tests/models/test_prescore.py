"""The pre-scorer and the prescoreM re-rank modes: its scores against the formula written out, the
cascade's guarantee against the model's own relation, checkpoints with and without one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import models
from models.prescore import prescores
from models.relation import cosine_kernel
from models.rerank_mode import Reranking, RerankMode
from tests.support.relation_case import mode_scores, spread_case


@pytest.fixture(scope="module")
def encoded():
    """A zse-tiny with a pre-scorer, both heads spread over (0, 1); one sketch and 12 photos."""
    return spread_case(prescorer=True)


def _by_hand(model, sketch_tokens: torch.Tensor, photo_tokens: torch.Tensor) -> np.ndarray:
    # The relation head's recipe with the cross-attention left out: anchors of the self-attention
    # tokens, their cosine kernel, the pre-scorer's head, a sigmoid.
    with torch.no_grad():
        kernel = cosine_kernel(model.anchors(sketch_tokens).expand(len(photo_tokens), -1, -1),
                               model.anchors(photo_tokens))
        layers = model.prescorer.head.layers
        return torch.sigmoid(layers(kernel.flatten(1))).squeeze(-1).numpy()


def test_prescores_are_the_relation_head_recipe_on_self_attention_anchors(encoded) -> None:
    model, sketch, photos, exact = encoded
    got = prescores(model, sketch.tokens, None, photos.tokens).numpy()
    np.testing.assert_allclose(got, _by_hand(model, sketch.tokens, photos.tokens), atol=1e-6, rtol=0)
    assert got.std() > 0.02
    assert np.abs(got - exact).max() > 0.01  # no cross-attention: not the relation score


def _scores(encoded, mode: str, ids: np.ndarray, batch_size: int = 5) -> np.ndarray:
    return mode_scores(encoded, mode, ids, batch_size)


@pytest.mark.parametrize(("mode", "tolerance"), [("prescore4", 1e-5), ("int8+prescore4", 0.05)])
def test_prescore_mode_scores_its_top_m_by_relation_and_keeps_the_rest_in_prescore_order(encoded, mode: str,
                                                                                        tolerance: float) -> None:
    model, sketch, photos, exact = encoded
    ids = np.arange(12)[::-1].copy()  # any order: scores come back in the order asked
    first = _by_hand(model, sketch.tokens, photos.tokens)[ids]
    scores = _scores(encoded, mode, ids)
    top = np.argsort(-first, kind="stable")[:4]
    np.testing.assert_allclose(scores[top], exact[ids[top]], atol=tolerance, rtol=0)
    rest = np.setdiff1d(np.arange(12), top)
    assert scores[rest].max() < scores[top].min()
    np.testing.assert_array_equal(np.argsort(-scores[rest], kind="stable"), np.argsort(-first[rest], kind="stable"))


def test_a_prescore_as_long_as_the_shortlist_is_the_exact_ranking(encoded) -> None:
    *_, exact = encoded
    ids = np.arange(12)
    np.testing.assert_allclose(_scores(encoded, "prescore12", ids, batch_size=3), exact, atol=1e-5, rtol=0)
    assert _scores(encoded, "prescore12", ids[:0]).shape == (0,)


def test_a_prescore_mode_needs_a_checkpoint_with_a_pre_scorer() -> None:
    plain = models.build_model("zse-tiny").eval()
    assert plain.prescorer is None
    with pytest.raises(ValueError, match=r"re-rank mode fp32\+prescore30: the checkpoint has no pre-scorer"):
        Reranking.prepare(plain, RerankMode.parse("prescore30"))


def test_checkpoints_keep_the_pre_scorer_and_old_ones_load_without_it(encoded, tmp_path) -> None:
    model, sketch, photos, _ = encoded
    path = models.save_checkpoint(model, tmp_path / "with.pt")
    loaded = models.load(path, "cpu").model
    assert loaded.config.prescorer and loaded.prescorer is not None
    np.testing.assert_allclose(prescores(loaded, sketch.tokens, None, photos.tokens).numpy(),
                               prescores(model, sketch.tokens, None, photos.tokens).numpy(), atol=1e-6, rtol=0)
    payload = torch.load(path, weights_only=True)
    # A checkpoint written before the field existed: no config key, no prescorer.* weights.
    payload["config"].pop("prescorer")
    payload["state_dict"] = {key: value for key, value in payload["state_dict"].items()
                             if not key.startswith("prescorer.")}
    torch.save(payload, tmp_path / "old.pt")
    assert models.load(tmp_path / "old.pt", "cpu").model.prescorer is None

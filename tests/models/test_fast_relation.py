"""models.fast_relation against ZSEModel.relation / kernel: same numbers, both cross forms, token selection."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import models
from models.config import ZSE_PRESETS
from models.cross_attention import UnbiasedLayerNorm
from models.fast_relation import RelationScorer, prepare_photos, unbiased_post_norm


def _sharpened(config) -> torch.nn.Module:
    """A zse-tiny whose relation head spreads its scores over (0, 1), so that score differences show."""
    torch.manual_seed(0)
    model = models.build_model(config).eval()
    with torch.no_grad():
        model.relation_head.layers[-1].weight.mul_(50.0)  # random-init logits are nearly constant
    return model


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.rand(7, 3, 224, 224, generator=generator) * 2 - 1


@pytest.mark.parametrize("form", ["reference", "paper"])
@pytest.mark.parametrize("keep", [1.0, 0.7])
def test_scores_and_kernel_equal_the_model(images: torch.Tensor, form: str, keep: float) -> None:
    config = dataclasses.replace(ZSE_PRESETS["zse-tiny"], cross_form=form, keep_rate_sketch=keep, keep_rate_photo=keep)
    model = _sharpened(config)
    with torch.inference_mode():
        sketch = model.encode(images[:1], modality="sketch")
        photos = model.encode(images[1:], modality="photo")
        expected_kernel = model.kernel(sketch.tokens, photos.tokens, sketch.kept, photos.kept)
        expected = model.relation(sketch.tokens, photos.tokens, sketch.kept, photos.kept)
        scorer = RelationScorer(model, sketch.tokens, sketch.kept)
        kernel = scorer.kernel(photos.tokens, photos.kept)
        scores = scorer.score(photos.tokens, photos.kept)
    assert (sketch.kept is None) == (keep == 1.0)
    assert expected.std() > 0.01  # the check below means something only if the scores differ
    assert torch.allclose(kernel, expected_kernel, atol=1e-5, rtol=0)
    assert torch.allclose(scores, expected, atol=1e-5, rtol=0)


def test_prepared_photos_and_empty_input_give_the_same_scores(images: torch.Tensor) -> None:
    model = _sharpened(ZSE_PRESETS["zse-tiny"])
    with torch.inference_mode():
        sketch = model.encode(images[:1], modality="sketch")
        photos = model.encode(images[1:], modality="photo")
        expected = model.relation(sketch.tokens, photos.tokens)
        scorer = RelationScorer(model, sketch.tokens)
        prepared = scorer.score(prepare_photos(model, photos.tokens))
        empty = scorer.score(photos.tokens[:0])
    assert torch.allclose(prepared, expected, atol=1e-5, rtol=0)
    assert empty.shape == (0,)


def test_more_than_one_sketch_is_refused() -> None:
    model = models.build_model("zse-tiny").eval()
    with pytest.raises(ValueError, match="one sketch"):
        RelationScorer(model, torch.zeros(2, *model.token_shape))


def test_unbiased_post_norm_equals_the_reference_norm_including_constant_rows() -> None:
    torch.manual_seed(1)
    norm = UnbiasedLayerNorm(96)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.2, 0.2)
    x = torch.randn(3, 5, 96) * 4 + 2
    x[0, 0] = 7.0  # zero variance: the reference gives the bias there
    with torch.no_grad():
        assert torch.allclose(unbiased_post_norm(x, norm), norm(x), atol=1e-5, rtol=0)

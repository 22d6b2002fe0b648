"""The relation network's token sensitivity (indexer.token_metric) against finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import models
from indexer import token_metric


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build_model("zse-tiny", pretrained=False).eval()


def _photo_tokens(model: torch.nn.Module, count: int, seed: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return model.encode(torch.rand(count, 3, 224, 224, generator=generator), "photo").tokens.numpy()


def test_sensitivity_predicts_the_squared_score_change_along_any_direction(tiny) -> None:
    # Two copies of one photo: whichever is drawn as the sketch, the one pair is (x, x). Finite
    # differences of the score, token by token along a direction u, give sum_t (g_t . u)^2 = u^T F u
    # up to F's scaling, which a ratio of two directions cancels.
    tokens = np.repeat(_photo_tokens(tiny, 1, seed=0), 2, axis=0)
    sensitivity = token_metric.relation_sensitivity(tiny, tokens, queries=1, photos=1)
    assert sensitivity.shape == (96, 96) and np.isclose(np.trace(sensitivity), 96)
    np.testing.assert_allclose(sensitivity, sensitivity.T, atol=1e-9)
    base = torch.from_numpy(tokens[:1])
    count = base.shape[1]
    rng = np.random.default_rng(0)
    eigenvalues, eigenvectors = np.linalg.eigh(sensitivity)
    # Directions of high and of low sensitivity, so the ratio is far from 1.
    directions = [eigenvectors[:, -1], eigenvectors[:, len(eigenvalues) // 2] + 0.1 * rng.standard_normal(96)]
    measured = []
    step = 1e-2
    for direction in directions:
        direction = torch.from_numpy(direction / np.linalg.norm(direction)).float()
        shifted = base.repeat(2 * count, 1, 1)
        for t in range(count):
            shifted[t, t] += step * direction
            shifted[count + t, t] -= step * direction
        with torch.no_grad():
            scores = tiny.relation(base.expand(2 * count, -1, -1), shifted).double().numpy()
        slopes = (scores[:count] - scores[count:]) / (2 * step)  # g_t . u for every token t
        measured.append(float((slopes ** 2).sum()))
    predicted = [float(d @ sensitivity @ d) / float(d @ d) for d in directions]
    assert measured[0] > 0 and predicted[1] > 0
    assert np.isclose(measured[0] / measured[1], predicted[0] / predicted[1], rtol=0.05), (measured, predicted)


def test_the_metric_transform_is_the_square_root_of_sensitivity_plus_ridge() -> None:
    rng = np.random.default_rng(1)
    root = rng.standard_normal((12, 12))
    sensitivity = root @ root.T
    transform = token_metric.metric_transform(sensitivity, ridge=0.5)
    np.testing.assert_allclose(transform, transform.T, atol=1e-10)
    np.testing.assert_allclose(transform @ transform, sensitivity + 0.5 * np.eye(12), atol=1e-9)
    with pytest.raises(ValueError, match="ridge"):
        token_metric.metric_transform(sensitivity, ridge=0.0)


def test_a_model_whose_score_does_not_move_gets_no_preferred_direction(tiny) -> None:
    tokens = _photo_tokens(tiny, 1, seed=1)
    np.testing.assert_array_equal(token_metric.relation_sensitivity(tiny, tokens), np.eye(96))  # one photo: no pair

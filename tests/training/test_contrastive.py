"""The demo recipe's losses against hand-written loops of their formulas."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from training.contrastive import (
    contrastive_ret_loss,
    hard_negatives,
    positive_weights,
    relation_ranking_loss,
    soft_cross_entropy,
)


def test_positive_weights_two_levels() -> None:
    instance = torch.tensor([0, 1, 2, 0])
    concept = torch.tensor([5, 5, 6, 5])
    weights = positive_weights(instance, instance, concept, concept, 0.25)
    expected = torch.tensor(
        [[1, 0.25, 0, 1], [0.25, 1, 0, 0.25], [0, 0, 1, 0], [1, 0.25, 0, 1]], dtype=torch.float32
    )
    assert torch.equal(weights, expected)


def _loop_loss(sketch: torch.Tensor, photo: torch.Tensor, weights: torch.Tensor, scale: float) -> float:
    """-sum_j t_ij log p_ij, averaged over rows, both directions, in plain python."""
    size = sketch.shape[0]
    logits = [[scale * float(sketch[i] @ photo[j]) for j in range(size)] for i in range(size)]

    def direction(matrix: list[list[float]], w: list[list[float]]) -> float:
        total = 0.0
        for i in range(size):
            norm = math.log(sum(math.exp(value) for value in matrix[i]))
            mass = sum(w[i])
            total += -sum(w[i][j] / mass * (matrix[i][j] - norm) for j in range(size))
        return total / size

    w = weights.tolist()
    transposed = [list(row) for row in zip(*logits, strict=True)]
    w_t = [list(row) for row in zip(*w, strict=True)]
    return 0.5 * (direction(logits, w) + direction(transposed, w_t))


def test_contrastive_loss_matches_the_formula() -> None:
    generator = torch.Generator().manual_seed(0)
    sketch = F.normalize(torch.randn(5, 8, generator=generator), dim=1)
    photo = F.normalize(torch.randn(5, 8, generator=generator), dim=1)
    instance = torch.tensor([0, 1, 2, 3, 0])
    concept = torch.tensor([0, 0, 1, 1, 0])
    weights = positive_weights(instance, instance, concept, concept, 0.2)
    log_scale = torch.tensor(math.log(1 / 0.07))
    found = float(contrastive_ret_loss(sketch, photo, weights, log_scale))
    assert abs(found - _loop_loss(sketch, photo, weights, 1 / 0.07)) < 1e-4


def test_contrastive_loss_is_low_for_matched_pairs_and_high_for_shuffled() -> None:
    generator = torch.Generator().manual_seed(1)
    vectors = F.normalize(torch.randn(16, 32, generator=generator), dim=1)
    weights = torch.eye(16)
    log_scale = torch.tensor(math.log(1 / 0.05))
    matched = float(contrastive_ret_loss(vectors, vectors, weights, log_scale))
    shuffled = float(contrastive_ret_loss(vectors, vectors.roll(1, 0), weights, log_scale))
    assert matched < 0.05 < math.log(16) < shuffled


def test_hard_negatives_are_the_closest_non_positives() -> None:
    similarity = torch.tensor([[0.9, 0.8, 0.1, 0.5], [0.2, 0.9, 0.7, 0.6], [0.3, 0.95, 0.9, 0.1], [0.0, 0.0, 0.0, 1.0]])
    instance = torch.tensor([0, 1, 2, 3])
    concept = torch.tensor([0, 0, 1, 2])
    weights = positive_weights(instance, instance, concept, concept, 0.2)
    found = hard_negatives(similarity, weights, 2)
    # Row 0: photo 1 shares its concept, so the non-positives 3 (0.5) and 2 (0.1) come first.
    assert found[0].tolist() == [3, 2]
    assert found[1].tolist() == [2, 3]
    assert found[2].tolist() == [1, 0]
    for row in range(4):
        assert row not in found[row].tolist()  # never the sketch's own instance


def test_relation_ranking_loss_is_cross_entropy_plus_calibration() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.2]])
    weights = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.2, 0.0]])
    found = float(relation_ranking_loss(logits, weights, calibration=0.5))
    ce = float(soft_cross_entropy(logits, weights))
    targets = [[1, 0, 0], [1, 0, 0]]
    bce = sum(
        -(t * math.log(1 / (1 + math.exp(-x))) + (1 - t) * math.log(1 - 1 / (1 + math.exp(-x))))
        for row, trow in zip(logits.tolist(), targets, strict=True) for x, t in zip(row, trow, strict=True)
    ) / 6
    assert abs(found - (ce + 0.5 * bce)) < 1e-5
    # soft_cross_entropy itself: row 1 spreads its target 1 / 1.2 and 0.2 / 1.2.
    log_p = torch.log_softmax(logits, dim=1)
    by_hand = -(float(log_p[0, 0]) + (float(log_p[1, 0]) + 0.2 * float(log_p[1, 1])) / 1.2) / 2
    assert abs(ce - by_hand) < 1e-6

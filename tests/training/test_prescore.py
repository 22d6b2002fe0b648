"""Distilling the relation network into the pre-scorer: the grown model scores as before, the loss is
the written formula, training moves the pre-scorer's order towards the relation network's."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

import models
from models.prescore import prescores
from training.prescore import (
    DistillSettings,
    distill,
    listwise_loss,
    relation_targets,
    top_recall,
    with_prescorer,
)


def test_top_recall_counts_the_exact_top_inside_the_prescore_top_by_hand() -> None:
    targets = torch.tensor([[0.9, 0.8, 0.1, 0.2], [0.1, 0.2, 0.3, 0.9]])
    predicted = torch.tensor([[0.9, 0.1, 0.8, 0.0], [0.9, 0.8, 0.1, 0.7]])
    # Row 0: exact top 2 {0, 1}, pre-score top 2 {0, 2}: 1 of 2. Row 1: exact {3, 2}, pre-score {0, 1}: 0.
    assert top_recall(predicted, targets, keep=2, top=2) == 0.25
    assert top_recall(predicted, targets, keep=4, top=2) == 1.0


def test_listwise_loss_is_the_kl_of_the_tempered_lists_plus_the_squared_error() -> None:
    predicted, target = torch.tensor([[0.2, 0.6]]), torch.tensor([[0.5, 0.1]])
    p = np.exp(np.array([0.5, 0.1]) / 0.5)
    p /= p.sum()
    q = np.exp(np.array([0.2, 0.6]) / 0.5)
    q /= q.sum()
    expected = float((p * np.log(p / q)).sum()) + 2.0 * ((0.3**2 + 0.5**2) / 2)
    assert math.isclose(float(listwise_loss(predicted, target, 0.5, 2.0)), expected, rel_tol=1e-5)


def test_distillation_pulls_the_prescore_order_towards_the_relation_order() -> None:
    torch.manual_seed(0)
    base = models.build_model("zse-tiny").eval()
    with torch.no_grad():
        base.relation_head.layers[-1].weight.mul_(50.0)  # scores spread over (0, 1)
    model = with_prescorer(base)
    assert model is not base and model.prescorer is not None and base.prescorer is None
    images = torch.rand(20, 3, 224, 224, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.inference_mode():
        sketches = model.encode(images[:8], "sketch").tokens.clone()
        photos = model.encode(images[8:], "photo").tokens.clone()
        # The grown model is the old one plus a pre-scorer: its relation scores are unchanged.
        torch.testing.assert_close(model.relation(sketches[:1], photos), base.relation(sketches[:1], photos))
    shortlists = torch.stack([torch.randperm(12, generator=torch.Generator().manual_seed(row)) for row in range(8)])
    targets = relation_targets(model, sketches, photos, shortlists)
    with torch.no_grad():
        torch.testing.assert_close(targets[2], model.relation(sketches[2:3], photos[shortlists[2]]), atol=1e-5, rtol=0)

    def current() -> tuple[float, torch.Tensor]:
        predicted = torch.stack([prescores(model, sketches[row:row + 1], None, photos[shortlists[row]])
                                 for row in range(8)])
        return float(listwise_loss(predicted, targets, 0.05, 1.0)), predicted

    before, predicted_before = current()
    losses = distill(model, sketches, photos, shortlists, targets, DistillSettings(steps=150, batch=8))
    after, predicted_after = current()
    assert len(losses) == 150
    assert after < 0.5 * before
    assert top_recall(predicted_after, targets, keep=3, top=3) > top_recall(predicted_before, targets, keep=3, top=3)
    # Only the pre-scorer learnt: the relation network still scores as the base model.
    with torch.inference_mode():
        torch.testing.assert_close(model.relation(sketches[:1], photos), base.relation(sketches[:1], photos))
    assert not torch.equal(model.prescorer.head.layers[0].weight, base.relation_head.layers[0].weight)
    # On the relation score's scale (targets here lie in about 0.05-0.25; all zeros would give 0.017).
    assert float(F.mse_loss(predicted_after, targets)) < 0.005

"""The demo recipe's objective: in-batch contrastive [Ret] loss and relation ranking on hard negatives.

Not in the paper (whose losses stay the default of the benchmark configs, :mod:`models.zse_loss`).
Trained from scratch on a few thousand pairs, the paper's triplet loss left the self-attention [Ret]
nearly constant, so the ANN shortlist was arbitrary. This objective trains the vector the index
searches directly, and the relation network on what re-ranking faces: photos near the positive.

Positives have two levels: ``weights[i, j]`` is 1 when sketch i and photo j show the same instance
(the same emoji in any style), ``concept_weight`` when they only share a concept, else 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def positive_weights(
    sketch_instance: torch.Tensor, photo_instance: torch.Tensor, sketch_concept: torch.Tensor,
    photo_concept: torch.Tensor, concept_weight: float,
) -> torch.Tensor:
    """[B] ids of each side -> [B, B] target weights (1 same instance, ``concept_weight`` same concept)."""
    same_instance = sketch_instance[:, None] == photo_instance[None, :]
    same_concept = sketch_concept[:, None] == photo_concept[None, :]
    return same_instance.float() + concept_weight * (same_concept & ~same_instance).float()


def soft_cross_entropy(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum_j t_ij log softmax(logits_i)_j with t = weights normalised per row.

    logits, weights: [R, C]; every row needs a positive weight somewhere."""
    target = weights / weights.sum(dim=1, keepdim=True)
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def contrastive_ret_loss(
    sketch_ret: torch.Tensor, photo_ret: torch.Tensor, weights: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric multi-positive InfoNCE.

    sketch_ret, photo_ret: [B, D] L2-normalised; weights: [B, B] (rows sketches); log_scale: scalar,
    the log of the inverse temperature (learnable, as in CLIP). Returns a scalar.
    """
    logits = torch.exp(log_scale) * sketch_ret @ photo_ret.T
    return 0.5 * (soft_cross_entropy(logits, weights) + soft_cross_entropy(logits.T, weights.T))


def hard_negatives(similarity: torch.Tensor, weights: torch.Tensor, count: int) -> torch.Tensor:
    """For each sketch, the ``count`` photos of the batch it is closest to among its non-positives.

    similarity, weights: [B, B] (rows sketches). Returns [B, count] photo positions. Where a row has
    fewer non-positives than ``count``, same-concept photos fill in (never the row's instance).
    """
    ranked = similarity.detach().clone()
    ranked[weights > 0] -= 4.0  # cosines are in [-1, 1]: every non-positive ranks first
    ranked[weights >= 1] = float("-inf")
    return ranked.topk(count, dim=1).indices


def relation_ranking_loss(
    logits: torch.Tensor, weights: torch.Tensor, calibration: float = 0.1
) -> torch.Tensor:
    """Listwise loss of the relation logits of each sketch's positive and hard negatives.

    logits: [B, 1 + h] (column 0 the positive), weights: [B, 1 + h] targets as in
    :func:`positive_weights`. A cross-entropy ranks the positive first; a ``calibration``-weighted
    binary term keeps sigmoid(logit) near 1 for positives and 0 for negatives, so that the scores
    shown to users stay on the paper's (0, 1) scale.
    """
    ranking = soft_cross_entropy(logits, weights)
    binary = F.binary_cross_entropy_with_logits(logits, (weights >= 1).float())
    return ranking + calibration * binary


def alignment_loss(kernel: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cell alignment of pairs drawn in one frame (an OpenMoji black drawing and its colour version).

    kernel: [P, A, A] cosines of sketch anchor i and photo anchor j after cross-attention. Each row,
    as a softmax at ``temperature``, is trained to peak at its own cell: mean cross-entropy with target
    i. What the correspondence explanation shows (its best photo cell per sketch cell) then points at
    the matching part of the photo.
    """
    pairs, anchors, _ = kernel.shape
    targets = torch.arange(anchors, device=kernel.device).repeat(pairs)
    return F.cross_entropy(kernel.reshape(pairs * anchors, anchors) / temperature, targets)

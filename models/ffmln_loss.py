"""FFMLN losses (Zhao, Liu, Li, Entropy 2023; facts in `shared/reference/ffmln-amff-facts.md`).

Notation: S = sketch embeddings [Bs, E] with labels [Bs], P = photo embeddings [Bp, E] with labels
[Bp], labels are seen-class indices in [0, K). d(x, y) = ||x - y||_2 (Euclidean), m = margin (0.2),
[z]_+ = max(z, 0).

A triplet term T(anchors, positives, negatives) takes positives with the anchor's label and negatives
with another label from the named sets; when the positive set is the anchor set, an anchor is never
its own positive. Two mining rules:

- "hard" (default, batch-hard): per anchor a, the farthest positive and the closest negative,
      T = 1/|A'| sum_{a in A'} [ max_p d(a, p) - min_n d(a, n) + m ]_+,
  A' = anchors that have at least one positive and one negative in the batch. This equals the
  largest hinge over all of a's triplets, since the hinge grows with d(a, p) and falls with d(a, n).
- "all": T = mean over every valid (a, p, n) of [ d(a, p) - d(a, n) + m ]_+ (zero terms included).

A term with no valid triplet is 0 (and still part of the graph, so backward works).

    L_sin = T(S, S, S) + T(P, P, P)                                    (Eq. 3, single-modal)
    L_mul = T(S, P, S) + T(P, S, P)                                    (Eq. 4, hybrid: cross-modal
                                                                        positive, same-modal negative)
    L_cro = T(S, P, P) + T(P, S, S)                                    (Eq. 8, cross-modal)
    L_norm = -1/N sum_i log softmax_k( cos(x_i, w_k) / t )_{y_i}       (Eq. 5, t = 0.05, proxies w_k)
    L_cls  = -1/N sum_i log softmax( W x_i + b )_{y_i}                 (Eq. 6, linear classifier)
    L = L_norm + lam * (L_cls + L_sin + L_mul)                         (Eq. 9, lam = 0.8)

L_norm and L_cls run over all N = Bs + Bp embeddings of both modalities. L_cro is not part of L
(Eq. 9 leaves it out); `ffmln_loss` reports it in `parts` for monitoring.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Mining = Literal["hard", "all"]

TEMPERATURE = 0.05
# Squared distances are clamped before the sqrt: its gradient is infinite at 0, and cancellation in
# |x|^2 + |y|^2 - 2xy can make them slightly negative.
_MIN_SQUARED_DISTANCE = 1e-12


def pairwise_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Euclidean distances: x [M, E], y [N, E] -> [M, N]."""
    squared = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1)[None, :] - 2 * x @ y.T
    return squared.clamp_min(_MIN_SQUARED_DISTANCE).sqrt()


def triplet_term(
    anchors: torch.Tensor,
    anchor_labels: torch.Tensor,
    positives: torch.Tensor,
    positive_labels: torch.Tensor,
    negatives: torch.Tensor,
    negative_labels: torch.Tensor,
    margin: float = 0.2,
    mining: Mining = "hard",
    positives_are_anchors: bool = False,
) -> torch.Tensor:
    """T(anchors [A, E], positives [P, E], negatives [N, E]) -> scalar (see module docstring).

    positives_are_anchors: the positive set is the anchor set itself, so the diagonal (an anchor
    paired with itself) is not a positive.
    """
    d_pos = pairwise_distance(anchors, positives)  # [A, P]
    d_neg = pairwise_distance(anchors, negatives)  # [A, N]
    is_pos = anchor_labels[:, None] == positive_labels[None, :]
    if positives_are_anchors:
        is_pos = is_pos & ~torch.eye(len(anchors), dtype=torch.bool, device=anchors.device)
    is_neg = anchor_labels[:, None] != negative_labels[None, :]
    # Multiplying by zero keeps an empty term attached to the graph of all three inputs.
    zero = (anchors.sum() + positives.sum() + negatives.sum()) * 0.0
    if mining == "hard":
        valid = is_pos.any(1) & is_neg.any(1)
        if not valid.any():
            return zero
        farthest_pos = d_pos.masked_fill(~is_pos, float("-inf")).amax(1)
        closest_neg = d_neg.masked_fill(~is_neg, float("inf")).amin(1)
        return F.relu(farthest_pos - closest_neg + margin)[valid].mean()
    if mining == "all":
        valid = is_pos[:, :, None] & is_neg[:, None, :]  # [A, P, N]
        if not valid.any():
            return zero
        hinge = F.relu(d_pos[:, :, None] - d_neg[:, None, :] + margin)
        return hinge[valid].mean()
    raise ValueError(f"unknown triplet mining {mining!r}; use 'hard' or 'all'")


def l_sin(sketch_emb: torch.Tensor, sketch_labels: torch.Tensor, photo_emb: torch.Tensor,
          photo_labels: torch.Tensor, margin: float = 0.2, mining: Mining = "hard") -> torch.Tensor:
    """Single-modal triplets, L_sin = T(S, S, S) + T(P, P, P). Embeddings [B, E], labels [B]."""
    sketch_term = triplet_term(sketch_emb, sketch_labels, sketch_emb, sketch_labels, sketch_emb, sketch_labels,
                               margin, mining, positives_are_anchors=True)
    photo_term = triplet_term(photo_emb, photo_labels, photo_emb, photo_labels, photo_emb, photo_labels,
                              margin, mining, positives_are_anchors=True)
    return sketch_term + photo_term


def l_mul(sketch_emb: torch.Tensor, sketch_labels: torch.Tensor, photo_emb: torch.Tensor,
          photo_labels: torch.Tensor, margin: float = 0.2, mining: Mining = "hard") -> torch.Tensor:
    """Hybrid triplets, L_mul = T(S, P, S) + T(P, S, P): positive from the other modality, negative from
    the anchor's own. Embeddings [B, E], labels [B]."""
    sketch_anchored = triplet_term(sketch_emb, sketch_labels, photo_emb, photo_labels, sketch_emb, sketch_labels,
                                   margin, mining)
    photo_anchored = triplet_term(photo_emb, photo_labels, sketch_emb, sketch_labels, photo_emb, photo_labels,
                                  margin, mining)
    return sketch_anchored + photo_anchored


def l_cro(sketch_emb: torch.Tensor, sketch_labels: torch.Tensor, photo_emb: torch.Tensor,
          photo_labels: torch.Tensor, margin: float = 0.2, mining: Mining = "hard") -> torch.Tensor:
    """Cross-modal triplets, L_cro = T(S, P, P) + T(P, S, S). Embeddings [B, E], labels [B]."""
    sketch_anchored = triplet_term(sketch_emb, sketch_labels, photo_emb, photo_labels, photo_emb, photo_labels,
                                   margin, mining)
    photo_anchored = triplet_term(photo_emb, photo_labels, sketch_emb, sketch_labels, sketch_emb, sketch_labels,
                                  margin, mining)
    return sketch_anchored + photo_anchored


def l_norm(embeddings: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor,
           temperature: float = TEMPERATURE) -> torch.Tensor:
    """Normalised softmax over class proxies: embeddings [N, E], labels [N], proxies [K, E] -> scalar.

    Both sides are L2-normalised, so the logits are cosines / temperature.
    """
    logits = F.normalize(embeddings, dim=-1) @ F.normalize(proxies, dim=-1).T / temperature  # [N, K]
    return F.cross_entropy(logits, labels)


def l_cls(embeddings: torch.Tensor, labels: torch.Tensor, classifier: nn.Module) -> torch.Tensor:
    """Cross-entropy of the linear classifier: embeddings [N, E], labels [N] -> scalar."""
    return F.cross_entropy(classifier(embeddings), labels)


def ffmln_loss(
    model: nn.Module,
    sketch_emb: torch.Tensor,
    sketch_labels: torch.Tensor,
    photo_emb: torch.Tensor,
    photo_labels: torch.Tensor,
    lam: float = 0.8,
    margin: float = 0.2,
    mining: Mining = "hard",
    temperature: float = TEMPERATURE,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The FFMLN objective, L = L_norm + lam * (L_cls + L_sin + L_mul).

    sketch_emb [Bs, E], photo_emb [Bp, E] are `model.encode(...).ret`; labels are seen-class indices.
    `model` supplies `proxies` [K, E] and `classifier` (built with num_classes = K > 0).
    Returns (total, parts) with parts "norm", "cls", "sin", "mul", "cro" (monitoring only), "total";
    the parts are not detached.
    """
    proxies = getattr(model, "proxies", None)
    classifier = getattr(model, "classifier", None)
    if proxies is None or classifier is None:
        raise ValueError("ffmln_loss needs a model built with num_classes > 0 (proxies and classifier)")
    embeddings = torch.cat([sketch_emb, photo_emb])
    labels = torch.cat([sketch_labels, photo_labels])
    parts = {
        "norm": l_norm(embeddings, labels, proxies, temperature),
        "cls": l_cls(embeddings, labels, classifier),
        "sin": l_sin(sketch_emb, sketch_labels, photo_emb, photo_labels, margin, mining),
        "mul": l_mul(sketch_emb, sketch_labels, photo_emb, photo_labels, margin, mining),
        "cro": l_cro(sketch_emb, sketch_labels, photo_emb, photo_labels, margin, mining),
    }
    total = parts["norm"] + lam * (parts["cls"] + parts["sin"] + parts["mul"])
    parts["total"] = total
    return total, parts


def freeze_classifier(model: nn.Module) -> nn.Module:
    """Stop training the classification layer, as Algorithm 1 does; returns `model`.

    Its parameters stop receiving gradients, so optimisers (which skip parameters whose grad is None)
    leave them, weight decay included, unchanged.
    """
    classifier = getattr(model, "classifier", None)
    if classifier is None:
        raise ValueError("model has no classifier (built with num_classes = 0)")
    classifier.requires_grad_(False)
    return model

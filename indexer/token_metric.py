"""How much the relation score moves when a photo's tokens move: the metric ``--tokens rq`` codes in.

A small error e [D] in one photo token changes a pair's relation score by about g . e, g being the
score's gradient with respect to that token. Over pairs and tokens, the mean squared change is
e^T F e with F = E[g g^T] [D, D], the sensitivity. Residual quantisation minimises the plain L2
error |e|^2, which treats every direction alike; F of the demo model is far from that (eigenvalues
from 0.02 to 21 times their mean), so the codec quantises y = A x with A = (F + ridge I)^(1/2)
instead (F scaled to mean eigenvalue 1), where the L2 error is e^T (F + ridge I) e: bits go to the
directions the score reads. The ridge keeps every direction coded (F is estimated from a sample
and the relation is not linear).

F is estimated from the gallery alone: photos stand in for sketches (the encoder and the
cross-attention take both), paired with other photos. On the demo model, that estimate and one
from real line drawings correlate at 0.96. Measured effect: benchmarks/RESULTS.md, "Compressed
token store".
"""

from __future__ import annotations

from typing import Any

import numpy as np

RIDGE = 1.0  # measured against 0.1 on the demo split: see benchmarks/RESULTS.md
QUERIES = 48  # photos in the sketch's place
PHOTOS_PER_QUERY = 16  # photos each of them is paired with


def relation_sensitivity(model: Any, tokens: np.ndarray, kept: np.ndarray | None = None, *,
                         queries: int = QUERIES, photos: int = PHOTOS_PER_QUERY, seed: int = 0) -> np.ndarray:
    """F [D, D] float64, scaled to trace D, from photo tokens [G, T', D] (kept [G, n] for models
    with token selection): each of ``queries`` photos in the sketch's place against ``photos`` others.

    ``model`` is a ZSE model with a relation network (``model.relation``); gradients are taken in
    float32 on the model's device (the same code on CUDA and on the CPU), the weights unchanged.
    """
    import torch

    count, _, dim = tokens.shape
    if count < 2:
        return np.eye(dim)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(count, min(queries, count), replace=False)
    total = torch.zeros(dim, dim, dtype=torch.float64)

    device = next(model.parameters()).device

    def rows_of(source: np.ndarray, rows: Any) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(source[rows])).to(device)
    was_training = model.training
    model.eval()
    try:
        for query in chosen:
            others = rng.choice(np.delete(np.arange(count), query), min(photos, count - 1), replace=False)
            sketch = rows_of(tokens, [query]).float()
            sketch_kept = None if kept is None else rows_of(kept, [query])
            photo = rows_of(tokens, others).float().requires_grad_(True)
            photo_kept = None if kept is None else rows_of(kept, others)
            scores = model.relation(sketch.expand(len(others), -1, -1), photo,
                                    None if sketch_kept is None else sketch_kept.expand(len(others), -1),
                                    photo_kept)
            (gradient,) = torch.autograd.grad(scores.sum(), photo)  # [P, T', D]: one pair per photo
            flat = gradient.reshape(-1, dim).double().cpu()
            total += flat.T @ flat
    finally:
        model.train(was_training)
    trace = float(total.trace())
    if not np.isfinite(trace) or trace <= 0:  # a flat relation (e.g. untrained and saturated): no preference
        return np.eye(dim)
    return (total * (dim / trace)).numpy()


def metric_transform(sensitivity: np.ndarray, ridge: float = RIDGE) -> np.ndarray:
    """A = (F + ridge I)^(1/2) [D, D] float64, symmetric positive definite (ridge > 0)."""
    if ridge <= 0:
        raise ValueError(f"ridge must be positive, not {ridge}")
    values, vectors = np.linalg.eigh(np.asarray(sensitivity, dtype=np.float64) + ridge * np.eye(len(sensitivity)))
    return (vectors * np.sqrt(np.clip(values, ridge, None))) @ vectors.T


def coding_transform(model: Any, tokens: np.ndarray, kept: np.ndarray | None = None) -> np.ndarray | None:
    """The space the rq codec codes ``model``'s photo tokens [G, T', D] in: ``metric_transform`` of
    their ``relation_sensitivity``; None for a model without a relation network (AMFF)."""
    if getattr(model, "family", None) != "zse":
        return None
    return metric_transform(relation_sensitivity(model, tokens, kept))

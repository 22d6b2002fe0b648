"""Ranking helpers the quality benchmarks share: two-stage distances and top-k agreement."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Photos outside a shortlist get distances above every relation distance (-score, in (-1, 0)),
# in [Ret] order among themselves: what a two-stage search returns after its re-ranked shortlist.
OUTSIDE_SHORTLIST = 10.0


def two_stage_distances(inner: np.ndarray, shortlists: Sequence[np.ndarray], scores: Sequence[np.ndarray]
                        ) -> np.ndarray:
    """inner [Q, G] [Ret] inner products; shortlists / scores: per query, ids [K] and relation scores [K]
    -> distances [Q, G] (lower is closer) for ``training.metrics.retrieval_metrics``."""
    distances = OUTSIDE_SHORTLIST + (1.0 - np.asarray(inner, dtype=np.float32))
    for row, (ids, row_scores) in enumerate(zip(shortlists, scores, strict=True)):
        distances[row, ids] = -row_scores
    return distances


def top_ids(ids: np.ndarray, scores: np.ndarray, k: int = 10) -> set[int]:
    """The ``k`` ids of highest score (ties in the given order)."""
    return set(ids[np.argsort(-scores, kind="stable")[:k]].tolist())


def mean_overlap(tops: Sequence[set[int]], reference: Sequence[set[int]], k: int = 10) -> float:
    """Mean over queries of |top_k & reference top_k| / k."""
    return float(np.mean([len(a & b) / k for a, b in zip(tops, reference, strict=True)]))

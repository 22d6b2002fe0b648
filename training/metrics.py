"""Retrieval metrics for (zero-shot) sketch-based image retrieval.

All functions take a distance matrix ``distances`` of shape ``[Q, G]`` (Q queries, i.e. sketches;
G gallery items, i.e. photos; lower is closer) and a boolean relevance matrix ``relevant`` of the
same shape (``relevant[q, g]`` is true when photo ``g`` is a correct answer for sketch ``q``,
usually "same class"; for fine-grained data, "the paired photo"). Numpy arrays and torch tensors
are accepted (tensors are moved to the CPU; torch itself is never imported here).

Ranking
-------
Each query ranks the gallery by ascending distance. Ties are broken by gallery index (a stable
sort of each row), so results are deterministic and do not depend on the sort algorithm. The
reference code uses numpy's default (unstable) ``argsort``, whose tie order is unspecified;
with continuous float distances ties are rare, but relation scores saturated at 0 or 1 in half
precision can tie. NaN distances rank last. Relation scores (higher is closer) are turned into
distances by negation: pass ``-scores``, or use :func:`rank_by_scores` for the ranking itself.

Two metric styles
-----------------
Notation for one query, on its ranking: ``rel[k]`` (k = 1..G) is 1 when the item at rank k is
relevant, ``P`` the number of relevant items in the whole gallery, ``prec(k) = sum(rel[1..k]) / k``.

``style="reference"`` reproduces the ZSE-SBIR reference evaluation (``utils/ap.py``), so that
numbers compare with the paper's tables:

- ``map_all``: VOC-style AP. The precision envelope ``env(k) = max_{j >= k} prec(j)`` (precision
  made non-increasing from the right, over the whole ranking) is summed over the recall steps,
  each of height ``1 / P``: ``AP = (1 / P) * sum_{k : rel[k] = 1} env(k)``.
- ``map_200``: the same computed on the first ``T = min(200, G)`` ranks only (the envelope also only
  sees those ranks), with ``P`` replaced by ``min(T, P)``:
  ``AP@200 = (1 / min(T, P)) * sum_{k <= T : rel[k] = 1} max_{k <= j <= T} prec(j)``.
- ``prec_K`` (K = 100, 200): mean relevance over the first ``min(K, P)`` ranks,
  ``sum(rel[1..min(K, P)]) / min(K, P)``. This is *not* the usual precision@K: a query with only
  30 relevant items is scored on its first 30 ranks (an R-precision capped at K).

``style="standard"`` uses the textbook definitions:

- ``map_all``: non-interpolated AP (as scikit-learn's ``average_precision_score`` without ties):
  ``AP = (1 / P) * sum_{k : rel[k] = 1} prec(k)``.
- ``map_200``: the same sum truncated at rank 200, normalised by ``min(200, P)``.
- ``prec_K``: ``sum(rel[1..K]) / K`` (divided by K even when the gallery holds fewer than K items).

Where the styles differ: the envelope makes the reference AP >= the standard AP, equal only when the
precision at the relevant ranks is already non-increasing (e.g. a perfect ranking). With all relevant
items ranked last the precision rises towards the end, so they differ: for ``rel = 0 0 0 1 1`` the
reference AP is (2/5 + 2/5) / 2 = 0.4 and the standard AP (1/4 + 2/5) / 2 = 0.325. The reference
Prec@K is >= the standard one whenever ``P < K`` (it cannot reach 1 otherwise), and equal when ``P >= K``.

In both styles a query with no relevant item (``P = 0``) scores NaN for every metric, and means
over queries ignore NaN (``numpy.nanmean``), as in the reference. A metric that is NaN for every
query is reported as NaN.

Fine-grained (``fine_grained=True``) adds ``acc_1`` and ``acc_10``: the fraction of queries whose
best-ranked relevant item (normally the single paired photo) is within the first 1 / 10 ranks.
These are the same in both styles.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np

Style = Literal["reference", "standard"]

# Elements per working array in one chunk of queries: about 32 MB for a float64 array, which keeps
# 15,229 x 17,101 (Sketchy Ext 25, full test set) at a few hundred MB of peak memory.
_CHUNK_ELEMENTS = 1 << 22

_TOP_MAP = 200
_PRECISION_CUTOFFS = (100, 200)
_ACCURACY_CUTOFFS = (1, 10)


def _to_numpy(array: Any) -> np.ndarray:
    """Return ``array`` as a numpy array; torch tensors are detached and copied to the CPU."""
    if hasattr(array, "detach"):  # a torch.Tensor, without importing torch here
        array = array.detach().cpu()
        if str(array.dtype) in ("torch.float16", "torch.bfloat16"):
            array = array.float()  # numpy has no bfloat16
        array = array.numpy()
    return np.asarray(array)


def _as_matrix(array: Any, name: str) -> np.ndarray:
    matrix = _to_numpy(array)
    if matrix.ndim == 1:  # one query
        matrix = matrix[None, :]
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be [Q, G] (or [G] for one query), got shape {matrix.shape}")
    return matrix


def rank_by_distances(distances: Any) -> np.ndarray:
    """Gallery indices of each query, best first.

    Args:
        distances: ``[Q, G]`` (or ``[G]``), lower is closer.

    Returns:
        ``[Q, G]`` int64: ``ranking[q, r]`` is the gallery index at rank ``r`` (0-based) for query ``q``.
        Sorted by (distance, gallery index): ties keep gallery order; NaN ranks last.
    """
    return np.argsort(_as_matrix(distances, "distances"), axis=1, kind="stable")


def rank_by_scores(scores: Any) -> np.ndarray:
    """Gallery indices of each query, best first, for similarity scores (higher is closer).

    Args:
        scores: ``[Q, G]`` (or ``[G]``) relation scores or similarities.

    Returns:
        ``[Q, G]`` int64, as :func:`rank_by_distances` applied to ``-scores``: sorted by
        (-score, gallery index). Use ``retrieval_metrics(-scores, relevant)`` for metrics.
    """
    return rank_by_distances(-_as_matrix(scores, "scores"))


def relevance_from_labels(query_labels: Any, gallery_labels: Any) -> np.ndarray:
    """Class-level relevance: ``[Q]`` and ``[G]`` integer labels -> ``[Q, G]`` bool (same label)."""
    query_labels = _to_numpy(query_labels).reshape(-1)
    gallery_labels = _to_numpy(gallery_labels).reshape(-1)
    return query_labels[:, None] == gallery_labels[None, :]


def _chunk_metrics(
    distances: np.ndarray, relevant: np.ndarray, style: Style, fine_grained: bool, order: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Per-query metrics of one chunk: ``[q, G]`` inputs -> dict of ``[q]`` float64 (NaN if P = 0).
    order: ``rank_by_distances(distances)`` when the caller has it already."""
    n_queries, n_gallery = distances.shape
    if order is None:
        order = np.argsort(distances, axis=1, kind="stable")
    ranked_relevance = np.take_along_axis(relevant, order, axis=1)  # [q, G] bool, best rank first
    del order

    hits = np.cumsum(ranked_relevance, axis=1, dtype=np.int64)  # [q, G] relevant items in ranks 1..k
    positives = hits[:, -1].astype(np.float64)  # [q]
    ranks = np.arange(1, n_gallery + 1, dtype=np.float64)
    precision = hits / ranks  # [q, G] prec(k)
    top = min(_TOP_MAP, n_gallery)

    with np.errstate(divide="ignore", invalid="ignore"):
        no_positive = positives == 0
        out: dict[str, np.ndarray] = {}
        if style == "reference":
            # Precision envelope: running maximum from the right. For map_200 the envelope may only see
            # the first `top` ranks, so it is recomputed on the truncated precision.
            envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
            out["map_all"] = np.where(ranked_relevance, envelope, 0.0).sum(axis=1) / positives
            del envelope
            envelope_top = np.maximum.accumulate(precision[:, top - 1 :: -1], axis=1)[:, ::-1]
            out["map_200"] = np.where(ranked_relevance[:, :top], envelope_top, 0.0).sum(axis=1) / np.minimum(
                top, positives
            )
            del envelope_top
            for cutoff in _PRECISION_CUTOFFS:
                # mean relevance over the first min(K, P) ranks = hits at rank min(K, P) / min(K, P)
                depth = np.minimum(cutoff, positives).astype(np.int64)  # >= 1 unless P = 0
                at_depth = hits[np.arange(n_queries), np.maximum(depth, 1) - 1]
                out[f"prec_{cutoff}"] = at_depth / depth
        elif style == "standard":
            relevant_precision = np.where(ranked_relevance, precision, 0.0)  # [q, G]
            out["map_all"] = relevant_precision.sum(axis=1) / positives
            out["map_200"] = relevant_precision[:, :top].sum(axis=1) / np.minimum(_TOP_MAP, positives)
            del relevant_precision
            for cutoff in _PRECISION_CUTOFFS:
                out[f"prec_{cutoff}"] = hits[:, min(cutoff, n_gallery) - 1] / float(cutoff)
        else:
            raise ValueError(f"style must be 'reference' or 'standard', got {style!r}")

        if fine_grained:
            first_hit = np.argmax(ranked_relevance, axis=1)  # 0-based rank of the best relevant item
            for cutoff in _ACCURACY_CUTOFFS:
                out[f"acc_{cutoff}"] = (first_hit < cutoff).astype(np.float64)

    for values in out.values():
        values[no_positive] = np.nan
    return out


def per_query_metrics(
    distances: Any,
    relevant: Any,
    style: Style = "reference",
    fine_grained: bool = False,
    chunk_size: int | None = None,
    order: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-query metrics, the values :func:`retrieval_metrics` averages.

    Args:
        distances: ``[Q, G]`` float (numpy or torch), lower is closer.
        relevant: ``[Q, G]`` bool (or 0/1), true where the gallery item is a correct answer.
        style: ``"reference"`` or ``"standard"`` (see the module docstring).
        fine_grained: also return ``acc_1`` and ``acc_10``.
        chunk_size: queries per chunk; default keeps each working array near 4 M elements.
        order: ``rank_by_distances(distances)``, when the caller ranks the same distances for
            several metric styles or relevances (the sort is the costliest step); else computed here.

    Returns:
        ``{"map_all", "map_200", "prec_100", "prec_200"[, "acc_1", "acc_10"]}`` -> ``[Q]`` float64,
        NaN for queries without any relevant item.
    """
    if style not in ("reference", "standard"):
        raise ValueError(f"style must be 'reference' or 'standard', got {style!r}")
    distances = _as_matrix(distances, "distances")
    relevant = _as_matrix(relevant, "relevant").astype(bool, copy=False)
    if distances.shape != relevant.shape:
        raise ValueError(
            f"distances {distances.shape} and relevant {relevant.shape} must have the same shape"
        )
    n_queries, n_gallery = distances.shape
    if n_gallery == 0:
        raise ValueError("the gallery is empty")
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // n_gallery)

    keys = ["map_all", "map_200", *(f"prec_{k}" for k in _PRECISION_CUTOFFS)]
    if fine_grained:
        keys += [f"acc_{k}" for k in _ACCURACY_CUTOFFS]
    result = {key: np.empty(n_queries, dtype=np.float64) for key in keys}
    for start in range(0, n_queries, chunk_size):
        stop = min(start + chunk_size, n_queries)
        chunk = _chunk_metrics(distances[start:stop], relevant[start:stop], style, fine_grained,
                               None if order is None else order[start:stop])
        for key in keys:
            result[key][start:stop] = chunk[key]
    return result


def retrieval_metrics(
    distances: Any,
    relevant: Any,
    style: Style = "reference",
    fine_grained: bool = False,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Mean retrieval metrics over queries (NaN queries, i.e. without relevant items, ignored).

    Args:
        distances: ``[Q, G]`` float (numpy or torch), lower is closer; for relation scores pass ``-scores``.
        relevant: ``[Q, G]`` bool, e.g. ``relevance_from_labels(sketch_labels, photo_labels)``.
        style: ``"reference"`` (as the ZSE-SBIR code computes them, comparable with the paper) or
            ``"standard"`` (non-interpolated AP, precision@K = hits / K); see the module docstring.
        fine_grained: also report ``acc_1`` and ``acc_10``.
        chunk_size: queries per chunk (memory bound); the default suits any gallery size.

    Returns:
        ``{"map_all", "map_200", "prec_100", "prec_200"}`` (+ ``"acc_1", "acc_10"``) as Python floats.
    """
    per_query = per_query_metrics(distances, relevant, style, fine_grained, chunk_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice": all-NaN -> NaN
        return {
            key: float(np.nanmean(values)) if values.size else float("nan")
            for key, values in per_query.items()
        }

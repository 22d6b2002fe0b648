"""Retrieval metrics: hand-computed cases and a brute-force (python loops) cross-check of both styles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.metrics import (
    per_query_metrics,
    rank_by_distances,
    rank_by_scores,
    relevance_from_labels,
    retrieval_metrics,
)

BASE_KEYS = {"map_all", "map_200", "prec_100", "prec_200"}


# ------------------------------------------------------------------------------------------------
# Brute force, written from the definitions, one query at a time.


def _ranked_relevance(distance_row, relevant_row):
    order = sorted(range(len(distance_row)), key=lambda g: (distance_row[g], g))
    return [bool(relevant_row[g]) for g in order]


def _voc_ap(ranked, top=None):
    """Reference style: cumulative tp/fp -> recall/precision -> envelope -> sum over recall steps."""
    positives = sum(ranked)
    if top is not None:
        top = min(top, len(ranked))
        ranked = ranked[:top]
        positives = min(top, positives)
    if positives == 0:
        return math.nan
    recall, precision, tp, fp = [], [], 0, 0
    for is_relevant in ranked:
        tp += is_relevant
        fp += not is_relevant
        recall.append(tp / positives)
        precision.append(tp / (tp + fp))
    mrec = [0.0, *recall, 1.0]
    mpre = [0.0, *precision, 0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


def _reference_precision(ranked, k):
    depth = min(k, sum(ranked))
    return math.nan if depth == 0 else sum(ranked[:depth]) / depth


def _standard_ap(ranked, top=None):
    positives = sum(ranked)
    if positives == 0:
        return math.nan
    limit = len(ranked) if top is None else min(top, len(ranked))
    total, hits = 0.0, 0
    for rank in range(1, limit + 1):
        if ranked[rank - 1]:
            hits += 1
            total += hits / rank
    return total / (positives if top is None else min(top, positives))


def _brute_force(distances, relevant, style, fine_grained=False):
    rows = {key: [] for key in BASE_KEYS | ({"acc_1", "acc_10"} if fine_grained else set())}
    for q in range(distances.shape[0]):
        ranked = _ranked_relevance(distances[q].tolist(), relevant[q].tolist())
        has_positive = any(ranked)
        if style == "reference":
            rows["map_all"].append(_voc_ap(ranked))
            rows["map_200"].append(_voc_ap(ranked, 200))
            rows["prec_100"].append(_reference_precision(ranked, 100))
            rows["prec_200"].append(_reference_precision(ranked, 200))
        else:
            rows["map_all"].append(_standard_ap(ranked))
            rows["map_200"].append(_standard_ap(ranked, 200))
            rows["prec_100"].append(sum(ranked[:100]) / 100 if has_positive else math.nan)
            rows["prec_200"].append(sum(ranked[:200]) / 200 if has_positive else math.nan)
        if fine_grained:
            first = ranked.index(True) if has_positive else None
            rows["acc_1"].append(math.nan if first is None else float(first < 1))
            rows["acc_10"].append(math.nan if first is None else float(first < 10))
    means = {}
    for key, values in rows.items():
        kept = [v for v in values if not math.isnan(v)]
        means[key] = sum(kept) / len(kept) if kept else math.nan
    return means


def _random_case(seed, n_queries=7, n_gallery=300, n_classes=5, quantise=False):
    rng = np.random.default_rng(seed)
    query_labels = rng.integers(0, n_classes, n_queries)
    gallery_labels = rng.integers(0, n_classes, n_gallery)
    gallery_labels[gallery_labels == query_labels[0]] = (
        query_labels[0] + 1
    ) % n_classes  # query 0: no positive
    distances = rng.random((n_queries, n_gallery))
    # make retrieval better than chance so the values are not all near the base rate
    distances -= 0.3 * relevance_from_labels(query_labels, gallery_labels)
    if quantise:
        distances = np.round(distances, 1)  # many ties: checks the (distance, index) order
    return distances, relevance_from_labels(query_labels, gallery_labels)


# ------------------------------------------------------------------------------------------------
# Brute-force agreement


@pytest.mark.parametrize("style", ["reference", "standard"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("quantise", [False, True])
def test_matches_brute_force(style, seed, quantise):
    distances, relevant = _random_case(seed, quantise=quantise)
    got = retrieval_metrics(distances, relevant, style=style, fine_grained=True)
    expected = _brute_force(distances, relevant, style, fine_grained=True)
    assert set(got) == set(expected)
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key


@pytest.mark.parametrize("style", ["reference", "standard"])
def test_matches_brute_force_many_positives_and_small_gallery(style):
    # 3 classes over 700 items, one removed for query 0: P > 200 (map_200 normalised by 200)
    distances, relevant = _random_case(11, n_queries=5, n_gallery=700, n_classes=3)
    assert relevant.sum(axis=1).max() > 200
    got = retrieval_metrics(distances, relevant, style=style)
    expected = _brute_force(distances, relevant, style)
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key
    # gallery smaller than 100 and 200
    distances, relevant = _random_case(12, n_queries=6, n_gallery=40, n_classes=3)
    got = retrieval_metrics(distances, relevant, style=style)
    expected = _brute_force(distances, relevant, style)
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key


def test_chunking_and_torch_input_do_not_change_results():
    distances, relevant = _random_case(5, n_queries=9)
    whole = per_query_metrics(distances, relevant, fine_grained=True)
    chunked = per_query_metrics(distances, relevant, fine_grained=True, chunk_size=2)
    from_torch = per_query_metrics(torch.from_numpy(distances), torch.from_numpy(relevant), fine_grained=True)
    for key in whole:
        np.testing.assert_array_equal(whole[key], chunked[key])
        np.testing.assert_array_equal(whole[key], from_torch[key])


# ------------------------------------------------------------------------------------------------
# Hand-made rankings


def _ranked_case(relevance_in_rank_order):
    """Distances that rank the gallery in the given order: item g at rank g."""
    relevant = np.array([relevance_in_rank_order], dtype=bool)
    distances = np.arange(relevant.shape[1], dtype=np.float64)[None, :]
    return distances, relevant


@pytest.mark.parametrize("style", ["reference", "standard"])
def test_perfect_ranking_scores_one(style):
    # 250 positives (>= 200, so standard Prec@200 can reach 1) ranked before 150 negatives,
    # the gallery shuffled so that the ranking is not just the index order.
    rng = np.random.default_rng(0)
    relevant = np.array([True] * 250 + [False] * 150)
    distances = np.where(relevant, rng.random(400), 1.0 + rng.random(400))
    permutation = rng.permutation(400)
    got = retrieval_metrics(
        distances[permutation][None], relevant[permutation][None], style=style, fine_grained=True
    )
    assert got == {key: 1.0 for key in BASE_KEYS | {"acc_1", "acc_10"}}


def test_all_positives_last_by_hand():
    # rel = 0 0 0 1 1, P = 2, gallery of 5 (< 200, so map_200 == map_all).
    # precision at the relevant ranks: 1/4 (rank 4), 2/5 (rank 5).
    # reference: envelope at rank 4 = max(1/4, 2/5) = 2/5 -> AP = (2/5 + 2/5) / 2 = 0.4
    #            Prec@100: first min(100, 2) = 2 ranks hold no positive -> 0
    # standard:  AP = (1/4 + 2/5) / 2 = 0.325; Prec@100 = 2/100; Prec@200 = 2/200
    # acc@1 = 0 (first hit at rank 4), acc@10 = 1
    distances, relevant = _ranked_case([0, 0, 0, 1, 1])
    reference = retrieval_metrics(distances, relevant, style="reference", fine_grained=True)
    standard = retrieval_metrics(distances, relevant, style="standard", fine_grained=True)
    assert reference == pytest.approx(
        {"map_all": 0.4, "map_200": 0.4, "prec_100": 0.0, "prec_200": 0.0, "acc_1": 0.0, "acc_10": 1.0}
    )
    assert standard == pytest.approx(
        {"map_all": 0.325, "map_200": 0.325, "prec_100": 0.02, "prec_200": 0.01, "acc_1": 0.0, "acc_10": 1.0}
    )


def test_envelope_by_hand():
    # rel = 0 1 0 1 1, P = 3: precision at relevant ranks 1/2, 2/4, 3/5.
    # reference: envelope = max over later ranks = 3/5 at each -> AP = 3/5
    #            Prec@100 over min(100, 3) = 3 ranks: 1/3
    # standard:  AP = (1/2 + 1/2 + 3/5) / 3 = 1.6 / 3
    distances, relevant = _ranked_case([0, 1, 0, 1, 1])
    reference = retrieval_metrics(distances, relevant, style="reference")
    standard = retrieval_metrics(distances, relevant, style="standard")
    assert reference["map_all"] == pytest.approx(0.6)
    assert reference["prec_100"] == pytest.approx(1 / 3)
    assert standard["map_all"] == pytest.approx(1.6 / 3)


def test_map_200_only_sees_the_first_200_ranks():
    # 50 positives, 150 negatives, then 200 positives: P = 250, N@200 = min(200, 250) = 200.
    # Both styles: 50 relevant ranks with precision 1 in the top 200 -> 50 / 200 = 0.25.
    # Prec@100 = 50/100, Prec@200 = 50/200 (P >= K: both styles agree).
    # map_all (standard): (50 * 1 + sum_{j=1..200} (50 + j) / (200 + j)) / 250.
    distances, relevant = _ranked_case([1] * 50 + [0] * 150 + [1] * 200)
    tail = sum((50 + j) / (200 + j) for j in range(1, 201))
    for style in ("reference", "standard"):
        got = retrieval_metrics(distances, relevant, style=style)
        assert got["map_200"] == pytest.approx(0.25)
        assert got["prec_100"] == pytest.approx(0.5)
        assert got["prec_200"] == pytest.approx(0.25)
    assert retrieval_metrics(distances, relevant, style="standard")["map_all"] == pytest.approx(
        (50 + tail) / 250
    )
    # reference envelope: ranks 1..50 -> 1; ranks 201..400 -> the final precision 250/400 is the max
    assert retrieval_metrics(distances, relevant)["map_all"] == pytest.approx((50 + 200 * 250 / 400) / 250)


def test_ties_are_broken_by_gallery_index():
    # all distances equal: the ranking is the gallery order, the positive (index 2) is at rank 3
    distances = np.full((1, 4), 0.5)
    relevant = np.array([[False, False, True, False]])
    np.testing.assert_array_equal(rank_by_distances(distances), [[0, 1, 2, 3]])
    for style in ("reference", "standard"):
        assert retrieval_metrics(distances, relevant, style=style)["map_all"] == pytest.approx(1 / 3)
    # a tie between a negative (index 0) and a positive (index 3): the negative wins the tie
    distances = np.array([[0.1, 0.9, 0.9, 0.1]])
    relevant = np.array([[False, False, False, True]])
    assert retrieval_metrics(distances, relevant, fine_grained=True)["acc_1"] == 0.0


def test_rank_by_scores_is_descending_and_stable():
    scores = np.array([[0.9, 0.9, 0.1, 0.95], [0.2, 0.8, 0.8, 0.0]])
    np.testing.assert_array_equal(rank_by_scores(scores), [[3, 0, 1, 2], [1, 2, 0, 3]])
    np.testing.assert_array_equal(rank_by_scores(scores), rank_by_distances(-scores))


def test_query_without_positives_is_ignored():
    # query 0 perfect (AP 1), query 1 no positive (NaN): the mean is over query 0 only.
    distances = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
    relevant = np.array([[True, False, False], [False, False, False]])
    per_query = per_query_metrics(distances, relevant, fine_grained=True)
    for values in per_query.values():
        assert not np.isnan(values[0]) and np.isnan(values[1])
    got = retrieval_metrics(distances, relevant, fine_grained=True)
    assert got["map_all"] == 1.0 and got["acc_1"] == 1.0
    # no query has a positive: NaN, without a warning escaping
    with_none = retrieval_metrics(distances, np.zeros_like(relevant))
    assert all(math.isnan(v) for v in with_none.values())


def test_fine_grained_accuracy_by_hand():
    # one relevant photo per sketch at ranks 1, 5 and 15: acc@1 = 1/3, acc@10 = 2/3
    distances = np.tile(np.arange(20, dtype=np.float64), (3, 1))
    relevant = np.zeros((3, 20), dtype=bool)
    relevant[0, 0] = relevant[1, 4] = relevant[2, 14] = True
    got = retrieval_metrics(distances, relevant, fine_grained=True)
    assert got["acc_1"] == pytest.approx(1 / 3)
    assert got["acc_10"] == pytest.approx(2 / 3)
    assert set(retrieval_metrics(distances, relevant)) == BASE_KEYS


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        retrieval_metrics(np.zeros((2, 3)), np.zeros((2, 4), dtype=bool))
    with pytest.raises(ValueError, match="style"):
        retrieval_metrics(np.zeros((2, 3)), np.zeros((2, 3), dtype=bool), style="voc")


@pytest.mark.parametrize("style", ["reference", "standard"])
def test_a_precomputed_ranking_gives_the_same_metrics(style):
    rng = np.random.default_rng(5)
    distances = rng.integers(0, 4, size=(7, 300)).astype(np.float32)  # many ties: order matters
    relevant = rng.random((7, 300)) < 0.1
    expected = per_query_metrics(distances, relevant, style, True, chunk_size=3)
    given = per_query_metrics(distances, relevant, style, True, chunk_size=3, order=rank_by_distances(distances))
    for key, values in expected.items():
        np.testing.assert_array_equal(given[key], values)

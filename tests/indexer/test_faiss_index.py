"""FAISS side: exactness of Flat against numpy, recall of IVF and HNSW against Flat, factory rules."""

from __future__ import annotations

import numpy as np
import pytest

from indexer import faiss_index
from indexer.errors import FactoryError


def normalised(array: np.ndarray) -> np.ndarray:
    return (array / np.linalg.norm(array, axis=1, keepdims=True)).astype(np.float32)


def clustered_vectors(count: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Unit vectors around `clusters` centres: photo embeddings cluster by class, which is what
    IVF and HNSW rely on (uniform noise in many dimensions has no neighbours worth the name)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    points = centres[rng.integers(0, clusters, count)] + 0.6 * rng.standard_normal((count, dim)).astype(np.float32)
    return normalised(points)


def brute_force(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(scores, order, axis=1)


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    faiss_index.apply_search_params(index, faiss_index.default_search_params(index))
    scores, ids = index.search(queries, k)
    return ids, scores


def test_flat_matches_numpy_brute_force_with_explicit_ids() -> None:
    rng = np.random.default_rng(0)
    vectors = normalised(rng.standard_normal((300, 24)))
    ids = rng.choice(10_000, size=300, replace=False).astype(np.int64)
    queries = normalised(rng.standard_normal((20, 24)))
    index = faiss_index.build_index(vectors, ids, "Flat")
    found_ids, found_scores = search(index, queries, 5)
    expected_ids, expected_scores = brute_force(vectors, ids, queries, 5)
    np.testing.assert_array_equal(found_ids, expected_ids)
    np.testing.assert_allclose(found_scores, expected_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("factory", ["IVF64,Flat", "HNSW32", "Default"])
def test_recall_at_10_against_flat(factory: str) -> None:
    vectors = clustered_vectors(4000, 32, clusters=40, seed=1)
    # Queries near gallery photos, as a sketch embedding lands near its photos in the joint space.
    queries = vectors[:200] + 0.05 * np.random.default_rng(2).standard_normal((200, 32)).astype(np.float32)
    queries = normalised(queries)
    ids = np.arange(len(vectors), dtype=np.int64) * 3 + 11
    if factory == "Default":
        factory = f"IVF{faiss_index.nlist_for(len(vectors))},Flat"  # the rule's IVF shape at this size
    exact, _ = search(faiss_index.build_index(vectors, ids, "Flat"), queries, 10)
    approximate, _ = search(faiss_index.build_index(vectors, ids, factory), queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approximate, exact, strict=True)])
    assert recall >= 0.95, f"{factory}: recall@10 {recall:.3f}"


def test_building_is_deterministic() -> None:
    import faiss

    vectors = clustered_vectors(2000, 16, clusters=10, seed=3)
    ids = np.arange(2000, dtype=np.int64)
    first = faiss.serialize_index(faiss_index.build_index(vectors, ids, "IVF32,Flat"))
    second = faiss.serialize_index(faiss_index.build_index(vectors, ids, "IVF32,Flat"))
    assert np.array_equal(first, second)


def test_default_factory_rule() -> None:
    assert faiss_index.default_factory(17_101, 768) == "Flat"
    assert faiss_index.default_factory(49_999, 768) == "Flat"
    assert faiss_index.default_factory(100_000, 768) == "IVF1264,Flat"
    assert faiss_index.default_factory(1_000_000, 768) == "IVF4000,Flat"
    assert faiss_index.default_factory(4_000_000, 768) == "IVF8000,PQ48"
    assert faiss_index.default_factory(4_000_000, 96) == "IVF8000,PQ48"
    assert faiss_index.default_factory(4_000_000, 100) == "IVF8000,PQ4"
    for count in (50_000, 100_000, 3_000_000):
        faiss_index.check_factory(faiss_index.default_factory(count, 64), 64, count)


def test_search_params_and_description() -> None:
    ivf = faiss_index.create_index("IVF256,Flat", 8)
    assert faiss_index.default_search_params(ivf) == {"nprobe": 32}
    assert faiss_index.default_search_params(faiss_index.create_index("IVF64,Flat", 8)) == {"nprobe": 16}
    hnsw = faiss_index.create_index("HNSW16", 8)
    assert faiss_index.default_search_params(hnsw) == {"efSearch": faiss_index.DEFAULT_EF_SEARCH}
    faiss_index.apply_search_params(hnsw, {"efSearch": 300})
    assert faiss_index.ef_search(hnsw) == 300
    assert faiss_index.describe(hnsw).startswith("IndexIDMap2(IndexHNSWFlat(M=16")
    assert faiss_index.default_search_params(faiss_index.create_index("Flat", 8)) == {}


@pytest.mark.parametrize(
    ("factory", "count", "message"),
    [
        ("IVF_nonsense", 100, "cannot build index type 'IVF_nonsense'"),
        ("IVF16,PQ5", 1000, "multiple of the number of subquantizers"),
        ("IVF512,Flat", 100, "512 lists but the gallery lists only 100"),
        ("IVF4,PQ8", 100, "at least 256 photos"),
        ("", 100, "empty FAISS factory"),
    ],
)
def test_bad_factories_are_one_line_errors(factory: str, count: int, message: str) -> None:
    with pytest.raises(FactoryError, match=message) as caught:
        faiss_index.check_factory(factory, 64, count)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("factory", ["Flat", "IVF32,Flat"])
def test_gpu_branch_gives_the_cpu_result(monkeypatch: pytest.MonkeyPatch, factory: str) -> None:
    """Without a GPU here, a CPU clone stands in for `index_cpu_to_all_gpus`, so the GPU branch's own
    steps (train and add on the copy, `index_gpu_to_cpu` back) run and must give the CPU index."""
    import faiss

    vectors = clustered_vectors(1500, 16, clusters=8, seed=5)
    ids = np.arange(1500, dtype=np.int64) + 7
    on_cpu = faiss_index.build_index(vectors, ids, factory)
    copies: list[object] = []

    def fake_gpu(index):
        copies.append(faiss.clone_index(index))
        return copies[-1]

    monkeypatch.setattr(faiss_index, "to_gpu", fake_gpu)
    via_gpu = faiss_index.build_index(vectors, ids, factory)
    assert len(copies) == 1 and via_gpu is not copies[0]
    np.testing.assert_array_equal(search(via_gpu, vectors[:50], 5)[0], search(on_cpu, vectors[:50], 5)[0])


@pytest.mark.parametrize("factory", ["IVF8,PQ4", "PQ4"])
def test_pq_indexes_skip_polysemous_training_and_search_as_with_it(factory: str) -> None:
    import faiss

    from indexer.faiss_index import create_index

    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((1200, 16)).astype(np.float32)
    queries = rng.standard_normal((5, 16)).astype(np.float32)
    ours = create_index(factory, 16)
    with_it = create_index(factory, 16)
    inner = faiss.downcast_index(faiss.try_extract_index_ivf(with_it) or faiss.downcast_index(with_it).index)
    assert inner.do_polysemous_training is False  # create_index turned it off
    inner.do_polysemous_training = True  # FAISS's factory default, for comparison
    for index in (ours, with_it):
        index.train(vectors)
        index.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64))
        if factory.startswith("IVF"):
            faiss.extract_index_ivf(index).nprobe = 8  # every list: the comparison is of codes, not probing
    # The reordering polysemous training does permutes code ids only: the same distances and neighbours.
    ours_scores, ours_ids = ours.search(queries, 10)
    their_scores, their_ids = with_it.search(queries, 10)
    np.testing.assert_allclose(ours_scores, their_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ours_ids, their_ids)
